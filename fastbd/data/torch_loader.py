"""The `torch` backend: a torchvision DataLoader with PIL augmentation in worker processes.

This is the reference codebase's pipeline (moco/main_moco.py: ImageFolder + TwoCropsTransform with
aug-plus, PIL in DataLoader workers), kept as the baseline the benchmarks compare against and as the
fallback when neither FFCV nor DALI is installed. It costs ~13 CPU core-ms per two-view sample.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from .base import IMAGENET_MEAN, IMAGENET_STD, Batch, Recipe
from .samples import EpochOrdered, TarSamples


class _Blur:
    """PIL Gaussian blur with a random sigma, as moco/loader.py's GaussianBlur."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def __call__(self, im):
        sigma = float(torch.empty(1).uniform_(self.lo, self.hi))
        return im.filter(ImageFilter.GaussianBlur(radius=sigma))


def pil_transform(r: Recipe, res: int) -> T.Compose:
    scale = res / 224  # blur sigmas are specified for 224-px views
    ops = [T.RandomResizedCrop(res, scale=(r.scale_min, r.scale_max))]
    if r.jitter_p:
        ops.append(T.RandomApply([T.ColorJitter(r.brightness, r.contrast, r.saturation, r.hue)], p=r.jitter_p))
    if r.gray_p:
        ops.append(T.RandomGrayscale(p=r.gray_p))
    if r.blur_p:
        ops.append(T.RandomApply([_Blur(r.blur_sigma_min * scale, r.blur_sigma_max * scale)], p=r.blur_p))
    if r.solarize_p:
        ops.append(T.RandomApply([ImageOps.solarize], p=r.solarize_p))
    if r.flip:
        ops.append(T.RandomHorizontalFlip(r.flip))
    ops += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(ops)


class _Views(torch.utils.data.Dataset):
    def __init__(self, samples: TarSamples, recipes: list[Recipe], res: int):
        self.samples, self.tf = samples, [pil_transform(r, res) for r in recipes]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        data = self.samples.read(i)
        im = Image.open(io.BytesIO(data)).convert("RGB")  # decoded once, cut into every view
        return [t(im) for t in self.tf], int(self.samples.label[i]), i


class TorchLoader(EpochOrdered):
    def __init__(self, folder, indices: np.ndarray, recipes: list[Recipe], res: int, batch: int, workers: int,
                 device: torch.device, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True,
                 shuffle: bool = True):
        self.samples = TarSamples(folder, "train")
        if self.samples.raw:
            raise ValueError(f"{folder}: raw-mode builds are read by the ffcv and dali backends only")
        self.ds = _Views(self.samples, recipes, res)
        self.workers, self.device = workers, device
        self._init_order(indices, batch, seed, rank, world, drop_last, shuffle)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)  # seeds the workers' RNGs
        dl = torch.utils.data.DataLoader(self.ds, batch_size=self.batch, sampler=self._order().tolist(),
                                         num_workers=self.workers, drop_last=self.drop_last, generator=g,
                                         pin_memory=self.device.type == "cuda",
                                         persistent_workers=False)
        nb = self.device.type == "cuda"
        for views, label, index in dl:
            yield Batch([v.to(self.device, non_blocking=nb).contiguous(memory_format=torch.channels_last)
                         for v in views], label.to(self.device), index.to(self.device))
