"""Patch triggers (Saha et al. 2022): a small pattern pasted at a seeded place in each poisoned image.

A patch is an RGB uint8 array (h, w, 3) plus an opacity mask (h, w) float32 in [0, 1] (an image's alpha
channel times `trigger.alpha`). Its width is `trigger.width` px and its height keeps the pattern's aspect,
as the reference code does (`int(h * 50 / w)`, generate_poison.py). The pattern kinds (htba.py, image.py,
text.py) only say what the pattern is; placement and pasting (poison.py) are shared here. Training
images get the patch at full resolution, before any resize, as the reference pastes them; val_poisoned
images get it on the resized + centre-cropped validation image (the paper's evaluation set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from ..config import ConfigError
from ..poison import paste, place_all, union_box
from .base import Made, TriggerKind, channel_hash


@dataclass
class Trigger:
    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) float32 in [0, 1]; 1 = trigger pixel fully replaces the image pixel
    anchor: tuple[float, float] | None = None  # px inside the box placed at a "centre"; None: (w / 2, h / 2)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]  # (w, h)

    @property
    def opaque(self) -> bool:
        return bool((self.mask == 1.0).all())


def sized(base: Image.Image, alpha_img: Optional[np.ndarray], width: int, alpha: float,
          smooth: Image.Resampling, height: Optional[int] = None) -> Trigger:
    """`base` (RGB, with an optional alpha channel) resized to `width` px, aspect kept unless `height` is
    given, at opacity `alpha`."""
    w0, h0 = base.size
    height = height or max(1, int(h0 * width / w0))
    if alpha_img is None:
        rgb = np.asarray(base.resize((width, height), smooth), dtype=np.uint8).copy()
        mask = np.ones((height, width), np.float32)
    else:
        # Resized as one RGBA image, as the reference does (Pillow premultiplies alpha while resampling,
        # so the colour of transparent pixels does not bleed into the trigger's edges).
        rgba = Image.fromarray(np.dstack([np.asarray(base), alpha_img]), "RGBA").resize((width, height), smooth)
        arr = np.asarray(rgba)
        rgb, mask = arr[..., :3].copy(), arr[..., 3].astype(np.float32) / 255.0
    return Trigger(rgb, mask * np.float32(alpha))


class PatchKind(TriggerKind):
    """A patch pasted by the placement rules of poison.py (trigger.location, range_of, train/val ranges)."""

    @classmethod
    def pattern(cls, t, width: int, alpha: float) -> Trigger:
        """The patch at `width` px and opacity `alpha` (t: the TriggerSpec)."""
        raise NotImplementedError

    def __init__(self, spec, source, target):
        super().__init__(spec, source, target)
        t = spec.trigger
        train = self.pattern(t, t.width, t.alpha)
        same = t.val_alpha is None or t.val_alpha == t.alpha
        self.triggers = {"train": train, "val": train if same else self.pattern(t, t.width, t.val_alpha)}
        st = spec.storage
        if st.val_resize and max(train.size) > st.val_crop:
            raise ConfigError(f"trigger.width: the {train.size[0]}x{train.size[1]} px trigger does not fit the "
                              f"{st.val_crop} px validation crop (storage.val_crop)")

    def fits(self, w: int, h: int) -> bool:
        tw, th = self.triggers["train"].size
        return w >= tw and h >= th

    def _apply(self, arr: np.ndarray, rng: np.random.Generator, val: bool) -> Made:
        t, trig = self.spec.trigger, self.triggers["val" if val else "train"]
        tw, th = trig.size
        h, w = arr.shape[:2]
        if tw > w or th > h:
            raise ValueError(f"image is {w}x{h} px, smaller than the {tw}x{th} px trigger")
        lo, hi = (t.val_min, t.val_max) if val else (t.train_min, t.train_max)
        spots = place_all(rng, w, h, tw, th, t, lo, hi, trig.anchor, (t.val_location if val else None))
        for x, y in spots:
            paste(arr, trig, x, y)
        return Made(arr, union_box(spots, tw, th))

    def train(self, rgb, rng, slot):
        return self._apply(rgb, rng, val=False)

    def val(self, rgb, rng):
        return self._apply(rgb, rng, val=True)

    def record(self) -> dict:
        train, val = self.triggers["train"], self.triggers["val"]
        arrays = [train.rgb, train.mask]
        if val is not train:  # trigger.val_alpha set: the val_poisoned variant is hashed too
            arrays += [val.rgb, val.mask]
        return {"kind": self.name, "width": train.size[0], "height": train.size[1], "sha256": channel_hash(*arrays),
                "summary": self.summary(), "evaluation": self.evaluation()}

    def summary(self) -> str:
        t, (w, h) = self.spec.trigger, self.triggers["train"].size
        return f"{self.name} patch {w}x{h} px, opacity {t.alpha:g}, location {t.location}"

    def evaluation(self) -> str:
        t = self.spec.trigger
        where = t.val_location or t.location
        rng = f" in [{t.val_min:g}, {t.val_max:g}]" if where == "random" else ""
        alpha = t.alpha if t.val_alpha is None else t.val_alpha
        return f"the patch pasted ({where}{rng}, opacity {alpha:g})"
