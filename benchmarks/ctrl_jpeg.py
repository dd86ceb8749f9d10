"""How much of CTRL's frequency trigger each storage setting keeps.

CTRL (beton_builders/triggers/ctrl.py) adds a fixed magnitude to chosen DCT coefficients of the chroma
channels; a build then stores the image as JPEG (4:2:0 or 4:4:4 chroma, a quality) or raw. This script
poisons synthetic images the way a build does, encodes each poisoned image and its clean original with
every setting, decodes both, and reports the magnitude left in each (channel, position) coefficient
(mean over windows and images; the build's spec had added `--magnitude`).

    python benchmarks/ctrl_jpeg.py [--images 20] [--size 224] [--magnitude 50] [--out bench_out/ctrl_jpeg.md]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beton_builders import synthetic  # noqa: E402
from beton_builders.triggers.ctrl import SPACES, CtrlConfig, apply_long_way, block_dct  # noqa: E402

SETTINGS = [("raw", None, None), ("jpg 4:4:4 q100", 100, 0), ("jpg 4:4:4 q95", 95, 0), ("jpg 4:4:4 q90", 90, 0),
            ("jpg 4:2:0 q95", 95, 2), ("jpg 4:2:0 q90", 90, 2)]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--images", type=int, default=20, help="synthetic images (10 classes, interleaved)")
    ap.add_argument("--size", type=int, default=224, help="image side in px (a multiple of the 32-px window keeps every pixel in a window)")
    ap.add_argument("--magnitude", type=float, default=50.0, help="CTRL magnitude added (the paper poisons at 50, tests at 100)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    return ap


def coefficients(rgb: np.ndarray, c: CtrlConfig) -> np.ndarray:
    x = rgb.astype(np.float64) @ np.asarray(SPACES[c.space]).T
    h, w = (s - s % c.window for s in x.shape[:2])
    return np.array([[block_dct(x[:h, :w, ch], c.window)[u::c.window, v::c.window].mean() for u, v in c.positions]
                     for ch in c.channels])


def stored(rgb: np.ndarray, quality: int | None, subsampling: int | None) -> np.ndarray:
    if quality is None:
        return rgb
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(buf).convert("RGB"))


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    c = CtrlConfig()
    kept = {name: [] for name, _, _ in SETTINGS}
    for i in range(args.images):
        img = synthetic.render(0, "train", i, i % 10, 10, args.size, args.size, 0.0)
        poisoned = apply_long_way(img, c, args.magnitude)
        for name, q, sub in SETTINGS:
            kept[name].append(coefficients(stored(poisoned, q, sub), c) - coefficients(stored(img, q, sub), c))
    cols = [f"{'YUV'[ch]} ({u}, {v})" for ch in c.channels for u, v in c.positions]
    lines = [f"| storage | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    for name, vals in kept.items():
        v = np.mean(vals, 0).ravel()
        lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in v) + " |")
    table = "\n".join(lines)
    print(f"magnitude {args.magnitude:g} added; left after storage (mean over {args.images} images of "
          f"{args.size} px):\n{table}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
