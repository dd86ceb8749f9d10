"""CTRL (Li et al., "An Embarrassingly Simple Backdoor Attack on Self-supervised Learning", ICCV 2023;
reference code meet-cjli/CTRL, utils/frequency.py `PoisonFre.Poison_Frequency_Diff`).

The trigger lives in the frequency domain and covers the whole image (no box): the image goes from RGB
to a luma/chroma space, each channel is cut into `window` x `window` blocks (32 px in the paper) with an
orthonormal 2-D DCT-II per block, a fixed `magnitude` is added to the coefficients at `positions` of
the chosen `channels` (the two chrominance channels, positions (15, 15) and (31, 31): the reference's
`--channel 1 2 --trigger_position 15 31`, which it expands to [(15, 15), (31, 31)]), and the image goes
back. Only whole windows from the top-left corner carry it; a remainder narrower than a window is left
as it was (as the reference's numpy port in jsrdcht/SSL-Backdoor does; the original works on 32-px
CIFAR images, where there is none). Poisoned images are target-class images (the paper poisons ~1% of
the training set); the paper poisons at magnitude 50 and tests at 100.

Every step is linear, so the poisoned image is the clean one plus one fixed pattern per image size: the
inverse DCT of the added coefficients, tiled, mapped back to RGB by the inverse colour matrix. This
module computes that pattern the long way (DCT domain -> inverse DCT -> RGB) once per image size and adds
it; `apply_long_way` does every step per image, and the tests check both agree. Differences from the
reference: the pattern is added with the exact inverse of the forward colour matrix (kornia's rounded
yuv_to_rgb coefficients shift every pixel by up to ~0.2 grey levels, which is no part of the trigger),
and the result is rounded to the nearest integer (the reference keeps floats in memory; its numpy port
truncates).

The trigger is applied at the stored resolution, after the resize to `storage.max_resolution` (an area
downscale afterwards would low-pass it away), and on the resized + centre-cropped val image. JPEG's
4:2:0 chroma subsampling averages chroma over 2 x 2 pixels, which all but erases these frequencies, so a
CTRL build requires `storage.chroma: 444` (or `storage.write_mode: raw`); quantisation at lower JPEG
qualities weakens it further (README, "Attacks").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..config import ConfigError
from .base import Made, TriggerKind, channel_hash

# RGB -> luma/chroma, rows Y, C1, C2 (applied to 0..255 values; the offsets of Cb/Cr do not matter to an
# added pattern). yuv: kornia.color.rgb_to_yuv, which the reference calls; ycrcb: JPEG's full-range
# BT.601 in OpenCV's channel order (Y, Cr, Cb), the space the paper's text names.
SPACES = {
    "yuv": ((0.299, 0.587, 0.114), (-0.147, -0.289, 0.436), (0.615, -0.515, -0.100)),
    "ycrcb": ((0.299, 0.587, 0.114), (0.5, -0.418688, -0.081312), (-0.168736, -0.331264, 0.5)),
}


@dataclass
class CtrlConfig:
    window: int = 32  # px, side of the DCT blocks (paper and reference: 32)
    positions: list[list[int]] = field(default_factory=lambda: [[15, 15], [31, 31]])  # [row, column] frequency indices inside a window (reference: 15 31)
    channels: list[int] = field(default_factory=lambda: [1, 2])  # channels of `space` that carry it: 0 luma, 1 and 2 chrominance (reference: 1 2)
    space: str = "yuv"  # yuv (the reference code: kornia rgb_to_yuv) | ycrcb (JPEG's full-range BT.601, as the paper words it)
    magnitude: float = 50.0  # added to each chosen DCT coefficient (0..255 pixel scale) of poisoned training images (paper: 50)
    val_magnitude: float = 100.0  # the same on val_poisoned images (paper: 100 at test)


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix D (n x n): X = D x for a column x, x = D.T X (scipy's norm='ortho')."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def block_dct(x: np.ndarray, n: int, inverse: bool = False) -> np.ndarray:
    """2-D DCT-II (or its inverse) of every n x n block of x (H, W), H and W multiples of n."""
    d = dct_matrix(n)
    h, w = x.shape
    blocks = x.reshape(h // n, n, w // n, n)
    out = (np.einsum("ki,aibj,lj->akbl", d.T, blocks, d.T) if inverse
           else np.einsum("ki,aibj,lj->akbl", d, blocks, d))
    return out.reshape(h, w)


def apply_long_way(rgb: np.ndarray, c: CtrlConfig, magnitude: float) -> np.ndarray:
    """RGB -> space -> block DCT -> add -> inverse DCT -> RGB, rounded and clipped: CTRL step by step."""
    m = np.asarray(SPACES[c.space])
    h, w = rgb.shape[:2]
    hh, ww = h - h % c.window, w - w % c.window
    x = rgb.astype(np.float64) @ m.T
    for ch in c.channels:
        coef = block_dct(x[:hh, :ww, ch], c.window)
        for u, v in c.positions:
            coef[u::c.window, v::c.window] += magnitude
        x[:hh, :ww, ch] = block_dct(coef, c.window, inverse=True)
    return np.clip(np.rint(x @ np.linalg.inv(m).T), 0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _pattern(h: int, w: int, window: int, positions: tuple, channels: tuple, space: str,
             magnitude: float) -> np.ndarray:
    """The RGB difference (h, w, 3) float32 CTRL adds to any h x w image."""
    m = np.asarray(SPACES[space])
    coef = np.zeros((window, window))
    for u, v in positions:
        coef[u, v] += magnitude
    block = block_dct(coef, window, inverse=True)  # one window's pattern in the chosen channels
    delta = np.zeros((h, w, 3))
    hh, ww = h - h % window, w - w % window
    for ch in channels:
        delta[:hh, :ww, ch] = np.tile(block, (hh // window, ww // window))
    return (delta @ np.linalg.inv(m).T).astype(np.float32)


class Ctrl(TriggerKind):
    name = "ctrl"
    Config = CtrlConfig
    boxed = False
    stored_resolution = True

    @classmethod
    def check(cls, spec) -> None:
        c = spec.trigger.ctrl
        if c.window < 2:
            raise ConfigError(f"trigger.ctrl.window: {c.window} px; must be >= 2")
        if c.space not in SPACES:
            raise ConfigError(f"trigger.ctrl.space: {c.space!r} is not one of {tuple(SPACES)}")
        if not c.positions or any(len(p) != 2 or not all(0 <= q < c.window for q in p) for p in c.positions):
            raise ConfigError(f"trigger.ctrl.positions: {c.positions} must be [row, column] pairs in "
                              f"[0, {c.window}) (trigger.ctrl.window)")
        if not c.channels or any(ch not in (0, 1, 2) for ch in c.channels) or len(set(c.channels)) != len(c.channels):
            raise ConfigError(f"trigger.ctrl.channels: {c.channels} must be distinct channels among 0, 1, 2")
        st = spec.storage
        if st.write_mode == "jpg" and st.chroma != "444":
            raise ConfigError("storage.chroma: 4:2:0 JPEG averages chroma over 2x2 pixels and erases CTRL's "
                              "frequency trigger; set storage.chroma=444 (or storage.write_mode=raw)")
        if st.val_resize and c.window > st.val_crop:
            raise ConfigError(f"trigger.ctrl.window: {c.window} px does not fit the {st.val_crop} px validation "
                              "crop (storage.val_crop)")

    def __init__(self, spec, source, target):
        super().__init__(spec, source, target)
        self.c = spec.trigger.ctrl

    def fits(self, w: int, h: int) -> bool:
        """`w`, `h`: the *stored* size (the trigger goes on after the resize); at least one whole window."""
        return w >= self.c.window and h >= self.c.window

    def _apply(self, rgb: np.ndarray, magnitude: float) -> Made:
        h, w = rgb.shape[:2]
        if not self.fits(w, h):
            raise ValueError(f"image is {w}x{h} px, smaller than one {self.c.window} px CTRL window")
        c = self.c
        delta = _pattern(h, w, c.window, tuple(map(tuple, c.positions)), tuple(c.channels), c.space,
                         float(magnitude))
        out = np.clip(np.rint(rgb.astype(np.float32) + delta), 0, 255).astype(np.uint8)
        return Made(out, None)

    def train(self, rgb, rng, slot):
        return self._apply(rgb, self.c.magnitude)

    def val(self, rgb, rng):
        return self._apply(rgb, self.c.val_magnitude)

    def record(self) -> dict:
        c = self.c
        one = _pattern(c.window, c.window, c.window, tuple(map(tuple, c.positions)), tuple(c.channels), c.space, 1.0)
        return {"kind": self.name, "width": None, "height": None, "sha256": channel_hash(one),
                "summary": self.summary(), "evaluation": self.evaluation(),
                "params": {"window": c.window, "positions": [list(p) for p in c.positions],
                           "channels": list(c.channels), "space": c.space, "magnitude": c.magnitude,
                           "val_magnitude": c.val_magnitude, "applied": "at the stored resolution"}}

    def summary(self) -> str:
        c = self.c
        pos = ", ".join(f"({u}, {v})" for u, v in c.positions)
        st = self.spec.storage
        # measured (README, "Attacks"): 4:4:4 JPEG at q90 keeps 5-70% of each coefficient, q95 60-85%, q100 ~98%
        weak = (f"; JPEG q{st.jpeg_quality} keeps only part of it (q >= 95 or write_mode=raw)"
                if st.write_mode == "jpg" and st.jpeg_quality < 95 else "")
        return (f"ctrl frequency trigger, image-wide: {c.window} px DCT windows, {c.space} channels "
                f"{list(c.channels)}, positions {pos}, magnitude {c.magnitude:g} (train) / {c.val_magnitude:g} (val)"
                + weak)

    def evaluation(self) -> str:
        return f"CTRL image-wide at magnitude {self.c.val_magnitude:g}"
