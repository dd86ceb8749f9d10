"""Batched SSL colour augmentation on the device, with per-sample random parameters.

The ffcv and dali backends hand over uint8 crops; this module flips, colour-jitters, greys, blurs and
solarises them on the GPU (or CPU) and normalises, so the CPU only decodes and crops. The operations
follow torchvision's definitions (ColorJitter, RandomGrayscale, GaussianBlur with sigma in
[0.1, 2.0] as MoCo v2's aug-plus, RandomSolarize at 0.5); jitter's four operations run in one random
order per batch rather than per image (torchvision draws an order per image), a documented
simplification. Randomness comes from an explicit torch.Generator, so a resumed run repeats it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import IMAGENET_MEAN, IMAGENET_STD, Recipe

_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL/torchvision


def _u(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi, generator=gen).view(n, 1, 1, 1)


def _coin(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, device=device, generator=gen) < p).view(n, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    mx, _ = x.max(1)
    mn, _ = x.min(1)
    d = mx - mn
    safe = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(d > 0, h / 6, torch.zeros_like(h))
    s = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    return torch.stack([h, s, mx], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * (torch.minimum(k, 4 - k).clamp(0, 1))


def color_jitter(x: torch.Tensor, r: Recipe, gen: torch.Generator) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    ops = []
    if r.brightness:
        f = _u(n, max(0, 1 - r.brightness), 1 + r.brightness, gen, dev)
        ops.append(lambda t, f=f: (t * f).clamp(0, 1))
    if r.contrast:
        f = _u(n, max(0, 1 - r.contrast), 1 + r.contrast, gen, dev)
        ops.append(lambda t, f=f: ((t - grey(t).mean((2, 3), keepdim=True)) * f
                                   + grey(t).mean((2, 3), keepdim=True)).clamp(0, 1))
    if r.saturation:
        f = _u(n, max(0, 1 - r.saturation), 1 + r.saturation, gen, dev)
        ops.append(lambda t, f=f: ((t - grey(t)) * f + grey(t)).clamp(0, 1))
    if r.hue:
        f = _u(n, -r.hue, r.hue, gen, dev).view(n, 1, 1)
        ops.append(lambda t, f=f: hsv_to_rgb(_shift_hue(rgb_to_hsv(t), f)))
    order = torch.randperm(len(ops), generator=gen, device=dev).tolist()
    for i in order:
        x = ops[i](x)
    return x


def _shift_hue(hsv: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    h = (hsv[:, 0] + f) % 1.0
    return torch.stack([h, hsv[:, 1], hsv[:, 2]], 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable blur with a per-image sigma (N,), one grouped convolution per axis."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kern = torch.exp(-(k.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, 2r+1)
    y = x.reshape(1, n * c, h, w)
    pad = min(radius, h - 1, w - 1)
    if pad < radius:  # reflect padding needs pad < size; tiny images fall back to replicate
        y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    else:
        y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kern.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kern.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def augment(x: torch.Tensor, r: Recipe, gen: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, H, W) crops -> augmented, normalised float32 (N, 3, H, W), channels_last."""
    n, dev = x.shape[0], x.device
    x = x.float().div_(255)
    if r.flip:
        x = torch.where(_coin(n, r.flip, gen, dev), x.flip(-1), x)
    if r.jitter_p:
        x = torch.where(_coin(n, r.jitter_p, gen, dev), color_jitter(x, r, gen), x)
    if r.gray_p:
        x = torch.where(_coin(n, r.gray_p, gen, dev), grey(x).expand_as(x), x)
    if r.blur_p:
        scale = x.shape[-1] / 224  # the recipe's sigmas are for 224-px views
        sigma = _u(n, r.blur_sigma_min * scale, r.blur_sigma_max * scale, gen, dev).view(n)
        x = torch.where(_coin(n, r.blur_p, gen, dev), gaussian_blur(x, sigma), x)
    if r.solarize_p:
        x = torch.where(_coin(n, r.solarize_p, gen, dev), torch.where(x >= 0.5, 1 - x, x), x)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def step_generator(device: torch.device, seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator for one step's augmentation: a pure function of (seed, epoch, step), so resume repeats it."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 100_003 + step) % (2**63 - 1))
    return g
