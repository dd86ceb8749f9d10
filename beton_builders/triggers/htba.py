"""The HTBA patch (Saha et al. 2022 use the Hidden-Trigger-Backdoor triggers 10, 12, 14, 16, 18): a seeded
grid of binary colours (each channel 0 or 255), upsampled smoothly (bilinear between the grid's cells)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .patch import PatchKind, Trigger, sized


def htba_pattern(seed: int, grid: int) -> Image.Image:
    """A seeded grid of binary colours (each channel 0 or 255), as in the Hidden-Trigger-Backdoor patches."""
    rng = np.random.default_rng([seed, grid])
    cells = (rng.integers(0, 2, size=(grid, grid, 3)) * 255).astype(np.uint8)
    return Image.fromarray(cells, "RGB")


class Htba(PatchKind):
    name = "htba"

    @classmethod
    def pattern(cls, t, width: int, alpha: float) -> Trigger:
        return sized(htba_pattern(t.seed, t.grid), None, width, alpha, Image.Resampling.BILINEAR)
