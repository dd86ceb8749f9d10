"""What a trigger kind is: one way of making poisoned training images and the triggered validation images
its attack is evaluated on. Each kind is one module in this package and one entry in KINDS
(triggers/__init__.py); a kind with settings of its own declares them as a dataclass `Config`, which
becomes the section `trigger.<kind>` of the poison spec (`trigger.ctrl.window=16`).

The build calls, per sample, in worker processes (so a kind must pickle, and its randomness must come
from the `rng` it is handed, which depends only on the seed, the split and the sample):

    made = kind.train(rgb, rng, slot)   # a poisoned training image; rgb: the decoded source image (H, W, 3)
                                        # uint8, or None for a kind that composes its images (`adds`)
    made = kind.val(rgb, rng)           # a val_poisoned image, on the resized + centre-cropped val image

Three class attributes place a kind in the pipeline:
- `boxed`: the trigger is a patch with a box; a boxless kind (CTRL: image-wide) reports box None.
- `adds`: its poisoned images are new images appended to the training set (CorruptEncoder's composites,
  as its reference appends them to the clean file list), not copies that replace a clean original; a
  rate's training set is then every clean image plus the rate's composites.
- `stored_resolution`: applied after the resize to `storage.max_resolution` (a frequency trigger would
  not survive the downscale), not before it as the patch is (Saha et al. paste at full resolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass
class Made:
    rgb: np.ndarray  # (H, W, 3) uint8: the poisoned image
    box: Optional[tuple[int, int, int, int]] = None  # (x, y, w, h) of the trigger in rgb's pixels; None: image-wide
    parts: Optional[dict[str, Any]] = None  # what a composed image was made of (kind-specific, into the manifest)


class TriggerKind:
    """Base class; subclasses set the attributes below and implement train / val / record."""

    name: str = ""
    Config: Optional[type] = None  # the kind's own spec section (trigger.<name>), or None
    boxed: bool = True
    adds: bool = False
    stored_resolution: bool = False

    def __init__(self, spec, source, target: Optional[int]):
        """Prepare what every sample needs (patterns, reference objects); runs once, in the main process.
        `spec` is the whole PoisonSpec, `source` the opened image source, `target` the target class index."""
        self.spec = spec

    @classmethod
    def check(cls, spec) -> None:
        """Validate the kind's settings in `spec` (a PoisonSpec); raise ConfigError naming the field."""

    def fits(self, w: int, h: int) -> bool:
        """Whether a source training image of w x h px can carry the trigger (others are not candidates)."""
        return True

    def train(self, rgb: Optional[np.ndarray], rng: np.random.Generator, slot: int) -> Made:
        """A poisoned training image. `slot`: its position in the selection order (0, 1, ...)."""
        raise NotImplementedError

    def val(self, rgb: np.ndarray, rng: np.random.Generator) -> Made:
        """A val_poisoned image, the way the attack's paper tests it."""
        raise NotImplementedError

    def record(self) -> dict:
        """The manifest's `trigger` entry: at least kind, summary, evaluation and sha256 (of the pattern)."""
        raise NotImplementedError

    def summary(self) -> str:
        """One line for `fastbd inspect` and the build log."""
        return self.name

    def evaluation(self) -> str:
        """How val_poisoned images carry the trigger (the attack's own test), for reports."""
        return ""


def channel_hash(*arrays: np.ndarray) -> str:
    import hashlib
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
