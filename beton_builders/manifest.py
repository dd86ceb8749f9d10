"""manifest.json: what a build made, from what, and exactly which samples carry a trigger.

Schema "fastbd.manifest/3" (keys in this order):
  schema, fastbd_version, spec (fully resolved), seed,
  source      {kind, fingerprint (sha256 over every source file's key, label and sha256), num_train,
               num_val, classes}
  target      {index, name} or null (untargeted)
  trigger     the kind's record (beton_builders/triggers/; new in /3 beyond the patch's first four): {kind,
              width, height (of a patch, else null), sha256 of its pattern (a patch: pixels and mask, then
              the val_alpha variant's, if any), summary (one line), evaluation (how val_poisoned carries it,
              the attack's own test), and kind-specific entries: CTRL `params`; CorruptEncoder
              `references`, `supports`, `backgrounds`}
  storage     the settings that change what the model sees (resolution, codec, quality, filters)
  counts      train_clean, train_poisoned, train_total, val, val_poisoned, val_poisoned_nontarget, skipped,
              passthrough
  rates       [{rate, mode, count, poisoned_indices, replaced_indices}]: the training index list for a
              rate is every clean index except `replaced_indices`, plus `poisoned_indices`
              (use `train_indices(manifest, rate)`, or `training_set` for what a run trains on)
  poisoned    [{index, clean_index, source_index, key, label, box, box_source[, parts]}] in selection
              order; box = [x, y, w, h] in stored-image pixels, box_source in the full-resolution source
              (with trigger.location=multiple, the box holding all 9 copies; new in /3: null for an
              image-wide trigger); new in /3: an image composed and *added* rather than copied from a
              clean one (CorruptEncoder) has clean_index, source_index and key null and replaces nothing,
              and `parts` says what it was made of
  val_poisoned {source_index, label, is_target, box} lists, one entry per val_poisoned.beton sample (box
              null for an image-wide trigger)
  skipped     [{split, source_index, key, error}]
  clean_sha256  (new in /2) the clean part's identity: sha256 over every clean training sample's and every
              val sample's label, stored size and stored bytes, in index order. It depends on the source and
              the storage settings only (not on the trigger, target, rates or seed), so builds of one source
              that differ in their attack share it: a model trained on clean images only has seen exactly
              the clean images of each of them (`same_data`).
  files       {relative path: sha256} for every output file but the manifest itself
  self_sha256 (new in /2) sha256 of the canonical JSON (sorted keys, no whitespace) of everything above:
              `load_manifest` refuses a manifest whose content no longer matches it (edited by hand).
No timestamps or host names: the same spec, source and seed give a byte-identical manifest.

Every reader (loaders, eval, distill, sweep, summary, export) goes through `load_manifest`, which checks
the self hash and the consistency of the index lists (`check_consistency`: counts agree, no index twice,
no clean image kept beside its own poisoned copy, each rate's lists the nested prefix of `poisoned`).
Manifests of schema "fastbd.manifest/2" (sealed like /3; every poisoned image a boxed copy of a clean one,
and the patch's shorter trigger entry) are read as they are; `attack` describes their patch.
Manifests of schema "fastbd.manifest/1" (builds made before the self hash) are still read, with an
UnsealedManifestWarning: they are checked for consistency, but a consistent edit cannot be detected and
their clean part has no identity; rebuild them to get both.
Build timings go to build_log.json, which is not hashed.

Index lists (`write_index_list` / `load_index_list`): a defense's filtered training set is FILE.npy (indices
into train.beton) with FILE.json beside it naming the build it came from (`build_id`: the self hash), the
rate whose training set it subsets, and the .npy's sha256; `training_set(indices=FILE.npy)` checks all three.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .config import UserError

SCHEMA = "fastbd.manifest/3"
SEALED = ("fastbd.manifest/2", SCHEMA)  # carry a self hash and the clean part's identity
UNSEALED = ("fastbd.manifest/1",)  # read with a warning: no self hash, no clean-part identity


class ManifestError(UserError, ValueError):
    """manifest.json cannot be trusted: not JSON, an unknown schema, edited after the build (its self hash
    no longer matches), or its index lists contradict each other. The message names the file."""


class UnsealedManifestWarning(UserWarning):
    """A manifest of an older schema, without a self hash: hand edits to it cannot all be detected."""


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
    """The manifest of a build, after checking its self hash (schema /2) and its consistency."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {folder} the output of `fastbd build-beton`?")
    try:
        m = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); rebuild the dataset") from None
    schema = m.get("schema") if isinstance(m, dict) else None
    if schema in SEALED:
        if m.get("self_sha256") != content_hash(m):
            raise ManifestError(f"{path}: its content no longer matches its self_sha256, so it was edited after "
                                "the build; rebuild the dataset (or restore the manifest)")
    elif schema in UNSEALED:
        warnings.warn(f"{path}: schema {schema} carries no self hash, so an edit to it cannot be detected; "
                      "rebuild the dataset to protect it", UnsealedManifestWarning, stacklevel=2)
    else:
        raise ManifestError(f"{path}: schema {schema!r}; this fastbd reads {', '.join(SEALED)} "
                            f"(and {', '.join(UNSEALED)})")
    check_consistency(m, path)
    return m


def attack(manifest: dict) -> dict:
    """{kind, summary, evaluation}: which attack a build carries and how its val_poisoned images test it
    (schemas /1 and /2: the patch, described from its entry)."""
    t = manifest["trigger"]
    if "evaluation" in t:
        return {"kind": t["kind"], "summary": t["summary"], "evaluation": t["evaluation"]}
    return {"kind": t["kind"], "summary": f"{t['kind']} patch {t['width']}x{t['height']} px",
            "evaluation": "the patch pasted"}


def originals(poisoned: list) -> list:
    """The clean originals `poisoned` entries replace, in order: added (composed) images replace none."""
    return [p["clean_index"] for p in poisoned if p["clean_index"] is not None]


def content_hash(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace), without `self_sha256`."""
    body = {k: v for k, v in manifest.items() if k != "self_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(manifest: dict) -> dict:
    """The manifest as a reader will see it (through JSON), checked, with its self hash added last."""
    m = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "self_sha256"}, default=str))
    check_consistency(m, "the manifest being written")
    m["self_sha256"] = content_hash(m)
    return m


def check_consistency(m: dict, where) -> None:
    """Raise ManifestError unless the counts and index lists agree with each other, as a build writes them:
    `poisoned` holds indices train_clean.. in order, each of a distinct clean image (or of none: an added
    composite); each rate poisons the first `count` of them (nested rates) and drops exactly their clean
    originals; no index appears twice."""
    def bad(msg: str) -> ManifestError:
        return ManifestError(f"{where}: {msg}; the index lists were edited or damaged, rebuild the dataset")
    try:
        c, poisoned, rates = m["counts"], m["poisoned"], m["rates"]
        n_clean, n_total = int(c["train_clean"]), int(c["train_total"])
        if n_total != n_clean + int(c["train_poisoned"]) or len(poisoned) != int(c["train_poisoned"]):
            raise bad(f"counts say {n_clean} clean + {c['train_poisoned']} poisoned = {n_total} training samples, "
                      f"and `poisoned` lists {len(poisoned)}")
        if [p["index"] for p in poisoned] != list(range(n_clean, n_total)):
            raise bad(f"`poisoned` does not list indices {n_clean}..{n_total - 1} in order")
        orig = originals(poisoned)
        if len(set(orig)) != len(orig) or not all(0 <= i < n_clean for i in orig):
            raise bad("`poisoned` names a clean image twice, or one outside the clean part")
        vp = m["val_poisoned"]
        if not len(vp["label"]) == len(vp["is_target"]) == len(vp["box"]) == int(c["val_poisoned"]):
            raise bad(f"val_poisoned lists do not all hold counts.val_poisoned = {c['val_poisoned']} entries")
        if int(c["val_poisoned_nontarget"]) != int(c["val_poisoned"]) - sum(vp["is_target"]):
            raise bad("counts.val_poisoned_nontarget disagrees with val_poisoned.is_target")
        if int(c["skipped"]) != len(m["skipped"]):
            raise bad("counts.skipped disagrees with the `skipped` list")
        last = 0
        for e in rates:
            _check_rate(e, poisoned, n_clean, n_total, bad)
            if e["count"] < last:
                raise bad(f"rate {e['rate']}: {e['count']} poisoned, fewer than a smaller rate's {last}")
            last = e["count"]
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(f"{where}: malformed ({type(e).__name__}: {e}); rebuild the dataset") from None


def _check_rate(e: dict, poisoned: list, n_clean: int, n_total: int, bad) -> None:
    r, k = e["rate"], int(e["count"])
    pi, ri = list(e["poisoned_indices"]), list(e["replaced_indices"])
    if not (len(pi) == k and len(ri) == len(originals(poisoned[:k]))):
        raise bad(f"rate {r}: count {k}, but {len(pi)} poisoned and {len(ri)} replaced indices")
    for name, idx in (("poisoned_indices", pi), ("replaced_indices", ri)):
        twice = sorted(i for i, n in Counter(idx).items() if n > 1)
        if twice:
            raise bad(f"rate {r}: {name} lists {twice[:5]} more than once")
    if not all(n_clean <= i < n_total for i in pi) or not all(0 <= i < n_clean for i in ri):
        raise bad(f"rate {r}: an index outside its part (poisoned copies are {n_clean}..{n_total - 1}, "
                  f"clean images 0..{n_clean - 1})")
    original, replaced = {p["index"]: p["clean_index"] for p in poisoned}, set(ri)
    kept = sorted(original[i] for i in pi if original[i] is not None and original[i] not in replaced)
    if kept:
        raise bad(f"rate {r}: clean image {kept[0]} is kept beside its own poisoned copy")
    if pi != [p["index"] for p in poisoned[:k]] or ri != originals(poisoned[:k]):
        raise bad(f"rate {r}: the lists are not the first {k} entries of `poisoned` (rates are nested)")


def rate_entry(manifest: dict, rate: float) -> dict:
    for e in manifest["rates"]:
        if abs(e["rate"] - float(rate)) < 1e-12:
            return e
    raise KeyError(f"rate {rate} not in this build; built rates: {[e['rate'] for e in manifest['rates']]}")


def poisoned_count(manifest: dict, rate: float) -> int:
    """How many training images carry the trigger at `rate` (0 for the clean control)."""
    return 0 if not rate else int(rate_entry(manifest, rate)["count"])


def poisoned_boxes(manifest: dict) -> dict[int, list]:
    """Every poisoned copy's train.beton index -> its trigger box [x, y, w, h] in stored pixels (with
    trigger.location=multiple, the box holding all 9 copies): the ground truth a detector is scored against."""
    return {int(p["index"]): list(p["box"]) for p in manifest["poisoned"]}


def clean_pool(manifest: dict) -> np.ndarray:
    """Indices into train.beton's clean part that were never poisoned at any rate, ascending: the images a
    probe label or a defense's clean subset may use, since their poisoned copy exists for some rate."""
    banned = np.zeros(manifest["counts"]["train_clean"], bool)
    banned[originals(manifest["poisoned"])] = True
    return np.flatnonzero(~banned)


def clean_subset(manifest: dict, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` of the clean training images (indices into train.beton) from the never-poisoned
    pool: the distillation defense's small clean set (Saha et al. 2022, Sec. 5)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.clean_fraction: {fraction} is outside (0, 1]")
    k = max(1, int(round(fraction * manifest["counts"]["train_clean"])))
    return np.sort(np.random.default_rng([seed, 0xC1EA]).permutation(clean_pool(manifest))[:k])


def resolve_rate(manifest: dict, rate: float | None) -> float:
    """`rate` as a run uses it: None is the largest rate built (0 when the build has none)."""
    return float(max((e["rate"] for e in manifest["rates"]), default=0) if rate is None else rate)


def training_set(manifest: dict, rate: float | None, clean_fraction: float | None = None,
                 seed: int = 0, indices: str | Path | None = None) -> np.ndarray:
    """The indices a training run reads: with `indices`, that index list (`load_index_list`: a defense's
    filtered set, checked against this build); with `clean_fraction`, the distillation clean subset;
    otherwise the poison `rate`'s set (None: the largest rate built, 0: all clean)."""
    if indices is not None:
        if clean_fraction is not None:
            raise ValueError(f"data.indices={indices} and data.clean_fraction={clean_fraction}: give one of them")
        return load_index_list(manifest, indices, rate)
    if clean_fraction is not None:
        return clean_subset(manifest, clean_fraction, seed)
    return train_indices(manifest, resolve_rate(manifest, rate) or None)


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


INDEX_LIST_SCHEMA = "fastbd.index_list/1"


def build_id(manifest: dict) -> str:
    """A build's identity for the files made from it: the manifest's self hash (schema /2), or the same hash
    of its content for a /1 manifest, which carries none."""
    return manifest.get("self_sha256") or content_hash(manifest)


def write_index_list(path: str | Path, indices, manifest: dict, rate: float | None, made_by: str,
                     **extra) -> Path:
    """Write an index list into train.beton (`FILE.npy`, int64, in the given order) and its record beside it
    (`FILE.json`: schema, the build it was made from, the poison rate whose training set it subsets, its
    count and the sha256 of the .npy bytes), so `training_set(indices=FILE.npy)` can check both later."""
    from .files import save_npy, write_json

    path = Path(path)
    arr = np.asarray(indices, np.int64)
    save_npy(path, arr)
    write_json(path.with_suffix(".json"), {
        "schema": INDEX_LIST_SCHEMA, "made_by": made_by, "build_id": build_id(manifest),
        "rate": resolve_rate(manifest, rate), "count": int(len(arr)), "npy_sha256": sha256_file(path), **extra})
    return path


def load_index_list(manifest: dict, path: str | Path, rate: float | None = None) -> np.ndarray:
    """The index list in `path` (written by `write_index_list`), after checking that it was made from this
    build (its record names this manifest's identity), that the .npy is the one recorded, and that it is a
    subset, without repeats, of the training set of its rate (which `rate`, if given, must equal). Any
    failure is a ManifestError naming the file."""
    path = Path(path)
    rec_path = path.with_suffix(".json")
    for p in (path, rec_path):
        if not p.is_file():
            raise FileNotFoundError(f"data.indices: {p} not found (an index list is FILE.npy with FILE.json "
                                    "beside it, as `fastbd defend` writes them)")
    try:
        rec = json.loads(rec_path.read_text())
        assert isinstance(rec, dict) and rec.get("schema") == INDEX_LIST_SCHEMA
    except (ValueError, UnicodeDecodeError, AssertionError):
        raise ManifestError(f"{rec_path}: not a {INDEX_LIST_SCHEMA} record") from None
    if rec.get("npy_sha256") != sha256_file(path):
        raise ManifestError(f"{path}: its sha256 is not the one {rec_path.name} records; the list was changed "
                            "after it was written")
    if rec.get("build_id") != build_id(manifest):
        raise ManifestError(f"{path}: made from another build (id {str(rec.get('build_id'))[:12]}), not from this "
                            f"one (id {build_id(manifest)[:12]}); an index list only applies to its own build")
    own = float(rec["rate"])
    if rate is not None and abs(float(rate) - own) > 1e-12:
        raise ManifestError(f"{path}: subsets the rate-{own:g} training set, but data.rate is {float(rate):g}")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ManifestError(f"{path}: not a readable .npy ({e})") from None
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ManifestError(f"{path}: not a 1-D integer index list (shape {arr.shape}, dtype {arr.dtype})")
    arr = arr.astype(np.int64)
    if len(np.unique(arr)) != len(arr):
        raise ManifestError(f"{path}: lists an index more than once")
    outside = np.setdiff1d(arr, train_indices(manifest, own or None))
    if len(outside):
        raise ManifestError(f"{path}: index {int(outside[0])} is not in the rate-{own:g} training set of this build")
    return arr


def index_list_record(path: str | Path) -> dict:
    """What a run records of the index list it trained on (meta.json `data.index_list`): its path and record."""
    path = Path(path)
    return {"path": str(path.resolve()), **json.loads(path.with_suffix(".json").read_text())}


def verify_files(folder: str | Path, manifest: dict | None = None, only=None) -> list[str]:
    """Names of output files whose sha256 no longer matches the manifest (empty list: all good). `only`:
    the relative paths to check (e.g. `split_files`: just the files a reader will read); None: all."""
    folder = Path(folder)
    manifest = manifest or load_manifest(folder)
    bad = []
    for rel, digest in manifest["files"].items():
        if only is not None and rel not in only:
            continue
        p = folder / rel
        if not p.is_file() or sha256_file(p) != digest:
            bad.append(rel)
    return bad


def split_files(manifest: dict, splits, formats=("beton", "tar")) -> set[str]:
    """The files of `splits` the manifest lists: their .beton (`SPLIT.beton`) and/or tar shards
    (`dali/SPLIT-NNNNN.tar`), for `verify_files(only=)`."""
    out = set()
    for rel in manifest["files"]:
        name = rel.rsplit("/", 1)[-1]
        if "beton" in formats and rel.endswith(".beton") and rel[:-len(".beton")] in splits:
            out.add(rel)
        if "tar" in formats and rel.startswith("dali/") and name.endswith(".tar") and name.rsplit("-", 1)[0] in splits:
            out.add(rel)
    return out


def same_data(record: dict | None, manifest: dict, manifest_sha256: str) -> str:
    """How the data a run trained on (its meta.json `data` record) relates to a build:
    "same build"      the build's manifest.json is byte for byte the one the run read;
    "same clean data" the run read clean images only (`trained_on: clean`: rate 0, or a clean subset with a
                      clean teacher) and this build's clean part has the same bytes (`clean_sha256`): e.g. a
                      sweep's shared clean control on another trigger/target pair's build of the same source;
    "different"       anything else, including a clean run against a build whose clean part is unknown
                      (schema /1) or differs; "unknown" when the run recorded nothing."""
    if not record or not record.get("manifest_sha256"):
        return "unknown"
    if record["manifest_sha256"] == manifest_sha256:
        return "same build"
    clean = manifest.get("clean_sha256")
    if record.get("trained_on") == "clean" and clean and record.get("clean_sha256") == clean:
        return "same clean data"
    return "different"
