"""One loader interface, three backends (ffcv | dali | torch), all reading a `fastbd build-beton` folder.

A loader is an iterable of `Batch`: `views` is a list (one per augmentation recipe the method asks
for) of float tensors (N, 3, H, W) on the target device, normalised with the ImageNet mean/std,
channels_last, ready for autocast; `label` and `index` (the sample's .beton index) are int64 tensors.
`len(loader)` is the number of batches per epoch; `loader.set_epoch(e)` reseeds the order so a resumed
run sees the same order as an uninterrupted one.

Crops (random-resized-crop, per view) and flips are cut from one decoded image per sample, wherever
the backend allows; colour augmentation (jitter, grayscale, blur, solarize) runs on the device in
`fastbd.data.gpu_aug` for the ffcv and dali backends. The torch backend does all of it with PIL in
worker processes, as the reference code does: it is the baseline the benchmarks compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("ffcv", "dali", "torch")


@dataclass
class Recipe:
    """One view's augmentation. Defaults: MoCo v2 "aug-plus" (moco/main_moco.py, --aug-plus)."""
    scale_min: float = 0.2  # random-resized-crop area fraction, lower bound
    scale_max: float = 1.0  # upper bound
    flip: float = 0.5  # probability of a horizontal flip
    jitter_p: float = 0.8  # probability of applying colour jitter
    brightness: float = 0.4  # jitter strengths, torchvision ColorJitter semantics
    contrast: float = 0.4  # factor drawn in [1 - c, 1 + c]
    saturation: float = 0.4  # factor drawn in [1 - s, 1 + s]
    hue: float = 0.1  # shift drawn in [-h, h], fraction of the hue circle
    gray_p: float = 0.2  # probability of converting to grayscale
    blur_p: float = 0.5  # probability of a Gaussian blur
    blur_sigma_min: float = 0.1  # px at 224-px output; scaled with the output resolution
    blur_sigma_max: float = 2.0  # px at 224-px output; upper bound
    solarize_p: float = 0.0  # probability of solarising (threshold 0.5)


RECIPES: dict[str, Recipe] = {
    "mocov2": Recipe(),
    # BYOL as the reference code trains it (byol/ in SSL-Backdoor): grayscale p=0.1.
    "byol": Recipe(gray_p=0.1),
    # The BYOL paper's asymmetric pair (Grill et al. 2020, Table 6).
    "byol_a": Recipe(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, gray_p=0.2, blur_p=1.0),
    "byol_b": Recipe(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, gray_p=0.2, blur_p=0.1,
                     solarize_p=0.2),
    "simclr": Recipe(scale_min=0.08, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),
    # MSF's weak view (Koohpayegani et al. 2021): crop and flip only.
    "weak": Recipe(jitter_p=0.0, gray_p=0.0, blur_p=0.0),
    # Jigsaw / RotNet: geometry only; the method makes its own tiles / rotations.
    "geometric": Recipe(jitter_p=0.0, gray_p=0.0, blur_p=0.0),
}


@dataclass
class DataConfig:
    path: str = "???"  # a build-beton output folder
    backend: str = "ffcv"  # ffcv | dali | torch
    rate: Optional[float] = None  # poison rate from the manifest; None = the largest built, 0 = clean
    clean_fraction: Optional[float] = None  # distillation: this seeded fraction of the clean images, never a poisoned one
    indices: Optional[str] = None  # an index list FILE.npy into train.beton (a defense's filtered set, FILE.json beside it), checked against this build; replaces the rate's set
    res: int = 224  # px, side of every output view
    batch_size: int = 256  # images per step, summed over all ranks (per-rank = batch_size / world)
    workers: int = 8  # CPU threads / processes per rank for decoding
    drop_last: bool = True  # drop each epoch's last partial global batch
    verify_files: bool = True  # check the manifest's sha256 of the files read before training
    allow_other_data: bool = False  # resume on a build whose data changed since the run started, or distil a teacher trained on other data (recorded in meta.json / metrics.jsonl)
    aug_impl: str = "auto"  # ffcv/dali colour jitter + grayscale: exact | linear (one matrix per image) | auto (exact on GPUs, linear on the CPU)
    compile_aug: bool = False  # ffcv/dali: torch.compile the device augmentation (fused kernels; first batches compile)
    recipes: dict[str, Recipe] = field(default_factory=dict)  # overrides of RECIPES by name


@dataclass
class Batch:
    views: list[torch.Tensor]  # each (N, 3, res, res) float, normalised, channels_last, on device
    label: torch.Tensor  # (N,) int64
    index: torch.Tensor  # (N,) int64: position in train.beton


def resolve_recipes(names: list[str], overrides: dict[str, Recipe]) -> list[Recipe]:
    out = []
    for n in names:
        if n in overrides:
            out.append(overrides[n])
        elif n in RECIPES:
            out.append(RECIPES[n])
        else:
            raise ValueError(f"data.recipes: unknown augmentation recipe {n!r}; known: {sorted(RECIPES)}")
    return out
