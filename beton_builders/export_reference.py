"""A build in the reference code's layout: image folders plus "path label" file lists.

    fastbd export-reference out/demo --out out/demo_ref [--rate 0.5 ...] [--patch-params] [--force]

With it the reference code (UMBCvision/SSL-Backdoor) trains and evaluates on exactly fastbd's images,
for a side-by-side check. Writes
  DIR/train/<class>/<index>.jpg           every clean training image (train.beton indices 0..N-1)
  DIR/train_poisoned/<class>/<index>.jpg  the poisoned copies the exported rates use (indices N..)
  DIR/val/<class>/<index>.jpg             clean validation
  DIR/val_poisoned/<class>/<index>.jpg    triggered validation (resized and cropped, as the reference's)
  DIR/train_clean_filelist.txt            the clean training set (the reference's linear-probe train list)
  DIR/train_rate<r>_filelist.txt          the training set at rate r, exactly train_indices(manifest, r)
                                          (count mode: train_count<n>_filelist.txt)
  DIR/val_filelist.txt, DIR/val_poisoned_filelist.txt
  DIR/export.json                         the build, its manifest's sha256, the rates and the lists
Each image file holds the build's bytes exactly: the JPEG from the tar shard (the .beton holds the same
bytes), or, for a raw-mode build, its pixels as a PNG. Lines are "path label" with absolute paths, as
generate_poison.py writes them; the reference's loaders (moco/moco/dataset.py and byol/datasets/
imagenet.py FileListDataset: line.split()[0] is the path, int(line.split()[1]) the label; jigsaw:
line.split(" ")[0]) split on whitespace, so no path may contain any. --patch-params appends the box
"x y w h" in source pixels to each poisoned line, the layout generate_poison.py's patch_params intends.
Like a build, the export is written under a hidden temporary folder and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .files import staged_folder
from .manifest import load_manifest, rate_entry, train_indices, verify_files

SPLITS = ("train", "val", "val_poisoned")


class ExportError(ValueError):
    """The build cannot be exported as asked; the message names the file, rate or path."""


def _folder_name(name: str) -> str:
    return re.sub(r"[\s/\\]+", "_", name) or "_"


def _samples(build: Path, manifest: dict, split: str) -> Iterator[tuple[int, int, bytes, tuple | None]]:
    """(index, label, payload, raw shape or None) of every sample of a split, in index order, from its tar shards."""
    shards = sorted(f for f in manifest["files"] if f.startswith(f"dali/{split}-") and f.endswith(".tar"))
    for shard in shards:
        with tarfile.open(build / shard, "r|") as tf:
            cur: dict[str, bytes] = {}
            for mem in tf:
                ext = mem.name.rsplit(".", 1)[1]
                cur[ext] = tf.extractfile(mem).read()
                if ext == "idx":  # the last member of each sample
                    shape = tuple(np.frombuffer(cur["shape"], "<i4")) if "shape" in cur else None
                    payload = cur.get("jpg", cur.get("rgb"))
                    yield (int(np.frombuffer(cur["idx"], "<i4")[0]), int(np.frombuffer(cur["cls"], "<i4")[0]),
                           payload, shape)
                    cur = {}


def _write_image(path: Path, payload: bytes, shape: tuple | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if shape is None:
        path.write_bytes(payload)
    else:
        Image.fromarray(np.frombuffer(payload, np.uint8).reshape(shape)).save(path, format="PNG")


def _list_name(entry: dict) -> str:
    if entry["mode"] == "count":
        return f"train_count{int(entry['rate'])}_filelist.txt"
    return f"train_rate{entry['rate']:g}_filelist.txt"


def export_reference(build: str | Path, out: str | Path, rates: list[float] | None = None,
                     patch_params: bool = False, force: bool = False,
                     log: Callable[[str], None] = lambda s: None) -> dict:
    """Export `build` into `out`; returns what export.json records. Raises ExportError on bad input."""
    build, out = Path(build).absolute(), Path(out).absolute()
    try:
        m = load_manifest(build)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from None
    if any(ch.isspace() for ch in str(out)):
        raise ExportError(f"--out {out}: the path contains whitespace, which the reference's file-list loaders split on")
    if out.exists() and not force:
        raise ExportError(f"output {out} already exists; pass --force to replace it")
    bad = verify_files(build, m)
    if bad:
        raise ExportError(f"{build}: {bad} no longer match the manifest's sha256; refusing to export them")
    try:
        entries = [rate_entry(m, r) for r in (rates if rates else [e["rate"] for e in m["rates"]]) if r]
    except KeyError as e:
        raise ExportError(str(e.args[0])) from None
    if patch_params and any(p["box_source"] is None for p in m["poisoned"]):
        raise ExportError(f"--patch-params: {build}'s trigger ({m['trigger']['kind']}) has no patch box in "
                          "every poisoned image; export without it")
    n_clean = m["counts"]["train_clean"]
    n_train = n_clean + max((e["count"] for e in entries), default=0)
    classes = [_folder_name(c) for c in m["source"]["classes"]]
    ext = ".jpg" if m["storage"]["write_mode"] == "jpg" else ".png"
    boxes = {p["index"]: p["box_source"] for p in m["poisoned"]}

    with staged_folder(out) as tmp:  # nothing under the final name until the whole export is written
        lines: dict[str, dict[int, str]] = {}
        for split in SPLITS:
            lines[split] = {}
            for idx, label, payload, shape in _samples(build, m, split):
                if split == "train" and idx >= n_train:
                    break
                folder = "train_poisoned" if split == "train" and idx >= n_clean else split
                rel = Path(folder) / classes[label] / f"{idx:08d}{ext}"
                _write_image(tmp / rel, payload, shape)
                line = f"{out / rel} {label}"
                if patch_params and folder == "train_poisoned":
                    line += " " + " ".join(str(v) for v in boxes[idx])
                lines[split][idx] = line
            log(f"{split}: {len(lines[split])} images")
        lists = {"train_clean_filelist.txt": [lines["train"][i] for i in range(n_clean)],
                 "val_filelist.txt": [lines["val"][i] for i in sorted(lines["val"])],
                 "val_poisoned_filelist.txt": [lines["val_poisoned"][i] for i in sorted(lines["val_poisoned"])]}
        for e in entries:
            lists[_list_name(e)] = [lines["train"][int(i)] for i in train_indices(m, e["rate"])]
        for name, ls in lists.items():
            (tmp / name).write_text("".join(f"{ln}\n" for ln in ls))
        record = {"build": str(build),
                  "manifest_sha256": hashlib.sha256((build / "manifest.json").read_bytes()).hexdigest(),
                  "rates": [{"rate": e["rate"], "mode": e["mode"], "count": e["count"], "list": _list_name(e)}
                            for e in entries],
                  "lists": {name: len(ls) for name, ls in lists.items()}, "patch_params": patch_params}
        (tmp / "export.json").write_text(json.dumps(record, indent=1) + "\n")
    return record

