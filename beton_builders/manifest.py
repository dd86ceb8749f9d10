"""manifest.json: what a build made, from what, and exactly which samples carry a trigger.

Schema "fastbd.manifest/2" (keys in this order; /1, written before attacks other than the patch existed, is
read too: it is /2 with every poisoned image a replacement with a box, and a shorter trigger entry):
  fastbd_version, spec (fully resolved), seed,
  source      {kind, fingerprint (sha256 over every source file's key, label and sha256), num_train,
               num_val, classes}
  target      {index, name} or null (untargeted)
  trigger     the kind's record (beton_builders/triggers/): {kind, width, height (of a patch, else null),
              sha256 of its pattern (a patch: pixels and mask, then the val_alpha variant's, if any),
              summary (one line), evaluation (how val_poisoned carries it, the attack's own test), and
              kind-specific entries: CTRL `params`; CorruptEncoder `references`, `supports`, `backgrounds`}
  storage     the settings that change what the model sees (resolution, codec, quality, filters)
  counts      train_clean, train_poisoned, train_total, val, val_poisoned, val_poisoned_nontarget, skipped,
              passthrough
  rates       [{rate, mode, count, poisoned_indices, replaced_indices}]: the training index list for a
              rate is every clean index except `replaced_indices`, plus `poisoned_indices`
              (use `train_indices(manifest, rate)`, or `training_set` for what a run trains on)
  poisoned    [{index, clean_index, source_index, key, label, box, box_source[, parts]}] in selection
              order; box = [x, y, w, h] in stored-image pixels, box_source in the full-resolution source
              (with trigger.location=multiple, the box holding all 9 copies; null for an image-wide
              trigger); an image composed and *added* rather than copied from a clean one (CorruptEncoder)
              has clean_index, source_index and key null, and `parts`: what it was made of
  val_poisoned {source_index, label, is_target, box} lists, one entry per val_poisoned.beton sample (box
              null for an image-wide trigger)
  skipped     [{split, source_index, key, error}]
  files       {relative path: sha256} for every output file but the manifest itself
No timestamps or host names: the same spec, source and seed give a byte-identical manifest.
This module owns the schema: whatever reads a manifest (loaders, eval, sweep, summary) goes through it.
Build timings go to build_log.json, which is not hashed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SCHEMA = "fastbd.manifest/2"
READS = ("fastbd.manifest/1", SCHEMA)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def built(folder: str | Path) -> bool:
    """Whether `folder` holds a finished build (its manifest is written last, atomically)."""
    return (Path(folder) / "manifest.json").is_file()


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {folder} the output of `fastbd build-beton`?")
    m = json.loads(path.read_text())
    if m.get("schema") not in READS:
        raise ValueError(f"{path}: schema {m.get('schema')!r}, this fastbd reads {' and '.join(map(repr, READS))}")
    return m


def attack(manifest: dict) -> dict:
    """{kind, summary, evaluation}: which attack a build carries and how its val_poisoned images test it
    (a /1 manifest: the patch, described from its entry)."""
    t = manifest["trigger"]
    if "evaluation" in t:
        return {"kind": t["kind"], "summary": t["summary"], "evaluation": t["evaluation"]}
    return {"kind": t["kind"], "summary": f"{t['kind']} patch {t['width']}x{t['height']} px",
            "evaluation": "the patch pasted"}


def rate_entry(manifest: dict, rate: float) -> dict:
    for e in manifest["rates"]:
        if abs(e["rate"] - float(rate)) < 1e-12:
            return e
    raise KeyError(f"rate {rate} not in this build; built rates: {[e['rate'] for e in manifest['rates']]}")


def poisoned_count(manifest: dict, rate: float) -> int:
    """How many training images carry the trigger at `rate` (0 for the clean control)."""
    return 0 if not rate else int(rate_entry(manifest, rate)["count"])


def clean_pool(manifest: dict) -> np.ndarray:
    """Indices into train.beton's clean part that were never poisoned at any rate, ascending: the images a
    probe label or a defense's clean subset may use, since their poisoned copy exists for some rate."""
    banned = np.zeros(manifest["counts"]["train_clean"], bool)
    banned[[p["clean_index"] for p in manifest["poisoned"] if p["clean_index"] is not None]] = True
    return np.flatnonzero(~banned)


def clean_subset(manifest: dict, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` of the clean training images (indices into train.beton) from the never-poisoned
    pool: the distillation defense's small clean set (Saha et al. 2022, Sec. 5)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.clean_fraction: {fraction} is outside (0, 1]")
    k = max(1, int(round(fraction * manifest["counts"]["train_clean"])))
    return np.sort(np.random.default_rng([seed, 0xC1EA]).permutation(clean_pool(manifest))[:k])


def training_set(manifest: dict, rate: float | None, clean_fraction: float | None = None,
                 seed: int = 0) -> np.ndarray:
    """The indices a training run reads: with `clean_fraction`, the distillation clean subset; otherwise the
    poison `rate`'s set (None: the largest rate built, 0: all clean)."""
    if clean_fraction is not None:
        return clean_subset(manifest, clean_fraction, seed)
    if rate is None:
        rate = max((e["rate"] for e in manifest["rates"]), default=0) or None
    return train_indices(manifest, rate)


def train_indices(manifest: dict, rate: float | None) -> np.ndarray:
    """Indices into train.beton forming the training set at `rate` (None or 0 -> all clean): the clean images
    but the ones the rate's poisoned copies replace, then the rate's poisoned images (added composites
    replace none)."""
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
