"""manifest.json: what a build made, from what, and exactly which samples carry a trigger.

Schema "fastbd.manifest/1" (keys in this order):
  fastbd_version, spec (fully resolved), seed,
  source      {kind, fingerprint (sha256 over every source file's key, label and sha256), num_train,
               num_val, classes}
  target      {index, name} or null (untargeted)
  trigger     {kind, width, height, sha256 of its pixels and mask (then of the val_alpha variant, if any)}
  storage     the settings that change what the model sees (resolution, codec, quality, filters)
  counts      train_clean, train_poisoned, train_total, val, val_poisoned, val_poisoned_nontarget, skipped,
              passthrough
  rates       [{rate, mode, count, poisoned_indices, replaced_indices}]: the training index list for a
              rate is every clean index except `replaced_indices`, plus `poisoned_indices`
              (use `train_indices(manifest, rate)`)
  poisoned    [{index, clean_index, source_index, key, label, box, box_source}] in selection order;
              box = [x, y, w, h] in stored-image pixels, box_source in the full-resolution source;
              with trigger.location=multiple, the box holding all 9 copies
  val_poisoned {source_index, label, is_target, box} lists, one entry per val_poisoned.beton sample
  skipped     [{split, source_index, key, error}]
  files       {relative path: sha256} for every output file but the manifest itself
No timestamps or host names: the same spec, source and seed give a byte-identical manifest.
Build timings go to build_log.json, which is not hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

SCHEMA = "fastbd.manifest/1"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {folder} the output of `fastbd build-beton`?")
    m = json.loads(path.read_text())
    if m.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {m.get('schema')!r}, this fastbd reads {SCHEMA!r}")
    return m


def rate_entry(manifest: dict, rate: float) -> dict:
    for e in manifest["rates"]:
        if abs(e["rate"] - float(rate)) < 1e-12:
            return e
    raise KeyError(f"rate {rate} not in this build; built rates: {[e['rate'] for e in manifest['rates']]}")


def train_indices(manifest: dict, rate: float | None) -> np.ndarray:
    """Indices into train.beton forming the training set at `rate` (None or 0 -> all clean)."""
    n_clean = manifest["counts"]["train_clean"]
    if not rate:
        return np.arange(n_clean, dtype=np.int64)
    e = rate_entry(manifest, rate)
    keep = np.ones(n_clean, bool)
    keep[np.asarray(e["replaced_indices"], np.int64)] = False
    return np.concatenate([np.flatnonzero(keep), np.asarray(e["poisoned_indices"], np.int64)])


def verify_files(folder: str | Path, manifest: dict | None = None) -> list[str]:
    """Names of output files whose sha256 no longer matches the manifest (empty list: all good)."""
    folder = Path(folder)
    manifest = manifest or load_manifest(folder)
    bad = []
    for rel, digest in manifest["files"].items():
        p = folder / rel
        if not p.is_file() or sha256_file(p) != digest:
            bad.append(rel)
    return bad
