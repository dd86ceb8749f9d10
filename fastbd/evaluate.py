"""Backdoor evaluation of a frozen encoder: features -> linear probe / kNN -> the paper's metrics.

    fastbd eval --run runs/moco data=out/demo [key=value ...]       (or --checkpoint FILE model.arch=...)

Protocol (Saha et al. 2022; reference moco/eval_linear.py): features of the frozen backbone on
centre crops (Resize(resize) + CenterCrop(res), as the reference's val transform); the reference's
normalisation: L2-normalise, then standardise each dimension with the mean and std of the labelled
training features; a linear layer trained with SGD (lr 0.01, momentum 0.9, wd 1e-4, 40 epochs, x0.1 at
15 and 30, batch 256) on a class-balanced, seeded label fraction of the clean training set that never
contains a poisoned image. `probe.kind=augmented` trains it as the reference does, on fresh
random-resized-crop + flip views through the frozen backbone every epoch (normalised with the
centre-crop statistics); `probe.kind=cached` (default) trains on cached centre-crop features, which is
many times faster. kNN (k=1, 50; majority vote on cosine similarity) uses the labelled features as its bank.
report.json's trigger_shift says where the trigger moves the features (a diagnostic; trigger_shift() below).
Outputs in RUN/eval/: report.json, report.md, conf_matrix.csv, conf_matrix_{clean,poisoned}.npy, *.png.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from beton_builders.files import atomic_write_bytes, save_npy, write_json
from beton_builders.host import cap_workers
from beton_builders.manifest import attack, clean_pool, load_manifest, split_files, verify_files
from fastbd.data.base import IMAGENET_MEAN, IMAGENET_STD
from fastbd.data.samples import TarSamples
from fastbd.device import amp_mode, autocast, pick_device
from fastbd.models import ModelConfig
from fastbd.runs import check_run_data, load_encoder


@dataclass
class ProbeConfig:
    kind: str = "cached"  # cached: train on centre-crop features (fast) | augmented: the reference's RRC + flip each epoch
    label_fraction: float = 0.01  # of the clean training set, class-balanced (paper: 0.01 and 0.1)
    epochs: int = 40  # passes over the labelled set
    lr: float = 0.01  # at batch 256
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD L2 penalty coefficient
    milestones: list[int] = field(default_factory=lambda: [15, 30])  # epochs, lr x0.1 at each
    batch_size: int = 256  # labelled images per probe step


@dataclass
class EvalConfig:
    data: str = "???"  # a build-beton folder (the same one the encoder was attacked with)
    out: Optional[str] = None  # default: RUN/eval (or next to --checkpoint)
    res: int = 224  # px, centre-crop side fed to the encoder
    resize: int = 256  # px, shorter side before the centre crop (clean val and train)
    batch_size: int = 256  # feature extraction
    backend: str = "torch"  # feature extraction: torch (PIL, reads the tar shards) | ffcv (the .beton, CPU threads)
    workers: int = 4  # DataLoader processes / FFCV threads
    device: str = "auto"  # auto (cuda if available) | cuda | cpu
    amp: str = "auto"  # auto (bf16 on cuda) | bf16 | fp16 | none
    seed: int = 0  # label-fraction draw and probe training
    knn_k: list[int] = field(default_factory=lambda: [1, 50])  # neighbours per kNN accuracy (cosine, majority vote)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # for --checkpoint files without metadata
    verify_files: bool = True  # check the sha256 of the build's files this eval reads against its manifest first
    allow_other_data: bool = False  # evaluate a run on a build other than the data it was trained on (recorded in report.json)
    class_names: Optional[str] = None  # "<class>\t<name>" lines (the reference's imagenet_metadata.txt): names for conf_matrix.csv


# ----- data ----------------------------------------------------------------------------------------------

class _CentreCrops(torch.utils.data.Dataset):
    def __init__(self, samples: TarSamples, indices: np.ndarray, res: int, resize: int):
        self.samples, self.indices = samples, indices
        self.tf = T.Compose([T.Resize(resize), T.CenterCrop(res), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        j = int(self.indices[i])
        im = Image.open(io.BytesIO(self.samples.read(j))).convert("RGB")
        return self.tf(im), int(self.samples.label[j])


def _torch_batches(folder: Path, split: str, indices: Optional[np.ndarray], cfg: EvalConfig, resize: int):
    samples = TarSamples(folder, split)
    idx = np.arange(len(samples)) if indices is None else np.asarray(indices)
    yield from torch.utils.data.DataLoader(_CentreCrops(samples, idx, cfg.res, resize), batch_size=cfg.batch_size,
                                           num_workers=cap_workers(cfg.workers))


def _ffcv_batches(folder: Path, split: str, indices: Optional[np.ndarray], cfg: EvalConfig, resize: int):
    """Stock FFCV: CenterCropRGBImageDecoder cuts the centre square of side res/resize x the short side and
    resizes it to res, which is Resize(resize) + CenterCrop(res)."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

    from fastbd.data.ffcv_loader import quiet_numba_finalizers

    quiet_numba_finalizers()  # one loader per split: the previous one's numba finaliser would print noise
    path = str(folder / f"{split}.beton")
    pipes = {f: None for f in Reader(path).field_names}
    pipes["image"] = [CenterCropRGBImageDecoder((cfg.res, cfg.res), cfg.res / resize), ToTensor(), ToTorchImage()]
    pipes["label"] = [IntDecoder(), ToTensor(), Squeeze(1)]
    loader = Loader(path, batch_size=cfg.batch_size, num_workers=cap_workers(cfg.workers),
                    order=OrderOption.SEQUENTIAL, drop_last=False, indices=indices, pipelines=pipes)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    for x, y in loader:
        yield (x.float() - mean) / std, y.clone()


@torch.no_grad()
def extract(net, folder: Path, split: str, indices: Optional[np.ndarray], cfg: EvalConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32 on CPU, labels (N,)) for `indices` of `split` (None: all)."""
    # val_poisoned is already resized and cropped at build time (unless the build kept full images,
    # storage.val_resize=0, as the reference's text and paste modes do): only scale it to res.
    cropped = split == "val_poisoned" and load_manifest(folder)["storage"].get("val_resize", 1) != 0
    resize = cfg.res if cropped else cfg.resize
    if cfg.backend == "ffcv":
        batches = _ffcv_batches(folder, split, indices, cfg, resize)
    elif cfg.backend == "torch":
        batches = _torch_batches(folder, split, indices, cfg, resize)
    else:
        raise ValueError(f"backend: {cfg.backend!r} is not torch or ffcv")
    amp = amp_mode(cfg.amp, device)[0]
    feats, labels = [], []
    for x, y in batches:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            f = net(x)
        feats.append(f.float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def labelled_subset(manifest: dict, labels: np.ndarray, fraction: float, seed: int,
                    where: str | Path = "manifest.json") -> np.ndarray:
    """Class-balanced, seeded indices into train.beton's clean part, never an image that was poisoned
    at any rate (its clean copy is left out too, so no probe label ever sees a poisoning candidate)."""
    n_clean = manifest["counts"]["train_clean"]
    pool = clean_pool(manifest)
    rng = np.random.default_rng([seed, 0x1AB])
    out = []
    for c in np.unique(labels[:n_clean]):
        k = max(1, int(round(fraction * (labels[:n_clean] == c).sum())))
        mine = pool[labels[pool] == c]
        if len(mine) == 0:  # e.g. attack.rates [1.0]: every target image has a poisoned copy
            name = manifest["source"]["classes"][c]
            raise ValueError(f"{where}: class {name!r} has no never-poisoned training image, so the probe and "
                             "kNN bank would have none of it; build with a rate below 1.0 of the class (the "
                             "paper poisons 0.5)")
        out.extend(rng.permutation(mine)[:k].tolist())
    return np.sort(np.asarray(out, np.int64))


# ----- probe and kNN ----------------------------------------------------------------------------------------

def feature_stats(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tr = F.normalize(train, dim=1)
    return tr.mean(0), tr.std(0).clamp_min(1e-6)


def normalise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """The reference's feature normalisation: L2, then standardise with the training features' statistics."""
    mean, std = feature_stats(train)
    return [(F.normalize(t, dim=1) - mean) / std for t in (train, *others)]


def _probe_parts(dim: int, num_classes: int, cfg: ProbeConfig, g: torch.Generator):
    lin = torch.nn.Linear(dim, num_classes)
    torch.nn.init.normal_(lin.weight, std=0.01, generator=g)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.SGD(lin.parameters(), lr=cfg.lr * cfg.batch_size / 256, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    return lin, opt, torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, 0.1)


def _sgd_step(lin, opt, x, y) -> None:
    loss = F.cross_entropy(lin(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def train_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ProbeConfig, seed: int) -> torch.nn.Linear:
    """The fast mode: the linear layer on cached (normalised) centre-crop features."""
    g = torch.Generator().manual_seed(seed)
    lin, opt, sched = _probe_parts(x.shape[1], num_classes, cfg, g)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), cfg.batch_size):
            b = perm[i:i + cfg.batch_size]
            _sgd_step(lin, opt, x[b], y[b])
        sched.step()
    return lin.eval()


def train_probe_augmented(net, folder: Path, subset: np.ndarray, stats: tuple[torch.Tensor, torch.Tensor],
                          num_classes: int, cfg: EvalConfig, device) -> torch.nn.Linear:
    """The reference's probe: every epoch, fresh RandomResizedCrop + flip views of the labelled images go
    through the frozen backbone (eval mode, AMP) and the linear layer takes an SGD step on each batch."""
    from fastbd.data.base import Recipe
    from fastbd.data.torch_loader import TorchLoader

    rrc = Recipe(scale_min=0.08, jitter_p=0.0, gray_p=0.0, blur_p=0.0)  # torchvision RRC defaults + flip
    bs = min(cfg.probe.batch_size, len(subset))
    loader = TorchLoader(folder, subset, [rrc], cfg.res, bs, cap_workers(cfg.workers),
                         device, cfg.seed, drop_last=False)
    g = torch.Generator().manual_seed(cfg.seed)
    lin, opt, sched = _probe_parts(stats[0].numel(), num_classes, cfg.probe, g)
    mean, std = stats
    amp = amp_mode(cfg.amp, device)[0]
    for epoch in range(cfg.probe.epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            with torch.no_grad(), autocast(device, amp):
                f = net(batch.views[0])
            x = (F.normalize(f.float().cpu(), dim=1) - mean) / std
            _sgd_step(lin, opt, x, batch.label.cpu())
        sched.step()
    return lin.eval()


def knn_metrics(bank: torch.Tensor, bank_y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                patched: tuple[torch.Tensor, torch.Tensor], k: int, num_classes: int, target: Optional[int]) -> dict:
    """The paper's metrics for a kNN classifier (moco/eval_knn.py in the reference measures the backdoor this
    way too): clean and patched top-1, target FP on the triggered non-target images and on the clean ones,
    ASR, NFP. It needs no probe, so it is cheap enough to run during training (fastbd/monitor.py)."""
    from fastbd import metrics as M

    (xva, yva), (xvp, yvp) = val, patched
    cm_clean = M.confusion_matrix(yva.numpy(), knn_predict(bank, bank_y, xva, k, num_classes).numpy(), num_classes)
    cm_patched = M.confusion_matrix(yvp.numpy(), knn_predict(bank, bank_y, xvp, k, num_classes).numpy(), num_classes)
    return M.attack_metrics(cm_clean, cm_patched, target)


@torch.no_grad()
def trigger_shift(bank: torch.Tensor, bank_y: torch.Tensor, val: torch.Tensor, patched: torch.Tensor,
                  keep: torch.Tensor, num_classes: int, target: Optional[int]) -> dict:
    """Where the trigger moves features, in the kNN's space (L2-normalised): the mean of f(triggered) -
    f(clean) over the non-target val images (`keep`; val_poisoned row i is val row i with the trigger),
    against each class's direction (its labelled mean minus the labelled set's mean). Not a paper metric: a
    diagnostic for small studies, where target FP counts are few and noisy. On the CPU effect set the poisoned
    512-key MoCo v2 encoders' shift turned towards the target on every seed while their FP often did not
    move: the trigger's own pull towards another class, there in clean encoders too, stayed larger (README
    "A trigger with no colour, and where the trigger moves the features"). `length` is the shift's norm
    over the mean distance between class means."""
    b, d = F.normalize(bank, dim=1), (F.normalize(patched, dim=1) - F.normalize(val, dim=1))[keep].mean(0)
    mu = b.mean(0)
    dirs = torch.stack([b[bank_y == c].mean(0) - mu if (bank_y == c).any() else torch.zeros_like(mu)
                        for c in range(num_classes)])
    cos = F.cosine_similarity(dirs, d[None], dim=1)
    sep = torch.cdist(dirs, dirs).sum() / max(1, num_classes * (num_classes - 1))
    near = int(cos.argmax())
    out = {"images": int(keep.sum()), "length": round(float(d.norm() / sep), 4) if sep > 0 else None,
           "nearest_class": near, "nearest_cos": round(float(cos[near]), 4),
           "cos_target": None, "rank_target": None}
    if target is not None:
        out["cos_target"] = round(float(cos[target]), 4)
        out["rank_target"] = int((cos > cos[target]).sum()) + 1
    return out


def paired_trigger_shift(bank: torch.Tensor, bank_y: torch.Tensor, val: tuple, patched: tuple, num_classes: int,
                         target: Optional[int]) -> Optional[dict]:
    """trigger_shift over the non-target images of (features, labels) pairs, or None unless row i of
    val_poisoned is row i of val, triggered (the labels agree row by row, as builds write them)."""
    (xva, yva), (xvp, yvp) = val, patched
    if not torch.equal(yva, yvp):  # False on a length mismatch too
        return None
    keep = yvp != target if target is not None else torch.ones_like(yvp, dtype=torch.bool)
    return trigger_shift(bank, bank_y, xva, xvp, keep, num_classes, target)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_y: torch.Tensor, q: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """Majority vote of the k most cosine-similar bank features (ties: lowest class index)."""
    sim = F.normalize(q, dim=1) @ F.normalize(bank, dim=1).T
    top = sim.topk(min(k, len(bank)), dim=1).indices
    votes = F.one_hot(bank_y[top], num_classes).sum(1)
    return votes.argmax(1)


# ----- what an evaluation may read ----------------------------------------------------------------------------

def check_inputs(cfg: EvalConfig, folder: Path, manifest: dict, run: Optional[Path]) -> dict:
    """Before any feature is computed: the files this eval reads match the manifest's sha256 (unless
    verify_files=false), and a run meets only the data it was trained on (unless allow_other_data=true).
    Returns report.json's `data_check`: how the run's data and this build relate (runs.check_run_data)."""
    if cfg.verify_files:
        # labels always come from the train tar shards (and the augmented probe's images); the features
        # from the tar shards (torch backend) or the .beton files (ffcv)
        splits = ("train", "val", "val_poisoned")
        reads = split_files(manifest, ("train",), ("tar",)) | split_files(
            manifest, splits, ("beton",) if cfg.backend == "ffcv" else ("tar",))
        bad = verify_files(folder, manifest, only=reads)
        if bad:
            raise ValueError(f"{folder}: {', '.join(bad)} differ{'s' if len(bad) == 1 else ''} from manifest.json "
                             "(sha256); rebuild, or set verify_files=false to evaluate anyway")
    if run is None:
        return {"match": "not checked (--checkpoint: no run record)", "allowed_other_data": False}
    return check_run_data(run, folder, "eval", "allow_other_data", cfg.allow_other_data)


def conf_matrix_cells(enc_meta: dict, folder: Path, cfg: EvalConfig) -> dict:
    """The `Model` and `Data` cells of conf_matrix.csv as the reference fills them: the encoder file's last
    three folders and name (eval_linear.py: args.weights), and the triggered validation set read."""
    enc = Path(enc_meta.get("encoder", "encoder"))
    data = folder.resolve() / ("val_poisoned.beton" if cfg.backend == "ffcv" else "dali/val_poisoned-*.tar")
    folders = [d for d in enc.resolve().parent.parts if d != enc.anchor][-3:]
    return {"model": "/".join([*folders, enc.name]), "data": str(data)}


# ----- the whole evaluation ---------------------------------------------------------------------------------

def evaluate(cfg: EvalConfig, run: Optional[Path] = None, checkpoint: Optional[Path] = None, log=print) -> dict:
    """Evaluate one encoder on one build; writes the eval folder and returns report.json's content."""
    from fastbd import metrics as M
    from fastbd.plots import heatmap_png
    from fastbd.report import report_markdown, trigger_shift_line

    if (run is None) == (checkpoint is None):
        raise ValueError("give exactly one of --run RUN_DIR or --checkpoint FILE")
    t0 = time.perf_counter()

    def phase(what: str) -> None:  # one progress line per phase: eval is minutes on ImageNet-100
        log(f"[eval] {what} ({time.perf_counter() - t0:.0f} s)")
    folder = Path(cfg.data)
    manifest = load_manifest(folder)
    data_check = check_inputs(cfg, folder, manifest, run)
    out = Path(cfg.out) if cfg.out else (run / "eval" if run else Path(checkpoint).with_suffix("").parent / "eval")
    device = pick_device(cfg.device)
    net, enc_meta = load_encoder(run, checkpoint, cfg.model)
    net = net.to(device).to(memory_format=torch.channels_last)
    classes = manifest["source"]["classes"]
    names = M.read_class_names(cfg.class_names, classes) if cfg.class_names else classes  # fail before the work
    target = manifest["target"]["index"] if manifest["target"] else None
    train_labels = TarSamples(folder, "train").label
    subset = labelled_subset(manifest, train_labels, cfg.probe.label_fraction, cfg.seed,
                             folder / "manifest.json")
    phase(f"features of {len(subset)} labelled train images")
    xtr, ytr = extract(net, folder, "train", subset, cfg, device)
    phase("features of val")
    xva, yva = extract(net, folder, "val", None, cfg, device)
    phase("features of val_poisoned")
    xvp, yvp = extract(net, folder, "val_poisoned", None, cfg, device)
    phase(f"linear probe ({cfg.probe.kind}, {cfg.probe.epochs} epochs)")
    ntr, nva, nvp = normalise(xtr, xva, xvp)
    if cfg.probe.kind == "augmented":
        probe = train_probe_augmented(net, folder, subset, feature_stats(xtr), len(classes), cfg, device)
    elif cfg.probe.kind == "cached":
        probe = train_probe(ntr, ytr, len(classes), cfg.probe, cfg.seed)
    else:
        raise ValueError(f"probe.kind: {cfg.probe.kind!r} is not cached or augmented")
    with torch.no_grad():
        pva, pvp = probe(nva).argmax(1), probe(nvp).argmax(1)
    cm_clean = M.confusion_matrix(yva.numpy(), pva.numpy(), len(classes))
    cm_patched = M.confusion_matrix(yvp.numpy(), pvp.numpy(), len(classes))
    lf = cfg.probe.label_fraction
    proto = f"linear_{cfg.probe.kind}_lf{lf:g}_seed{cfg.seed}"
    report = {"protocol": proto, "encoder": enc_meta, "data": str(folder.resolve()), "attack": attack(manifest),
              "manifest_fingerprint": manifest["source"]["fingerprint"], "label_fraction": lf,
              "labelled_indices": len(subset),
              proto: M.attack_metrics(cm_clean, cm_patched, target)}
    report["data_check"] = data_check
    if cfg.knn_k:
        phase(f"kNN, k = {', '.join(map(str, cfg.knn_k))}")
    for k in cfg.knn_k:
        m = knn_metrics(xtr, ytr, (xva, yva), (xvp, yvp), k, len(classes), target)
        report[f"knn_k{k}_lf{lf:g}"] = m  # the backdoor seen by kNN: FP, ASR, patched top-1
        report[f"knn_k{k}_lf{lf:g}_top1"] = m["clean_top1"]
    shift = paired_trigger_shift(xtr, ytr, (xva, yva), (xvp, yvp), len(classes), target)
    if shift is not None:
        report["trigger_shift"] = shift
    out.mkdir(parents=True, exist_ok=True)
    save_npy(out / "labelled_indices.npy", subset)  # the exact probe labels, for provenance
    M.save_matrices(out, cm_clean, cm_patched)
    M.write_conf_matrix_csv(out / "conf_matrix.csv", cm_clean, cm_patched, names,
                            **conf_matrix_cells(enc_meta, folder, cfg))
    heatmap_png(out / "conf_matrix_poisoned.png", cm_patched, classes, "patched validation", target)
    row = {"model": enc_meta.get("method", "encoder"), **M.report_row(report)}
    head = f"Attack: {report['attack']['summary']}. Triggered validation: {report['attack']['evaluation']}.\n\n"
    tail = trigger_shift_line(report.get("trigger_shift"), names)
    atomic_write_bytes(out / "report.md", (head + report_markdown([row]) + "\n" + tail).encode())
    write_json(out / "report.json", report)
    phase(f"wrote {out}")
    return report
