"""Pixels for the defenses: centre crops of training images by .beton index, patches pasted in batches, and
boxes mapped from crop pixels back to stored pixels (where the manifest's boxes live).

Crops are read from the build's tar shards (fastbd.data.samples.TarSamples, the readers eval and the torch
loader use) and decoded in DataLoader workers: Resize(resize, bicubic) + CenterCrop(res), PatchSearch's
val transform (reference patch_search_iterative_search.py: Resize(256, interpolation=3), CenterCrop(224)).
They stay uint8 (N, 3, res, res) until they meet the network, so a thousand test images at 224 px take
150 MB of device memory.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from beton_builders.host import cap_workers
from fastbd.data.base import IMAGENET_MEAN, IMAGENET_STD
from fastbd.data.samples import TarSamples


class _Crops(torch.utils.data.Dataset):
    def __init__(self, samples: TarSamples, indices: np.ndarray, res: int, resize: int):
        self.samples, self.indices = samples, indices
        self.tf = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(res)])

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        im = Image.open(io.BytesIO(self.samples.read(int(self.indices[i])))).convert("RGB")
        size = torch.tensor(im.size)  # (W, H) in stored pixels
        arr = np.asarray(self.tf(im), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), size


class CropReader:
    """uint8 centre crops (B, 3, res, res) and stored sizes (B, 2) = (W, H) of train.beton samples."""

    def __init__(self, folder, res: int, resize: int, workers: int = 0):
        if resize < res:
            raise ValueError(f"resize: {resize} px is smaller than res: {res} px (the crop would be padded)")
        self.samples = TarSamples(folder, "train")
        if self.samples.raw:
            raise ValueError(f"{folder}: a raw-mode build; the defenses read JPEG builds (storage.write_mode=jpg)")
        self.res, self.resize, self.workers = int(res), int(resize), cap_workers(workers)

    def batches(self, indices, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = _Crops(self.samples, np.asarray(indices, np.int64), self.res, self.resize)
        yield from torch.utils.data.DataLoader(ds, batch_size=max(1, int(batch)), num_workers=self.workers)

    def read(self, indices, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """All of `indices` at once (for small sets: candidates, test images, the classifier's checks)."""
        parts = list(self.batches(indices, batch))
        if not parts:
            return torch.zeros(0, 3, self.res, self.res, dtype=torch.uint8), torch.zeros(0, 2, dtype=torch.int64)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) images -> ImageNet-normalised float32, channels_last, for the encoder."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255
    return ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)


def paste(images: torch.Tensor, patches: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """A copy of `images` (B, 3, H, W) with square `patches` (B, 3, w, w) pasted with their top-left corners
    at (`top`, `left`) (B,), all at once: each output pixel gathers its patch pixel or keeps its own."""
    b, _, h, w_img = images.shape
    w = patches.shape[-1]
    rr = torch.arange(h, device=images.device)[None] - top.to(images.device)[:, None]  # (B, H) row in the patch
    cc = torch.arange(w_img, device=images.device)[None] - left.to(images.device)[:, None]  # (B, W)
    inside = ((rr >= 0) & (rr < w))[:, :, None] & ((cc >= 0) & (cc < w))[:, None, :]  # (B, H, W)
    bi = torch.arange(b, device=images.device)[:, None, None]
    got = patches[bi, :, rr.clamp(0, w - 1)[:, :, None], cc.clamp(0, w - 1)[:, None, :]]  # (B, H, W, 3)
    return torch.where(inside[:, None], got.permute(0, 3, 1, 2).to(images.dtype), images)


def crop_windows(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, w: int) -> torch.Tensor:
    """The (B, 3, w, w) windows of `images` with top-left corners (`top`, `left`)."""
    rows = (top[:, None] + torch.arange(w, device=top.device)[None]).to(images.device)  # (B, w)
    cols = (left[:, None] + torch.arange(w, device=left.device)[None]).to(images.device)
    bi = torch.arange(len(images), device=images.device)[:, None, None]
    return images[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def crop_to_stored(top, left, w: int, size, res: int, resize: int) -> np.ndarray:
    """Windows (top, left, side `w`) in crop pixels -> boxes [x, y, w, h] in stored pixels (float), undoing
    Resize(resize) (the shorter side to `resize`, the longer to int(resize * long / short), as torchvision)
    and CenterCrop(res) (offsets round((side - res) / 2))."""
    top, left = np.asarray(top, np.float64), np.asarray(left, np.float64)
    size = np.asarray(size, np.float64).reshape(-1, 2)
    wd, ht = size[:, 0], size[:, 1]
    short = np.minimum(wd, ht)
    nw = np.where(wd <= ht, resize, np.floor(resize * wd / short))
    nh = np.where(ht <= wd, resize, np.floor(resize * ht / short))
    ox, oy = np.round((nw - res) / 2), np.round((nh - res) / 2)
    sx, sy = nw / wd, nh / ht
    return np.stack([(left + ox) / sx, (top + oy) / sy, np.full_like(sx, w) / sx, np.full_like(sy, w) / sy], 1)
