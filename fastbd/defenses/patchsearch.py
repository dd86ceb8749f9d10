"""The PatchSearch defense: find the poisoned images in a run's own training set, remove them, retrain.

    fastbd defend patchsearch --run RUN --data BUILD [key=value ...]       (fastbd config patchsearch: every key)

Tejankar, Sanjabi, Wang, Wang, Firooz, Pirsiavash, Tan, "Defending Against Patch-based Backdoor Attacks on
Self-Supervised Learning", CVPR 2023; code UCDvision/PatchSearch (formerly UMBCvision). Unlike distillation
it needs no trusted clean data: (1) embed the training set with the suspect encoder and k-means it
(fastbd/defenses/kmeans.py); (2-4) search the clusters for trigger patches with Grad-CAM and the flip test
(search.py); (5) train the poison classifier on the top-ranked patches and filter the whole set with it
(classifier.py). Defaults are the paper's ImageNet-100 settings as its run_pipeline.sh runs them.

Writes RUN/defense_patchsearch/ (or out=), swapped into place whole: ranked.csv and ranked_indices.npy (the
training set by poison score), poison_scores.npy, removed_indices.npy, filtered_indices.npy + .json (an
index list `fastbd train data.indices=...` takes, checked against the build), patches/ (the top-k
patches), pr_curve.csv / .png, report.json and report.md (scored against the manifest; the cost per phase
beside training's).
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from beton_builders import manifest as mf
from beton_builders.files import atomic_write_bytes, save_npy, staged_folder, write_json
from fastbd.config import to_dict
from fastbd.defenses.images import CropReader, crop_to_stored, crop_windows
from fastbd.device import amp_mode, pick_device
from fastbd.models import ModelConfig, model_from_meta
from fastbd.runs import check_run_data, load_encoder, read_metrics


@dataclass
class SearchConfig:
    clusters: int = 1000  # k-means clusters l (paper: 1000 on ImageNet-100's 127k images); at most N / 2
    kmeans_iters: int = 20  # Lloyd iterations (the reference's faiss niter)
    test_images: int = 1000  # images each candidate patch is pasted on, the nearest to each centroid (paper: 1000)
    window: Optional[int] = None  # px at `res`, side of a candidate patch; None: round(60 x res / 224) (paper: w = 60 at 224)
    per_iteration: int = 2  # images scored per candidate cluster and round (paper: s = 2)
    prune: float = 0.25  # fraction of candidate clusters dropped each round (paper: r = 25%); 0: score every image
    cam_layer: str = "layer4"  # encoder module whose activations Grad-CAM weighs (the reference's ResNet target layer)


@dataclass
class ClassifierConfig:
    topk: int = 20  # top-ranked images whose patches the classifier learns (run_pipeline.sh: --topk_poisons 20)
    top_p: float = 0.10  # fraction of the ranked set, from the top, kept out of the classifier's training pool
    models: int = 5  # ensemble size (run_pipeline.sh: --model_count 5)
    max_iterations: int = 2000  # SGD steps per model (run_pipeline.sh: 2000)
    batch_size: int = 32  # images per step (run_pipeline.sh: 32)
    lr: float = 0.01  # SGD learning rate, cosine to 0 over max_iterations
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD L2 penalty coefficient
    eval_every: int = 20  # steps between F1 checks on the top-k vs bottom-k images (run_pipeline.sh: 20)
    patience: int = 10  # checks: stop once the F1 (whole percent) was the same this many times
    scale_min: float = 0.2  # RandomResizedCrop area fraction, lower bound (upper: 1)
    patch_min: int = 20  # px at 224: smallest side of a pasted patch (scaled with res)
    patch_max: int = 80  # px at 224: largest side (exclusive)
    margin: int = 10  # px at 224: a pasted patch's distance from the border, at least
    width: int = 64  # channels of the classifier's first stage (ResNet, one BasicBlock per stage)
    small_input: Optional[bool] = None  # 3x3 stem without max-pool; None: as the suspect encoder


@dataclass
class PatchSearchConfig:
    data: str = "???"  # the build-beton folder the run was trained on
    out: Optional[str] = None  # default: RUN/defense_patchsearch
    res: int = 224  # px, centre-crop side fed to the encoder and the classifier
    resize: int = 256  # px, shorter side before the centre crop (the reference's Resize(256) + CenterCrop(224))
    batch_size: int = 256  # images per forward pass (embedding, Grad-CAM, flip test, filtering)
    backend: str = "ffcv"  # loader of the classifier's random crops: ffcv | dali | torch
    workers: int = 4  # decoding processes / threads
    device: str = "auto"  # auto (cuda if available) | cuda | cpu
    amp: str = "auto"  # auto (bf16 on cuda) | bf16 | fp16 | none
    seed: int = 0  # k-means, the search's sampling and pastes, the classifier
    verify_files: bool = True  # check the sha256 of the train shards (and .beton) against the manifest first
    allow_other_data: bool = False  # defend a run on a build other than the one it was trained on
    search: SearchConfig = field(default_factory=SearchConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


class Phases:
    """Wall time and CPU core-seconds (this process's threads, plus worker processes that ended) per phase."""

    def __init__(self, log):
        self.rows, self.log = {}, log

    @contextmanager
    def __call__(self, name: str):
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        self.log(f"[patchsearch] {name}")
        yield
        self.rows[name] = {"wall_s": round(time.perf_counter() - t0, 3),
                           "cpu_core_s": round(time.process_time() - c0 + _children_cpu() - k0, 3)}

    def total(self) -> dict:
        return {k: round(sum(r[k] for r in self.rows.values()), 3) for k in ("wall_s", "cpu_core_s")}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_training_set(run: Path, manifest: dict) -> tuple[np.ndarray, float]:
    """The index list `run` trained on (its config.yaml's data section, resolved by the manifest) and its rate."""
    p = Path(run) / "config.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"--run: {p} not found; is {run} a `fastbd train` run folder?")
    cfg = yaml.safe_load(p.read_text()) or {}
    d = cfg.get("data", {})
    # the trainer draws a clean subset with the run's own seed (make_loader(seed=cfg.seed))
    idx = mf.training_set(manifest, d.get("rate"), d.get("clean_fraction"), int(cfg.get("seed", 0) or 0),
                          d.get("indices"))
    return idx, mf.resolve_rate(manifest, d.get("rate"))


def training_cost(run: Path) -> dict:
    """What training the suspect encoder cost, from its metrics.jsonl epoch lines (cpu_seconds when recorded)."""
    ep = [r for r in read_metrics(run) if r.get("kind") == "epoch"]
    cpu = [r.get("cpu_seconds") for r in ep]
    return {"epochs": len(ep), "wall_s": round(sum(r.get("seconds", 0) for r in ep), 3),
            "cpu_core_s": round(sum(cpu), 3) if ep and None not in cpu else None}


def _check(cfg: PatchSearchConfig, n: int) -> tuple[int, int]:
    s, c = cfg.search, cfg.classifier
    if cfg.resize < cfg.res:
        raise ValueError(f"resize: {cfg.resize} px is smaller than res: {cfg.res} px (the crop would be padded)")
    if cfg.backend not in ("ffcv", "dali", "torch"):
        raise ValueError(f"backend: {cfg.backend!r} is not ffcv, dali or torch")
    w = s.window if s.window is not None else round(60 * cfg.res / 224)
    if not 1 <= w < cfg.res:
        raise ValueError(f"search.window: {w} px must lie in [1, res = {cfg.res})")
    if not 0 <= s.prune < 1:
        raise ValueError(f"search.prune: {s.prune} is outside [0, 1)")
    if s.per_iteration < 1 or s.test_images < 1 or s.clusters < 1:
        raise ValueError("search.per_iteration, search.test_images and search.clusters must be >= 1")
    if not 0 <= c.top_p < 1 or c.topk < 1 or 2 * c.topk + int(c.top_p * n) >= n:
        raise ValueError(f"classifier.topk={c.topk}, top_p={c.top_p}: the classifier needs top-k, bottom-k and "
                         f"a training pool out of the {n} training images")
    return w, min(s.clusters, max(1, n // 2))


def _out_folder(cfg: PatchSearchConfig, run: Path) -> Path:
    """The defense folder; it is replaced whole, so it may not hold the run, nor anything but a defense's output."""
    out = Path(cfg.out) if cfg.out else run / "defense_patchsearch"
    if out.resolve() in (run.resolve(), *run.resolve().parents):
        raise ValueError(f"out: {out} holds the run folder {run}; the defense folder is replaced whole, choose another")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise FileExistsError(f"out: {out} is not empty and holds no earlier defense's report.json; choose another")
    return out


def patchsearch(cfg: PatchSearchConfig, run: Path, log=print, encoder=None) -> dict:
    """Defend `run` on the build `cfg.data`; writes the defense folder and returns report.json's content.
    `encoder`: an already built (backbone, encoder.json-like meta) to use instead of RUN's export (tests
    use a stand-in whose features are dominated by the trigger)."""
    from fastbd.defenses.classifier import filter_set, train_ensemble
    from fastbd.defenses.kmeans import kmeans
    from fastbd.defenses.scoring import ranking, score_detection
    from fastbd.defenses.search import embed, iterative_search

    run, folder = Path(run), Path(cfg.data)
    phase = Phases(log)
    with phase("check inputs"):
        manifest = mf.load_manifest(folder)
        indices, rate = run_training_set(run, manifest)
        w, k = _check(cfg, len(indices))
        out = _out_folder(cfg, run)
        if cfg.verify_files:
            reads = mf.split_files(manifest, ("train",), ("tar",) if cfg.backend == "torch" else ("tar", "beton"))
            bad = mf.verify_files(folder, manifest, only=reads)
            if bad:
                raise ValueError(f"{folder}: {', '.join(bad)} differ from manifest.json (sha256); rebuild, or set "
                                 "verify_files=false to defend anyway")
        data_check = check_run_data(run, folder, "defend patchsearch", "allow_other_data", cfg.allow_other_data)
        device, amp = pick_device(cfg.device), amp_mode(cfg.amp, pick_device(cfg.device))[0]
        net, enc_meta = encoder if encoder is not None else load_encoder(run, None, ModelConfig())
        net = net.to(device).to(memory_format=torch.channels_last).requires_grad_(False)
        reader = CropReader(folder, cfg.res, cfg.resize, cfg.workers)
    if k < cfg.search.clusters:
        log(f"[patchsearch] search.clusters={cfg.search.clusters} capped to {k} (half the {len(indices)} images)")
    with phase(f"embed {len(indices)} training images"):
        feats = torch.cat([embed(net, x.to(device), amp, cfg.batch_size) for x, _ in
                           reader.batches(indices, cfg.batch_size)])
    with phase(f"k-means, {k} clusters"):
        km = kmeans(feats, k, cfg.search.kmeans_iters, cfg.seed)
    with phase("iterative search (Grad-CAM windows, flip test)"):
        found = iterative_search(net, reader, indices, km, cfg.search, w, amp, cfg.batch_size, cfg.seed, log)
    order = ranking(found.score)
    cc = cfg.classifier
    top, bottom = order[:cc.topk], order[-cc.topk:]
    pool = order[int(cc.top_p * len(order)):len(order) - cc.topk]
    with phase(f"poison classifier ({cc.models} models)"):
        images, _ = reader.read(indices[top], cfg.batch_size)
        patches = crop_windows(images, torch.as_tensor(found.top[top]), torch.as_tensor(found.left[top]), w)
        val_x, _ = reader.read(indices[np.concatenate([top, bottom])], cfg.batch_size)
        val_y = torch.cat([torch.ones(len(top), dtype=torch.long), torch.zeros(len(bottom), dtype=torch.long)])
        enc_model = model_from_meta(enc_meta)
        cmodel = ModelConfig(arch="resnet10", width=cc.width, stem_stride=enc_model.stem_stride,
                             small_input=enc_model.small_input if cc.small_input is None else cc.small_input)
        models, history = train_ensemble(cfg, folder, indices[np.sort(pool)], (val_x.to(device), val_y),
                                         patches.to(device).float() / 255, cmodel, device, amp, log)
    with phase(f"filter {len(indices)} training images"):
        p_poison = filter_set(models, reader, indices, device, amp, cfg.batch_size)
        removed = p_poison > 0.5  # the ensemble's argmax of its mean logits, as the reference's test()
    boxes = np.full((len(indices), 4), np.nan)
    s = found.scored
    boxes[s] = crop_to_stored(found.top[s], found.left[s], w, found.size[s], cfg.res, cfg.resize)
    scored = score_detection(manifest, indices, found.score, found.scored, p_poison, removed, boxes, cc.topk)
    report = {
        "defense": "patchsearch", "run": str(run.resolve()), "data": str(folder.resolve()), "rate": rate,
        "data_check": data_check, "encoder": enc_meta, "config": to_dict(cfg), "out": str(out),
        "search": {"clusters": k, "window_px": w, "test_images": int(len(found.test_positions)),
                   "scored": int(found.scored.sum()), "rounds": found.rounds},
        "classifier": {"pool": int(len(pool)), "models": history, "removed": int(removed.sum()),
                       "kept": int((~removed).sum())},
        "scored_against_manifest": scored,
        "cost": {"phases": phase.rows, "defense": phase.total(), "training": training_cost(run),
                 "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
    }
    _write(out, report, indices, order, found, p_poison, removed, patches, manifest, rate, log)
    return report


def _write(out: Path, report: dict, indices, order, found, p_poison, removed, patches, manifest, rate, log) -> None:
    from PIL import Image

    from fastbd.defenses.scoring import pr_at_cutoffs, ranking, truth
    from fastbd.plots import pr_curve_png
    from fastbd.report import patchsearch_markdown

    is_p = truth(manifest, indices)
    curves = {"search (poison score)": pr_at_cutoffs(order, is_p),
              "classifier p(poisoned)": pr_at_cutoffs(ranking(p_poison), is_p)}
    with staged_folder(out) as tmp:
        save_npy(tmp / "ranked_indices.npy", indices[order])
        save_npy(tmp / "poison_scores.npy", found.score)
        save_npy(tmp / "removed_indices.npy", np.sort(indices[removed]))
        mf.write_index_list(tmp / "filtered_indices.npy", indices[~removed], manifest, rate,
                            "fastbd defend patchsearch", removed=int(removed.sum()))
        rows = ["rank,index,poison_score,scored,p_poison,removed"]
        rows += [f"{r + 1},{indices[i]},{found.score[i]},{int(found.scored[i])},{p_poison[i]:.6f},{int(removed[i])}"
                 for r, i in enumerate(order)]
        atomic_write_bytes(tmp / "ranked.csv", ("\n".join(rows) + "\n").encode())
        (sp, sr), (cp, cr) = curves.values()
        lines = ["k,search_precision,search_recall,classifier_precision,classifier_recall"]
        lines += [f"{k + 1},{sp[k]:.6f},{sr[k]:.6f},{cp[k]:.6f},{cr[k]:.6f}" for k in range(len(order))]
        atomic_write_bytes(tmp / "pr_curve.csv", ("\n".join(lines) + "\n").encode())
        rm = report["scored_against_manifest"]["removed"]
        point = (rm["recall"], rm["precision"]) if rm["precision"] is not None else None
        pr_curve_png(tmp / "pr_curve.png", curves, point, f"PatchSearch on {Path(report['run']).name}")
        (tmp / "patches").mkdir()  # the top-k candidate patches, in rank order (the reference's all_top_poison_patches)
        for j, p in enumerate(patches.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)):
            Image.fromarray(p).save(tmp / "patches" / f"{j:03d}.png")
        atomic_write_bytes(tmp / "report.md", patchsearch_markdown(report).encode())
        write_json(tmp / "report.json", report)
    log(f"[patchsearch] wrote {out}: removed {int(removed.sum())} of {len(indices)}; "
        f"kept list {out / 'filtered_indices.npy'}")
