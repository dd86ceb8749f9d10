"""Trigger patches: an image file, an HTBA-style random colour grid, or rendered text.

A trigger is an RGB uint8 array (h, w, 3) plus an opacity mask (h, w) float32 in [0, 1] (the file's
alpha channel times `trigger.alpha`). Its width is `trigger.width` px and its height keeps the source
aspect, as the reference code does (`int(h * 50 / w)`, generate_poison.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .config import ConfigError
from .spec import TriggerSpec


@dataclass
class Trigger:
    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) float32 in [0, 1]; 1 = trigger pixel fully replaces the image pixel

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]  # (w, h)

    @property
    def opaque(self) -> bool:
        return bool((self.mask == 1.0).all())


def htba_pattern(seed: int, grid: int) -> Image.Image:
    """A seeded grid of binary colours (each channel 0 or 255), as in the Hidden-Trigger-Backdoor patches."""
    rng = np.random.default_rng([seed, grid])
    cells = (rng.integers(0, 2, size=(grid, grid, 3)) * 255).astype(np.uint8)
    return Image.fromarray(cells, "RGB")


def text_pattern(text: str) -> Image.Image:
    """White text with a black outline on a black box, cropped tight; scaled to the width later."""
    font = ImageFont.load_default(size=64)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font, stroke_width=3)
    img = Image.new("RGB", (x1 - x0 + 8, y1 - y0 + 8), (0, 0, 0))
    ImageDraw.Draw(img).text((4 - x0, 4 - y0), text, font=font, fill=(255, 255, 255),
                             stroke_width=3, stroke_fill=(0, 0, 0))
    return img


def _load_image_trigger(path: str) -> tuple[Image.Image, np.ndarray | None]:
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            rgba = im.convert("RGBA") if has_alpha else None
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"trigger.path: cannot read trigger image {path}: {e}") from None
    alpha = None if rgba is None else np.asarray(rgba)[..., 3]
    return rgb, alpha


def make_trigger(spec: TriggerSpec, width: int | None = None) -> Trigger:
    """Build the trigger at `width` px (default `spec.width`), aspect kept."""
    width = width or spec.width
    alpha_img = None
    if spec.kind == "htba":
        base = htba_pattern(spec.seed, spec.grid)
        smooth = Image.Resampling.BILINEAR  # "upsampled smoothly": bilinear between the grid's cells
    elif spec.kind == "text":
        base, smooth = text_pattern(spec.text), Image.Resampling.LANCZOS
    else:
        base, alpha_img = _load_image_trigger(spec.path)
        smooth = Image.Resampling.BICUBIC  # what the reference's plain img.resize uses (Pillow >= 7)
    w0, h0 = base.size
    height = max(1, int(h0 * width / w0))
    rgb = np.asarray(base.resize((width, height), smooth), dtype=np.uint8).copy()
    mask = np.ones((height, width), np.float32)
    if alpha_img is not None:
        a = Image.fromarray(alpha_img).resize((width, height), Image.Resampling.BICUBIC)
        mask = np.asarray(a, np.float32) / 255.0
    return Trigger(rgb, mask * np.float32(spec.alpha))
