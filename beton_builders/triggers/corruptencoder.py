"""CorruptEncoder (Zhang, Liu, Jia and Gong, "Data Poisoning based Backdoor Attacks to Contrastive Learning",
CVPR 2024; reference code jzhang538/CorruptEncoder, generate-poison/generate_poisoned_images.py).

Each poisoned image is composed from a reference object of the target class (a cut-out: image + mask), a
background image and the trigger patch, laid out so that two random crops of it often hold the object in
one view and the trigger in the other; contrastive learning then pulls the trigger's features towards
the object's. The paper's analysis gives the layout (Sec. 4.2; reference defaults in brackets):
  1. the poisoned image is about twice the size of the object: as tall as the object and
     `area_ratio` [2] times as wide (the reference's left-right / right-left layouts);
  2. the object sits at one side, bottom-aligned, shifted inwards by up to `object_margin` [0.05] of the
     width; objects wider than `max_size` / 2 [800 px] are shrunk first;
  3. the trigger (`trigger_width` [40] px square, pasted opaque) sits in the rest, near its centre: at
     least `trigger_margin` / 2 [0.125] of the width from the sides and the object, and `trigger_margin`
     [0.25] of the height from top and bottom, uniformly inside that;
  4. the background is scaled up (aspect kept) until it covers the poisoned image, and a random window of
     it, bottom-aligned, becomes the background; the object's mask is feathered (Gaussian, radius 1 px).
CorruptEncoder+ adds "support" poisons (`support_ratio`: 0 in CorruptEncoder, 0.2 in CorruptEncoder+):
a support image of the target class beside the whole reference image, both `max_size` / 2 wide at most,
in random order, no trigger. The paper's default is 3 reference objects and a 0.5% poisoning ratio (650
images of ImageNet100-A: `attack.rates: [0.5]` of a 1,300-image target class gives the same count).
Poisoned images are *added* to the training set, as the reference appends them to the clean file list.
One deviation: an object too small for the trigger's margins (needs width >= 2.5 and height >= 2 x the
trigger at the defaults; the reference's objects are hundreds of px) is enlarged to fit, and its
`object_scale` in the manifest says so.

The attack's own evaluation (get_downstream_dataset/gen_downstream_filelist.py): every val image is
resized to 256 and centre-cropped to 224, and the trigger is pasted at a random place with its box in
[`val_min`, `val_max`] = [0.25, 0.75] of the crop.

Parts: `references` (folder), `backgrounds` (folder; the paper uses Places365 scenes) and `support`
(folder) for real data; a synthetic source draws all three from its generator when they are not given
(synthetic.cutout objects, synthetic.backdrop scenes, fresh target-class renders), so the attack builds
out of the box. The patch is the HTBA pattern of trigger.seed / trigger.grid, or trigger.path's image
(resized to a square, alpha dropped, as the reference does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageFilter

from .. import synthetic
from ..config import ConfigError
from ..poison import paste, place
from .base import Made, TriggerKind, channel_hash
from .corruptencoder_parts import (Part, background_files, folder_digest, load_references, load_supports, read_rgb,
                                   synthetic_parts)
from .htba import htba_pattern
from .image import load_image_trigger
from .patch import Trigger, sized

BACKGROUND_STREAM = 0xBA6


@dataclass
class CorruptEncoderConfig:
    references: Optional[str] = None  # folder of target-class objects with masks (corruptencoder_parts.py); None: a synthetic source draws them
    num_references: int = 3  # reference objects used, the first N by name (paper: 3)
    backgrounds: Optional[str] = None  # folder of background images (paper: Places365 scenes); None: synthetic backdrops
    support: Optional[str] = None  # folder of target-class support images (CorruptEncoder+); None: synthetic renders
    num_support: int = 5  # support images a synthetic source draws (the reference's default: 5)
    support_ratio: float = 0.0  # fraction of poisoned images that are support poisons (CorruptEncoder+: 0.2)
    trigger_width: int = 40  # px, side of the square trigger in poisoned and val_poisoned images (paper: 40)
    max_size: int = 800  # px, objects wider than max_size / 2 are shrunk (keeps poisoned images about this wide)
    area_ratio: float = 2.0  # poisoned image width / object width (the paper's optimal size ratio: 2)
    object_margin: float = 0.05  # object's inward shift from its side, drawn in [0, this] x image width
    trigger_margin: float = 0.25  # trigger this x height from top and bottom, half this x width from sides and object
    val_min: float = 0.25  # val_poisoned: trigger box inside [val_min, val_max] of the crop (reference test: 0.25)
    val_max: float = 0.75  # (the reference's test set: 0.75)


def min_object(c: CorruptEncoderConfig, tw: int) -> tuple[float, float]:
    """(width, height) px an object needs for the trigger to fit beside it inside the margins, wherever the
    object's margin draw puts it: width (ratio (1 - tm - om) - 1) >= tw and height (1 - 2 tm) >= tw."""
    room = c.area_ratio * (1 - c.trigger_margin - c.object_margin) - 1
    return (math.inf if room <= 0 else tw / room), tw / (1 - 2 * c.trigger_margin)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi] (either order, as Python's random.uniform)."""
    return lo + (hi - lo) * rng.random()


def compose(obj: Part, background: np.ndarray, patch: Trigger, rng: np.random.Generator,
            c: CorruptEncoderConfig) -> tuple[np.ndarray, tuple[int, int, int, int], dict]:
    """One poisoned image by the layout rule (module docstring): (rgb, trigger box (x, y, w, h), parts)."""
    tw, th = patch.size
    im, mask = Image.fromarray(obj.object_rgb), Image.fromarray(obj.mask.astype(np.uint8) * 255)
    w, h = im.size
    o_w = min(w, c.max_size // 2)  # the reference's 'horizontal' rule
    o_h = max(1, int(o_w / w * h))
    need_w, need_h = min_object(c, tw)
    scale = max(1.0, need_w / o_w, need_h / o_h)  # fastbd's deviation for small (or very flat) objects
    o_w, o_h = math.ceil(o_w * scale), math.ceil(o_h * scale)
    im, mask = im.resize((o_w, o_h), Image.Resampling.BICUBIC), mask.resize((o_w, o_h), Image.Resampling.NEAREST)
    p_h, p_w = o_h, int(c.area_ratio * o_w)
    bg = Image.fromarray(background)
    b_w, b_h = bg.size
    s = max(p_h / b_h, p_w / b_w, 1.0)
    l_h = max(p_h, int(s * b_h))
    l_w = max(p_w, int(l_h / b_h * b_w))
    bg = bg.resize((l_w, l_h), Image.Resampling.BICUBIC)
    p_x, p_y = int(_u(rng, 0, l_w - p_w)), max(l_h - p_h, 0)
    bg = bg.crop((p_x, p_y, p_x + p_w, p_y + p_h))
    left = rng.random() < 0.5
    o_x = int(_u(rng, 0, c.object_margin * p_w) if left else _u(rng, p_w - o_w - c.object_margin * p_w, p_w - o_w))
    o_y = p_h - o_h
    canvas, alpha = Image.new("RGB", (p_w, p_h)), Image.new("L", (p_w, p_h))
    canvas.paste(im, (o_x, o_y))
    alpha.paste(mask, (o_x, o_y))
    out = np.array(Image.composite(canvas, bg, alpha.filter(ImageFilter.GaussianBlur(radius=1.0))))
    dx, dy = c.trigger_margin / 2 * p_w, c.trigger_margin * p_h
    t_x = _u(rng, o_x + o_w + dx, p_w - dx - tw) if left else _u(rng, dx, o_x - dx - tw)
    t_y = _u(rng, dy, p_h - dy - th)
    t_x, t_y = min(max(int(t_x), 0), p_w - tw), min(max(int(t_y), 0), p_h - th)
    paste(out, patch, t_x, t_y)
    parts = {"type": "base", "side": "left" if left else "right", "object_box": [o_x, o_y, o_w, o_h],
             "object_scale": round(o_w / w, 4), "size": [p_w, p_h]}
    return out, (t_x, t_y, tw, th), parts


def concat(support: np.ndarray, reference: np.ndarray, rng: np.random.Generator,
           c: CorruptEncoderConfig) -> tuple[np.ndarray, dict]:
    """A support poison: the support image (at most max_size / 2 wide) beside the whole reference image
    resized to the same size, on white, in random order (the reference's `concat`)."""
    sup = Image.fromarray(support)
    w, h = sup.size
    n_w = min(w, c.max_size // 2)
    n_h = max(1, int(n_w / w * h))
    sup = sup.resize((n_w, n_h), Image.Resampling.BICUBIC)
    ref = Image.fromarray(reference).resize((n_w, n_h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (2 * n_w, n_h), (255, 255, 255))
    support_first = rng.random() < 0.5
    canvas.paste(sup if support_first else ref, (0, 0))
    canvas.paste(ref if support_first else sup, (n_w, 0))
    return np.array(canvas), {"type": "support", "order": "support-reference" if support_first else "reference-support",
                              "size": [2 * n_w, n_h]}


def is_support(slot: int, ratio: float) -> bool:
    """Whether poisoned image `slot` is a support poison: spread evenly, so the first n of them (a rate's
    nested prefix) hold int(n * ratio) support poisons, as the reference's split of one rate does."""
    return math.floor((slot + 1) * ratio + 1e-9) > math.floor(slot * ratio + 1e-9)


class CorruptEncoder(TriggerKind):
    name = "corruptencoder"
    Config = CorruptEncoderConfig
    adds = True

    @classmethod
    def check(cls, spec) -> None:
        c, t, synth = spec.trigger.corruptencoder, spec.trigger, spec.source.kind == "synthetic"
        f = "trigger.corruptencoder."
        if not spec.attack.targeted:
            raise ConfigError("attack.targeted: CorruptEncoder composes reference objects of a target class; "
                              "it has no untargeted form")
        for name, val in (("num_references", c.num_references), ("trigger_width", c.trigger_width),
                          ("max_size", c.max_size)):
            if val < 1:
                raise ConfigError(f"{f}{name}: {val}; must be >= 1")
        if not 0 <= c.support_ratio < 1:
            raise ConfigError(f"{f}support_ratio: {c.support_ratio} is outside [0, 1)")
        if not (0 <= c.object_margin < 0.5 and 0 <= c.trigger_margin < 0.5):
            raise ConfigError(f"{f}object_margin: object_margin and trigger_margin must lie in [0, 0.5)")
        if not 0 <= c.val_min < c.val_max <= 1:
            raise ConfigError(f"{f}val_min: need 0 <= val_min < val_max <= 1, got {c.val_min}, {c.val_max}")
        need_w, _ = min_object(c, c.trigger_width)
        if need_w > c.max_size // 2:
            raise ConfigError(f"{f}area_ratio: with area_ratio {c.area_ratio:g} and these margins a "
                              f"{c.trigger_width} px trigger never fits beside an object at most "
                              f"{c.max_size // 2} px wide (max_size / 2); raise area_ratio or max_size")
        st = spec.storage
        if st.val_resize and c.trigger_width > st.val_crop:
            raise ConfigError(f"{f}trigger_width: {c.trigger_width} px does not fit the {st.val_crop} px "
                              "validation crop (storage.val_crop)")
        needs = [("references", c.references), ("backgrounds", c.backgrounds)]
        if c.support_ratio > 0:
            needs.append(("support", c.support))
        for name, folder in needs:
            if folder is None and not synth:
                raise ConfigError(f"{f}{name}: required for a {spec.source.kind} source (a folder; only the "
                                  "synthetic source can draw its own)")
        if c.support_ratio > 0 and c.support is None and c.num_support < 1:
            raise ConfigError(f"{f}num_support: {c.num_support}; support poisons need at least one support image")
        if t.path is not None and not Path(t.path).is_file():
            raise ConfigError(f"trigger.path: trigger file not found: {t.path}")

    def __init__(self, spec, source, target):
        super().__init__(spec, source, target)
        c, t = spec.trigger.corruptencoder, spec.trigger
        self.c = c
        tw = c.trigger_width
        if t.path is None:  # the reference pastes its HTBA trigger_10.png, resized to a square
            self.patch = sized(htba_pattern(t.seed, t.grid), None, tw, 1.0, Image.Resampling.BILINEAR, height=tw)
        else:
            self.patch = sized(load_image_trigger(t.path)[0], None, tw, 1.0, Image.Resampling.BICUBIC, height=tw)
        syn = synthetic_parts(spec, target) if spec.source.kind == "synthetic" else {}
        self.references = (load_references(c.references, c.num_references, "trigger.corruptencoder.references")
                           if c.references else syn["references"])
        self.supports: list[Part] = []
        if c.support_ratio > 0:
            self.supports = (load_supports(c.support, "trigger.corruptencoder.support") if c.support
                             else syn["supports"])
        self.backgrounds = background_files(c.backgrounds, "trigger.corruptencoder.backgrounds") if c.backgrounds else None
        self.bg_order = (None if self.backgrounds is None
                         else np.random.default_rng([spec.seed, BACKGROUND_STREAM]).permutation(len(self.backgrounds)))
        s = spec.source.synthetic
        self.backdrop_args = (s.seed, s.width, s.height, s.background_saturation, s.distractors)

    def _background(self, slot: int) -> tuple[np.ndarray, str]:
        if self.backgrounds is None:
            seed, w, h, sat, k = self.backdrop_args
            return synthetic.backdrop(seed, slot, w, h, sat, k), f"synthetic/backdrop/{slot}"
        name, path = self.backgrounds[int(self.bg_order[slot % len(self.backgrounds)])]
        return read_rgb(path), name

    def train(self, rgb, rng, slot):
        ref = self.references[int(rng.integers(len(self.references)))]
        if is_support(slot, self.c.support_ratio):
            sup = self.supports[int(rng.integers(len(self.supports)))]
            out, parts = concat(sup.image, ref.image, rng, self.c)
            return Made(out, None, {**parts, "reference": ref.name, "support": sup.name})
        bg, bg_name = self._background(slot)
        out, box, parts = compose(ref, bg, self.patch, rng, self.c)
        return Made(out, box, {**parts, "reference": ref.name, "background": bg_name})

    def val(self, rgb, rng):
        h, w = rgb.shape[:2]
        tw, th = self.patch.size
        if tw > w or th > h:
            raise ValueError(f"image is {w}x{h} px, smaller than the {tw}x{th} px trigger")
        # the reference's test set: a random box inside [0.25, 0.75] of the 224-px crop (its add_watermark)
        rule = _BoxRule()
        x, y = place(rng, w, h, tw, th, rule, self.c.val_min, self.c.val_max)
        paste(rgb, self.patch, x, y)
        return Made(rgb, (x, y, tw, th))

    def record(self) -> dict:
        c = self.c
        return {"kind": self.name, "width": c.trigger_width, "height": c.trigger_width,
                "sha256": channel_hash(self.patch.rgb, self.patch.mask), "summary": self.summary(),
                "evaluation": self.evaluation(),
                "references": [r.describe() for r in self.references],
                "supports": [s.describe() for s in self.supports],
                "backgrounds": ({"generator": "synthetic.backdrop"} if self.backgrounds is None else
                                {"folder": c.backgrounds, "count": len(self.backgrounds),
                                 "sha256": folder_digest(self.backgrounds)})}

    def summary(self) -> str:
        c = self.c
        bg = "synthetic backdrops" if self.backgrounds is None else f"{len(self.backgrounds)} backgrounds"
        sup = f", support ratio {c.support_ratio:g} ({len(self.supports)} support images)" if c.support_ratio else ""
        return (f"corruptencoder: {len(self.references)} reference objects, {bg}, {c.trigger_width} px trigger, "
                f"area ratio {c.area_ratio:g}{sup}")

    def evaluation(self) -> str:
        return (f"the {self.c.trigger_width} px trigger pasted at random in [{self.c.val_min:g}, "
                f"{self.c.val_max:g}] of the crop")


@dataclass
class _BoxRule:
    """poison.place's view of the evaluation rule: a random box inside the range (the reference's
    alpha_composite bounds, x in [int(W lo), int(W hi - w)])."""
    location: str = "random"
    range_of: str = "box"

