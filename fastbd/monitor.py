"""A cheap backdoor check during training: kNN on the build's clean and triggered validation images.

    fastbd train --config ... monitor.every=5         (metrics.jsonl gets a `kind: "backdoor"` line every 5 epochs)

Every `monitor.every` epochs (and before the first one, and after the last) the trainer hands its online
encoder here. Its features of a labelled bank (a class-balanced `label_fraction` of the clean training images
that were never poisoned at any rate, the probe's own pool) and of `val` and `val_poisoned` go through a
cosine kNN vote, and the paper's metrics come out: kNN top-1, target FP on the triggered non-target
images and on the clean ones, ASR; beside them the trigger shift (`shift_*`: its cosine with the target's
direction, rank, length and nearest class; evaluate.trigger_shift, a diagnostic). The reference measures
the backdoor with a kNN classifier as well (moco/eval_knn.py). One run then gives the curve of target FP
against epochs, which `--resume RUN epochs=N` cannot (it re-spreads the learning-rate schedule). On the
2-core CPU a check of the effect recipe's 5,000-image build costs a few seconds; it runs on rank 0 only,
in eval mode, without gradients, and the encoder goes back to training mode after it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from beton_builders.manifest import load_manifest
from fastbd.data.samples import TarSamples
from fastbd.evaluate import EvalConfig, extract, knn_metrics, labelled_subset, paired_trigger_shift
from fastbd.metrics import shift_columns


@dataclass
class MonitorConfig:
    every: int = 0  # epochs between checks; 0: off (when on, epoch 0 and the last epoch are checked too)
    k: int = 20  # neighbours of the kNN vote
    label_fraction: float = 0.1  # of the clean training set, class-balanced: the kNN bank
    res: int = 0  # px, centre-crop side fed to the encoder; 0: data.res
    resize: int = 0  # px, shorter side before the crop; 0: res * 8 / 7 (the reference's 256 / 224)
    batch_size: int = 256  # images per forward pass


class BackdoorMonitor:
    """Called with an encoder; returns the kNN metrics (attack_metrics keys, prefixed `knn_`)."""

    def __init__(self, cfg: MonitorConfig, data_path: str | Path, res: int, device: torch.device, seed: int):
        if cfg.k < 1 or not 0 < cfg.label_fraction <= 1:
            raise ValueError(f"monitor: k={cfg.k} must be >= 1 and label_fraction={cfg.label_fraction} in (0, 1]")
        self.folder = Path(data_path)
        manifest = load_manifest(self.folder)
        self.target = manifest["target"]["index"] if manifest["target"] else None
        self.num_classes = len(manifest["source"]["classes"])
        self.bank = labelled_subset(manifest, TarSamples(self.folder, "train").label, cfg.label_fraction, seed,
                                    self.folder / "manifest.json")
        res = cfg.res or res
        # in-process reading (workers=0): a few thousand small images, not worth forking loader processes
        self.ecfg = replace(EvalConfig(data=str(self.folder)), res=res, resize=cfg.resize or round(res * 8 / 7),
                            batch_size=cfg.batch_size, workers=0, seed=seed)
        self.cfg, self.device = cfg, device

    def due(self, epoch: int, last: int) -> bool:
        return bool(self.cfg.every) and (epoch % self.cfg.every == 0 or epoch == last)

    @torch.no_grad()
    def __call__(self, encoder: torch.nn.Module) -> dict:
        was_training = encoder.training
        encoder.eval()
        # fork the RNGs: a DataLoader draws its base seed from torch's global generator, and the run's own
        # draws after the check must be the ones it would have made without it (same weights, on or off)
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            try:
                xtr, ytr = extract(encoder, self.folder, "train", self.bank, self.ecfg, self.device)
                val = extract(encoder, self.folder, "val", None, self.ecfg, self.device)
                patched = extract(encoder, self.folder, "val_poisoned", None, self.ecfg, self.device)
            finally:
                encoder.train(was_training)
        m = knn_metrics(xtr, ytr, val, patched, self.cfg.k, self.num_classes, self.target)
        keep = ("clean_top1", "patched_top1", "target_fp", "target_fp_clean", "nontarget_count", "asr")
        out = {"k": self.cfg.k, **{f"knn_{key}": m[key] for key in keep}}
        shift = paired_trigger_shift(xtr, ytr, val, patched, self.num_classes, self.target)
        if shift is not None:  # where the trigger moves the features, epoch by epoch (a diagnostic, as in eval)
            out.update(shift_columns(shift))
        return out
