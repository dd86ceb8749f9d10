"""An image-file patch (PNG/JPEG); an alpha channel is its mask. Resized with bicubic, what the
reference's plain `img.resize` uses (Pillow >= 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import ConfigError
from ..pixels import to_rgb
from .patch import PatchKind, Trigger, sized


def load_image_trigger(path: str, field: str = "trigger.path") -> tuple[Image.Image, np.ndarray | None]:
    """(RGB image, alpha channel (h, w) uint8 or None) of a trigger file; a bad file names `field`."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            rgba = im.convert("RGBA") if has_alpha else None
            rgb = to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"{field}: cannot read trigger image {path}: {e}") from None
    alpha = None if rgba is None else np.asarray(rgba)[..., 3]
    return rgb, alpha


class ImageTrigger(PatchKind):
    name = "image"

    @classmethod
    def check(cls, spec) -> None:
        t = spec.trigger
        if not t.path:
            raise ConfigError("trigger.path: an image trigger needs a file")
        if not Path(t.path).is_file():
            raise ConfigError(f"trigger.path: trigger file not found: {t.path}")

    @classmethod
    def pattern(cls, t, width: int, alpha: float) -> Trigger:
        base, alpha_img = load_image_trigger(t.path)
        return sized(base, alpha_img, width, alpha, Image.Resampling.BICUBIC)
