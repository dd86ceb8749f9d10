"""Show what a build made: counts, rates, storage settings, a file check, and a preview image.

    fastbd inspect out/demo        (writes out/demo/preview.png: poisoned training images, boxes drawn)
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .files import atomic_write
from .manifest import attack, load_manifest, verify_files


def summary(folder: str | Path, check: bool = True) -> str:
    return checked_summary(folder, check)[0]


def checked_summary(folder: str | Path, check: bool = True) -> tuple[str, list[str]]:
    """(the summary text, the files whose sha256 no longer matches the manifest). Loading the manifest
    checks its self hash and index lists (a ManifestError names what is wrong)."""
    m = load_manifest(folder)
    c, st, spec = m["counts"], m["storage"], m["spec"]
    tgt, a = m["target"], attack(m)
    aim = f"targeted at {tgt['name']!r} (index {tgt['index']})" if tgt else "untargeted"
    lines = [
        f"{folder}: {spec['name']!r}, seed {m['seed']}, fastbd {m['fastbd_version']}",
        f"  source      {m['source']['kind']}, {len(m['source']['classes'])} classes, "
        f"{m['source']['num_train']} train / {m['source']['num_val']} val, fingerprint {m['source']['fingerprint'][:16]}",
        f"  attack      {aim}; {a['summary']}",
        f"  storage     max {st['max_resolution']} px, {st['write_mode']} q{st['jpeg_quality']}, "
        + (f"val_poisoned = resize {st['val_resize']} + crop {st['val_crop']}" if st['val_resize']
           else "val_poisoned = full images"),
        f"  train.beton {c['train_total']} samples = {c['train_clean']} clean + {c['train_poisoned']} "
        + ("composed poisoned images (added to the clean ones at every rate)" if _added(m) else "poisoned copies"),
    ]
    for e in m["rates"]:
        lines.append(f"    rate {e['rate']:g} ({e['mode']}): {e['count']} poisoned, indices "
                     f"{_span(e['poisoned_indices'])}")
    lines += [f"  val.beton   {c['val']} samples",
              f"  val_poisoned.beton {c['val_poisoned']} samples ({c['val_poisoned_nontarget']} non-target): "
              f"{a['evaluation']}",
              f"  skipped     {c['skipped']} unreadable source images",
              f"  manifest    {m['schema']}, " + (f"self hash {m['self_sha256'][:16]} matches, clean part "
                                                 f"{m['clean_sha256'][:16]}" if m.get("self_sha256")
                                                 else "no self hash (rebuild to add one)")]
    bad: list[str] = []
    if check:
        bad = verify_files(folder, m)
        lines.append(f"  files       {len(m['files'])} checked against sha256: "
                     + ("all match" if not bad else f"MISMATCH in {bad}"))
    return "\n".join(lines), bad


def _added(m: dict) -> bool:
    return any(p["clean_index"] is None for p in m["poisoned"])


def _span(idx: list[int]) -> str:
    return "none" if not idx else f"{idx[0]}..{idx[-1]}"


def read_tar_sample(folder: Path, split: str, index: int, shard_size: int) -> bytes:
    shard = folder / "dali" / f"{split}-{index // shard_size:05d}.tar"
    with tarfile.open(shard) as tf:
        return tf.extractfile(f"{index:08d}.jpg").read()


def preview(folder: str | Path, n: int = 8, out: str | Path | None = None) -> Path:
    """Grid: top row poisoned training images (trigger box in red; a composed image's object in green),
    bottom row triggered val images. An image-wide trigger (CTRL) has no box, so a third row shows each
    poisoned image's difference from its clean copy, amplified, where there is a clean copy."""
    folder = Path(folder)
    m = load_manifest(folder)
    if m["storage"]["write_mode"] != "jpg":
        raise ValueError("preview reads the JPEG shards; this build stored raw pixels")
    shard = m["storage"]["shard_size"]
    shown = m["poisoned"][:n]

    def tile(split: str, idx: int, box, parts=None) -> Image.Image:
        im = Image.open(io.BytesIO(read_tar_sample(folder, split, idx, shard))).convert("RGB")
        draw = ImageDraw.Draw(im)
        if parts and parts.get("object_box"):
            s = im.width / parts["size"][0]
            x, y, w, h = (round(v * s) for v in parts["object_box"])
            draw.rectangle((x, y, x + w - 1, y + h - 1), outline=(0, 200, 0))
        if box is not None:
            x, y, w, h = box
            draw.rectangle((x - 1, y - 1, x + w, y + h), outline=(255, 0, 0))
        return im

    tiles = [[tile("train", p["index"], p["box"], p.get("parts")) for p in shown],
             [tile("val_poisoned", i, b) for i, b in enumerate(m["val_poisoned"]["box"][:n])]]
    if any(p["box"] is None and p["clean_index"] is not None for p in shown):
        tiles.append([_difference(folder, shard, p) for p in shown if p["clean_index"] is not None])
    tiles = [[im.resize((128, max(1, int(128 * im.height / im.width)))) for im in row] for row in tiles]
    H = sum(max((i.height for i in r), default=0) + 4 for r in tiles)
    W = max(len(r) for r in tiles) * 130
    canvas = Image.new("RGB", (max(W, 1), max(H, 1)), (255, 255, 255))
    y = 0
    for r in tiles:
        for k, im in enumerate(r):
            canvas.paste(im, (k * 130, y))
        y += max((i.height for i in r), default=0) + 4
    out = Path(out) if out else folder / "preview.png"
    return atomic_write(out, lambda p: canvas.save(p, format="PNG"))


def _difference(folder: Path, shard: int, p: dict, gain: float = 8.0) -> Image.Image:
    """|poisoned - clean| x gain: makes an invisible image-wide trigger visible."""
    a = to_array(read_tar_sample(folder, "train", p["index"], shard)).astype(np.float32)
    b = to_array(read_tar_sample(folder, "train", p["clean_index"], shard)).astype(np.float32)
    return Image.fromarray(np.clip(np.abs(a - b) * gain, 0, 255).astype(np.uint8))


def to_array(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
