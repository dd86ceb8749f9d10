"""Which images get the trigger, where it goes, and the paste itself.

Selection is nested: one seeded permutation of the candidate pool, and rate k poisons its first
n_k entries, so the poisoned set of a smaller rate lies inside that of a larger one (a poison-rate
sweep then reads one compiled file). Counts follow the reference's `int(rate * n)`.
Placement follows generate_poison.py. `random` with range_of=box (its alpha_composite mode):
x ~ randint(int(W*min), int(W*max - w)), same for y, so the whole box lies in [min, max] of the image;
when that range is empty the box starts at int(W*min). range_of=centre (its paste and text modes):
x ~ randint(int(W*min - ax), int(W*max - ax)) with ax the anchor inside the box (w / 2; for text the
point the reference anchors with 'mm'), so the anchor lies in [min, max]. `center` puts the anchor at
int(W / 2); `multiple` pastes 9 copies, anchors at 0.25, 0.5 and 0.75 of each side, x outermost, as
the reference's loops do. Boxes are kept inside the image (the reference lets its paste and text
modes run over the edge of images narrower than about twice the trigger).
"""

from __future__ import annotations

import numpy as np

from .config import ConfigError

SELECT_STREAM = 0x5E1EC7  # RNG stream ids keep selection independent of placement
PLACE_STREAM = 0xB0C5


# Type hints name the spec's classes only in words: spec.py imports the trigger registry, which imports this
# module, so importing spec.py here would close an import cycle.

def rate_counts(attack, n_target: int, n_total: int) -> list[int]:
    """Poisoned images per rate of `attack` (AttackSpec), `int(rate * n)` as in the reference."""
    out = []
    for r in attack.rates:
        if attack.rate_mode == "count":
            out.append(int(r))
        elif attack.rate_mode == "target_fraction":
            out.append(int(r * n_target))
        else:
            out.append(int(r * n_total))
    return out


def rate_records(attack, counts: list[int]) -> list[dict]:
    """One record per rate, smallest count first: {rate, mode, count}."""
    return [{"rate": float(r), "mode": attack.rate_mode, "count": int(n)}
            for r, n in sorted(zip(attack.rates, counts), key=lambda t: t[1])]


def select_poison(labels: np.ndarray, eligible: np.ndarray, attack, target: int | None,
                  seed: int) -> tuple[np.ndarray, list[dict]]:
    """Positions (into `labels`) to poison, in selection order, and one record per rate.

    `eligible` masks out images that cannot carry the trigger (smaller than it)."""
    in_pool = (labels == target) if attack.targeted else np.ones(len(labels), bool)
    pool = np.flatnonzero(in_pool & eligible)
    counts = rate_counts(attack, int(in_pool.sum()), len(labels))
    for r, n in zip(attack.rates, counts):
        if n > len(pool):
            too_small = int((in_pool & ~eligible).sum())
            raise ConfigError(
                f"attack.rates: rate {float(r):g} ({attack.rate_mode}) asks for {n} poisoned images but only "
                f"{len(pool)} candidates exist" + (f" ({too_small} more are smaller than the trigger)" if too_small else ""))
    order = np.random.default_rng([seed, SELECT_STREAM]).permutation(pool)
    chosen = order[: max(counts)] if counts else order[:0]
    return chosen, rate_records(attack, counts)


GRID = (0.25, 0.5, 0.75)  # the reference's `multiple` anchors, fractions of each side


def place(rng: np.random.Generator, img_w: int, img_h: int, tw: int, th: int, t,
          lo: float, hi: float, anchor: tuple[float, float] | None = None,
          location: str | None = None) -> tuple[int, int]:
    """Top-left corner of the trigger box in an img_w x img_h image (t: the TriggerSpec, or anything with its
    `location` and `range_of`; location: default t.location)."""
    location = location or t.location
    ax, ay = anchor if anchor is not None else (tw / 2, th / 2)
    if location == "center":
        return _inside(int(img_w * 0.5 - ax), int(img_h * 0.5 - ay), img_w, img_h, tw, th)
    if location == "grid3x3":
        cell = int(rng.integers(9))
        cx, cy = (cell % 3 + 0.5) * img_w / 3, (cell // 3 + 0.5) * img_h / 3
        return _inside(int(cx - tw / 2), int(cy - th / 2), img_w, img_h, tw, th)
    if location == "multiple":
        raise ValueError("location=multiple places 9 copies; use place_all")
    if t.range_of == "centre":
        x0, y0 = int(img_w * lo - ax), int(img_h * lo - ay)
        x1, y1 = max(x0, int(img_w * hi - ax)), max(y0, int(img_h * hi - ay))
    else:
        x0, y0 = int(img_w * lo), int(img_h * lo)
        x1, y1 = max(x0, int(img_w * hi - tw)), max(y0, int(img_h * hi - th))
    x, y = int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1))
    return _inside(x, y, img_w, img_h, tw, th)


def place_all(rng: np.random.Generator, img_w: int, img_h: int, tw: int, th: int, t,
              lo: float, hi: float, anchor: tuple[float, float] | None = None,
              location: str | None = None) -> list[tuple[int, int]]:
    """Top-left corners of every copy of the trigger: 9 for `multiple`, else one."""
    location = location or t.location
    if location != "multiple":
        return [place(rng, img_w, img_h, tw, th, t, lo, hi, anchor, location)]
    ax, ay = anchor if anchor is not None else (tw / 2, th / 2)
    return [_inside(int(int(img_w * i) - ax), int(int(img_h * j) - ay), img_w, img_h, tw, th)
            for i in GRID for j in GRID]


def _inside(x: int, y: int, img_w: int, img_h: int, tw: int, th: int) -> tuple[int, int]:
    return max(0, min(x, img_w - tw)), max(0, min(y, img_h - th))


def union_box(spots: list[tuple[int, int]], tw: int, th: int) -> tuple[int, int, int, int]:
    """[x, y, w, h] of the region holding every copy (one copy: its own box)."""
    x0, y0 = min(x for x, _ in spots), min(y for _, y in spots)
    x1, y1 = max(x for x, _ in spots) + tw, max(y for _, y in spots) + th
    return x0, y0, x1 - x0, y1 - y0


def placement_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
    """Each sample's placement depends only on (seed, split, index): worker count cannot change it."""
    return np.random.default_rng([seed, PLACE_STREAM, split_code, index])


def paste(img: np.ndarray, trig, x: int, y: int) -> np.ndarray:
    """Paste `trig` (a triggers.Trigger: rgb, mask) in place on an (H, W, 3) uint8 array; alpha-blend where
    the mask is below 1."""
    tw, th = trig.size
    if trig.opaque:
        img[y:y + th, x:x + tw] = trig.rgb
        return img
    region = img[y:y + th, x:x + tw].astype(np.float32)
    m = trig.mask[..., None]
    img[y:y + th, x:x + tw] = np.clip(region * (1 - m) + trig.rgb.astype(np.float32) * m + 0.5, 0, 255).astype(np.uint8)
    return img
