"""Decoded image -> 8-bit RGB, the one conversion every source image and image trigger goes through.

The reference does `Image.open(path).convert('RGB')`. That is kept for every 8-bit mode (greyscale,
palette, CMYK, alpha), but two cases need more:
- 16-bit greyscale (PNG, TIFF: Pillow modes `I;16*`, and `I` from some decoders): `convert('RGB')` clips
  every value above 255 to white, so a typical 16-bit image comes out almost all white. It is scaled
  to 8 bits instead (v * 255 / 65535, rounded). 32-bit integer or float images with values outside
  [0, 255] have no agreed scaling and are refused.
- EXIF orientation: ignored by default, as the reference (and torchvision's loader) ignore it, so a
  photo stored sideways stays sideways; `storage.exif_transpose: true` applies it first.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when absent)."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a malformed EXIF block is not worth failing an image for; it is ignored as the reference does
        return 1


def apply_orientation(im: Image.Image, exif_transpose: bool) -> Image.Image:
    if exif_transpose and orientation(im) != 1:
        return ImageOps.exif_transpose(im)
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit greyscale is scaled, not clipped (raises ValueError where no scaling is safe)."""
    if im.mode in SIXTEEN_BIT:
        return _scale16(np.asarray(im).astype(np.uint32))
    if im.mode in ("I", "F"):
        a = np.asarray(im)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if im.mode == "I" and lo >= 0 and hi <= 65535 and (hi > 255 or im.format == "PNG"):
            return _scale16(a.astype(np.uint32))  # a 16-bit PNG that this Pillow decodes as mode I
        if lo < 0 or hi > 255:
            raise ValueError(f"{'32-bit integer' if im.mode == 'I' else 'floating-point'} image with values in "
                             f"[{lo:g}, {hi:g}]: no safe conversion to 8-bit RGB; convert it to 8 or 16 bits first")
    return im.convert("RGB")


def _scale16(a: np.ndarray) -> Image.Image:
    grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
