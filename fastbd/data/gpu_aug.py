"""Batched SSL colour augmentation on the device, with per-sample random parameters.

The ffcv and dali backends hand over uint8 crops; this module flips, colour-jitters, greys, blurs and
solarises them on the GPU (or CPU) and normalises, so the CPU only decodes and crops. The operations
follow torchvision's definitions (ColorJitter, RandomGrayscale, GaussianBlur with sigma in
[0.1, 2.0] as MoCo v2's aug-plus, RandomSolarize at 0.5); jitter's four operations run in one random
order per batch rather than per image (torchvision draws an order per image), a documented
simplification. Randomness comes from an explicit torch.Generator (per-sample draws, on the device)
and a host-side `random.Random` (the jitter order), both pure functions of (seed, epoch, step)
(`augment_views`), so a resumed run repeats them.

Nothing here makes the host wait for the device: the jitter order is drawn on the host (a randperm on
the device read back with .tolist() would stall the CPU until the GPU caught up), the blur's kernel
radius is the recipe's bound rather than the batch's largest sigma, and constant matrices are put on
the device once (`torch.tensor(list, device=cuda)` is a blocking copy). tests/test_gpu_aug.py and
tests/test_train.py check it.

Two implementations of jitter + grayscale (`impl`, `data.aug_impl`):
- `exact`: the four jitter operations one after another, each clamped to [0, 1] as torchvision does,
  with hue shifted in HSV. Several full-image passes; cheap on a GPU.
- `linear`: brightness, contrast, saturation, grayscale and the hue shift are all linear in RGB (hue as
  a rotation about the grey axis in YIQ space, the classic hue-rotation matrix), so they compose into one
  3x3 matrix and offset per image, applied in one pass and clamped once at the end. Same random draws,
  same order; it differs from `exact` only where an intermediate result left [0, 1] and in YIQ vs HSV
  hue. On a CPU this is ~10x cheaper at 224 px (benchmarks/train_throughput.py), which is what makes
  the ffcv/dali backends cheaper than PIL there (issue: the CPU path cost 85 core-ms per sample).

`compiled=True` (`data.compile_aug`) runs the pixel work through torch.compile: eagerly the exact
path is ~60 full-tensor passes per view, which at 224 px costs a GPU a large share of a ResNet-18 step
(P1 asks the whole data path for under 5% of it); compiled, each exact stage fuses into one or two
kernels, compiled one by one so that the per-batch jitter order never triggers a recompilation, and the
linear path (its choices are all in small matrices) is one graph from uint8 in to normalised out.
Compiled results match eager ones to float rounding, not bitwise; each mode is deterministic on its own.
"""

from __future__ import annotations

import functools
import math
import random

import torch
import torch.nn.functional as F

from .base import IMAGENET_MEAN, IMAGENET_STD, Recipe

_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL/torchvision
# RGB -> YIQ (NTSC); its first row is the luma above, so a rotation of (I, Q) keeps the grey level.
_YIQ = ((0.299, 0.587, 0.114), (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135))
IMPLS = ("exact", "linear")


@functools.lru_cache(maxsize=None)
def _const(name: str, device: torch.device) -> torch.Tensor:
    """A constant, made once per device (never modified in place). The YIQ inverse is taken here, on the
    host: torch.linalg.inv on a GPU checks for singularity, which reads the device."""
    yiq = torch.tensor(_YIQ, dtype=torch.float64)
    v = {"yiq": lambda: yiq, "yiq_inv": lambda: torch.linalg.inv(yiq),
         "luma": lambda: torch.tensor(_GREY, dtype=torch.float64),
         "to_grey": lambda: torch.tensor(_GREY, dtype=torch.float64).expand(3, 3).contiguous(),  # rows: luma
         "mean": lambda: torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1),
         "std": lambda: torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)}[name]()
    return v.to(device=device, dtype=torch.float32)


def _u(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi, generator=gen).view(n, 1, 1, 1)


def _coin(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, device=device, generator=gen) < p).view(n, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma, from Python constants (no tensor to copy to the device)."""
    return x[:, 0:1] * _GREY[0] + x[:, 1:2] * _GREY[1] + x[:, 2:3] * _GREY[2]


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


def _shift_hue(hsv: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    h = (hsv[:, 0] + f) % 1.0
    return torch.stack([h, hsv[:, 1], hsv[:, 2]], 1)


# ----- pixel stages: pure functions of tensors, each compiled on its own when compiled=True ---------------

def _to_unit(x: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    x = x.float() / 255
    return x if flip is None else torch.where(flip, x.flip(-1), x)


def _brightness(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (t * f).clamp(0, 1)


def _contrast(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    m = grey(t).mean((2, 3), keepdim=True)
    return ((t - m) * f + m).clamp(0, 1)


def _saturation(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    g = grey(t)
    return ((t - g) * f + g).clamp(0, 1)


def _hue(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return hsv_to_rgb(_shift_hue(rgb_to_hsv(t), f))


def _select(x: torch.Tensor, jittered: torch.Tensor | None, jitter: torch.Tensor | None,
            grey_it: torch.Tensor | None) -> torch.Tensor:
    if jittered is not None:
        x = torch.where(jitter, jittered, x)
    return x if grey_it is None else torch.where(grey_it, grey(x).expand_as(x), x)


def _linear(x: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    return (torch.einsum("nij,njhw->nihw", m, x) + b.view(n, 3, 1, 1)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Separable blur with a per-image sigma (N,), one grouped convolution per axis. `radius` (px) bounds
    the kernel; None takes 3x the batch's largest sigma, which reads the device: a training step passes
    the recipe's bound instead (`augment`)."""
    n, c, h, w = x.shape
    if radius is None:
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


def _blur_where(x: torch.Tensor, sigma: torch.Tensor, radius: int, blur: torch.Tensor) -> torch.Tensor:
    return torch.where(blur, gaussian_blur(x, sigma, radius), x)


def _finish(x: torch.Tensor, solarize: torch.Tensor | None, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if solarize is not None:
        x = torch.where(solarize, torch.where(x >= 0.5, 1 - x, x), x)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _linear_path(x: torch.Tensor, flip: torch.Tensor | None, m: torch.Tensor, b: torch.Tensor,
                 sigma: torch.Tensor | None, radius: int, blur: torch.Tensor | None, solarize: torch.Tensor | None,
                 mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The whole `linear` pixel path, uint8 in, normalised out: one graph when compiled (its per-batch
    choices live in the small matrices m, b, so no Python branch depends on the batch)."""
    x = _linear(_to_unit(x, flip), m, b)
    if blur is not None:
        x = _blur_where(x, sigma, radius, blur)
    return _finish(x, solarize, mean, std)


_STAGES = {f.__name__: f for f in (_to_unit, _brightness, _contrast, _saturation, _hue, _select, _blur_where,
                                   _finish, _linear_path)}
_COMPILED: dict[str, object] = {}


def _stage(name: str, compiled: bool):
    if not compiled:
        return _STAGES[name]
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_STAGES[name])
    return _COMPILED[name]


# ----- random parameters and the two jitter implementations ----------------------------------------------

def _jitter_draws(n: int, r: Recipe, gen: torch.Generator, dev, host: random.Random) -> list[tuple[str, torch.Tensor]]:
    """The jitter's (operation, per-image factor) pairs, in this batch's random order."""
    ops = []
    if r.brightness:
        ops.append(("_brightness", _u(n, max(0, 1 - r.brightness), 1 + r.brightness, gen, dev)))
    if r.contrast:
        ops.append(("_contrast", _u(n, max(0, 1 - r.contrast), 1 + r.contrast, gen, dev)))
    if r.saturation:
        ops.append(("_saturation", _u(n, max(0, 1 - r.saturation), 1 + r.saturation, gen, dev)))
    if r.hue:
        ops.append(("_hue", _u(n, -r.hue, r.hue, gen, dev).view(n, 1, 1)))
    return [ops[i] for i in host.sample(range(len(ops)), len(ops))]


def color_jitter(x: torch.Tensor, r: Recipe, gen: torch.Generator, host: random.Random | None = None,
                 compiled: bool = False) -> torch.Tensor:
    """The exact jitter of every image (the caller keeps it where its coin says so)."""
    host = host if host is not None else random.Random(gen.initial_seed())
    for name, f in _jitter_draws(x.shape[0], r, gen, x.device, host):
        x = _stage(name, compiled)(x, f)
    return x


def _hue_matrix(f: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) RGB matrices rotating hue by f turns about the grey axis (YIQ); f (n,) in [-0.5, 0.5]."""
    a = 2 * math.pi * f.float()
    c, s = torch.cos(a), torch.sin(a)
    rot = torch.zeros(f.shape[0], 3, 3, device=f.device)
    # negative angle in (I, Q): the direction in which HSV hue grows (red -> yellow -> green)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, c, s, -s, c
    return _const("yiq_inv", f.device) @ rot @ _const("yiq", f.device)


def jitter_matrix(mean_rgb: torch.Tensor, r: Recipe, gen: torch.Generator, apply: torch.Tensor,
                  host: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `linear` colour jitter as per-image (M (n, 3, 3), b (n, 3)) with x -> M x + b; identity where
    `apply` ((n, 1, 1, 1) bool) is false. `mean_rgb` (n, 3): each image's mean colour in [0, 1] (contrast
    needs its mean grey as the jitter goes). Draws the same random numbers, in the same order, as
    `color_jitter`."""
    n, dev = mean_rgb.shape[0], mean_rgb.device
    host = host if host is not None else random.Random(gen.initial_seed())
    eye = torch.eye(3, device=dev).expand(n, 3, 3)
    m, b = eye.clone(), torch.zeros(n, 3, device=dev)
    w = _const("luma", dev)
    mean_rgb = mean_rgb.unsqueeze(2)  # (n, 3, 1)
    for name, f in _jitter_draws(n, r, gen, dev, host):
        if name == "_brightness":
            m, b = f.view(n, 1, 1) * m, f.view(n, 1) * b
        elif name == "_contrast":
            level = ((m @ mean_rgb).squeeze(2) + b) @ w  # (n,) mean grey of the image as it is now
            m, b = f.view(n, 1, 1) * m, f.view(n, 1) * b + ((1 - f.view(n)) * level).view(n, 1)
        elif name == "_saturation":
            f = f.view(n, 1, 1)
            m, b = _left(f * eye + (1 - f) * _const("to_grey", dev), m, b)
        else:
            m, b = _left(_hue_matrix(f.view(n)), m, b)
    return torch.where(apply.view(n, 1, 1), m, eye), torch.where(apply.view(n, 1), b, torch.zeros_like(b))


def _left(a: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose the linear map `a` after x -> m x + b."""
    return a @ m, (a @ b.unsqueeze(2)).squeeze(2)


def augment(x: torch.Tensor, r: Recipe, gen: torch.Generator, impl: str = "exact",
            host: random.Random | None = None, compiled: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) crops -> augmented, normalised float32 (N, 3, H, W), channels_last.

    `gen` draws the per-image parameters (on x's device); `host` the per-batch jitter order (None: a
    Random seeded from gen's seed, the same order for every call with that generator)."""
    if impl not in IMPLS:
        raise ValueError(f"data.aug_impl: {impl!r} is not one of {IMPLS} (or auto)")
    n, dev = x.shape[0], x.device
    host = host if host is not None else random.Random(gen.initial_seed())
    stage = functools.partial(_stage, compiled=compiled)
    flip = _coin(n, r.flip, gen, dev) if r.flip else None
    # the random draws in one fixed order (flip, jitter, grey, blur, solarize) for both implementations
    if impl == "linear":  # jitter and grayscale as one matrix per image, one pass, one clamp
        m, b = torch.eye(3, device=dev).expand(n, 3, 3), torch.zeros(n, 3, device=dev)
        if r.jitter_p:
            mean_rgb = x.mean((2, 3), dtype=torch.float32) / 255  # a flip keeps the mean
            m, b = jitter_matrix(mean_rgb, r, gen, _coin(n, r.jitter_p, gen, dev), host)
        if r.gray_p:
            g = _coin(n, r.gray_p, gen, dev)
            gm, gb = _left(_const("to_grey", dev), m, b)
            m, b = torch.where(g.view(n, 1, 1), gm, m), torch.where(g.view(n, 1), gb, b)
    else:
        x = stage("_to_unit")(x, flip)
        jitter = _coin(n, r.jitter_p, gen, dev) if r.jitter_p else None
        jittered = color_jitter(x, r, gen, host, compiled) if r.jitter_p else None
        x = stage("_select")(x, jittered, jitter, _coin(n, r.gray_p, gen, dev) if r.gray_p else None)
    sigma = blur = None
    scale = x.shape[-1] / 224  # the recipe's sigmas are for 224-px views
    radius = max(1, math.ceil(3 * r.blur_sigma_max * scale))  # fixed by the recipe: no device read
    if r.blur_p:
        sigma = _u(n, r.blur_sigma_min * scale, r.blur_sigma_max * scale, gen, dev).view(n)
        blur = _coin(n, r.blur_p, gen, dev)
    solarize = _coin(n, r.solarize_p, gen, dev) if r.solarize_p else None
    mean, std = _const("mean", dev), _const("std", dev)
    if impl == "linear":
        return stage("_linear_path")(x, flip, m, b, sigma, radius, blur, solarize, mean, std)
    if blur is not None:
        x = stage("_blur_where")(x, sigma, radius, blur)
    return stage("_finish")(x, solarize, mean, std)


def step_generator(device: torch.device, seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator for one step's augmentation: a pure function of (seed, epoch, step), so resume repeats it."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 100_003 + step) % (2**63 - 1))
    return g


def augment_views(crops, recipes: list[Recipe], device: torch.device, seed: int, epoch: int, step: int,
                  impl: str = "exact", compiled: bool = False) -> list[torch.Tensor]:
    """One step's views, as the ffcv and dali backends make them: crop v (uint8 (N, 3, H, W)) augmented
    with recipe v; one device generator and one host Random per step, shared by the views in turn."""
    gen = step_generator(device, seed, epoch, step)
    host = random.Random(gen.initial_seed())
    return [augment(x, r, gen, impl, host, compiled) for x, r in zip(crops, recipes)]
