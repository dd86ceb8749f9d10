"""Compile one poisoned experiment's data: .beton files, DALI tar shards and a manifest.

    fastbd build-beton --config configs/poison/demo.yaml --out out/demo
    python -c "from beton_builders import build, load_spec; build(load_spec('configs/poison/demo.yaml'), 'out/demo')"

Stages, all in one process pool (every core):
  1. clean training images          -> dali/train-*.tar (indices 0..N-1)
  2. selection (seeded, nested over rates) among the images that decoded and fit the trigger; a kind
     that composes its poisoned images (CorruptEncoder) selects nothing, it makes the largest rate's count
  3. poisoned images, in selection order, appended -> indices N..N+P-1
  4. clean validation                -> dali/val-*.tar
  5. every validation image resized, centre-cropped, triggered -> dali/val_poisoned-*.tar
  6. each split's .beton filled from the tar bytes (identical pixels for FFCV and DALI), manifest.
Everything is written under a hidden temporary folder beside the output and renamed into place at the
end, so an interrupted build leaves nothing under the final name, and a rerun starts clean.
Throughput: benchmarks/build_throughput.py (see README, "Benchmarks", for the numbers and hardware).
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import manifest as mf
from .config import ConfigError, UserError, to_dict
from .dali_writer import ShardWriter
from .ffcv_writer import write_beton
from .files import staged_folder, write_json
from .host import cores, fastbd_version
from .poison import rate_counts, rate_records, select_poison
from .process import RESIZE_FILTER, Result, Task, init_worker, run_chunk, stored_size
from .sources import open_source, resolve_class
from .spec import PoisonSpec, validate
from .triggers import TriggerKind, make_kind

CHUNK = 16  # samples per worker task: small enough to balance, large enough to amortise IPC


class BuildError(UserError, RuntimeError):
    """An image or output problem that stops the build; the message names the file."""


def mp_context():
    """fork on Linux: workers start in milliseconds and inherit the source and trigger. They only run
    PIL and numpy, never numba or torch, so forking after FFCV/numba were imported (numba warns about
    TBB then) is harmless. forkserver/spawn would re-import the caller's __main__ in every worker."""
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _log(msg: str) -> None:
    print(f"[build-beton] {msg}", file=sys.stderr, flush=True)


class _Runner:
    """Runs tasks in order through a pool (or inline with one worker) and streams results."""

    def __init__(self, spec: PoisonSpec, source, kind: TriggerKind, workers: int, log: Callable[[str], None]):
        self.workers, self.log = workers, log
        init_worker(spec, source, kind)
        self.pool = None
        if workers > 1:
            self.pool = mp_context().Pool(workers, initializer=init_worker, initargs=(spec, source, kind))

    def map(self, tasks: list[Task], what: str) -> Iterable[Result]:
        chunks = [tasks[i:i + CHUNK] for i in range(0, len(tasks), CHUNK)]
        it = self.pool.imap(run_chunk, chunks) if self.pool else map(run_chunk, chunks)
        t0, done, last = time.perf_counter(), 0, time.perf_counter()
        for results in it:
            yield from results
            done += len(results)
            now = time.perf_counter()
            if now - last > 5 or done == len(tasks):
                self.log(f"{what}: {done}/{len(tasks)} ({done / max(now - t0, 1e-9):.0f} img/s)")
                last = now

    def close(self) -> None:
        if self.pool:
            self.pool.close()
            self.pool.join()


class _Split:
    """Collects one split's accepted samples: shard locations, sizes and integer columns."""

    def __init__(self, folder: Path, name: str, spec: PoisonSpec, columns: tuple[str, ...]):
        self.name = name
        self.writer = ShardWriter(folder / "dali", name, spec.storage.shard_size, spec.storage.write_mode == "raw")
        self.sizes: list[tuple[int, int]] = []
        self.columns = {c: [] for c in columns}
        self.digest = hashlib.sha256()  # label, size and bytes of every sample so far (manifest clean_sha256)

    def add(self, r: Result, label: int, **cols: int) -> int:
        i = self.writer.add(r.payload, label, r.height, r.width)
        self.sizes.append((r.height, r.width))
        self.digest.update(f"{label} {r.height} {r.width} {hashlib.sha256(r.payload).hexdigest()}\n".encode())
        for c, v in dict(label=label, **cols).items():
            self.columns[c].append(v)
        return i

    def finish(self, folder: Path) -> None:
        self.writer.close()
        cols = {c: np.asarray(v, np.int64) for c, v in self.columns.items()}
        write_beton(folder / f"{self.name}.beton", self.writer, self.sizes, cols, self.writer.raw)
        self.writer.close_readers()


def _accept(r: Result, split: str, key: str, spec: PoisonSpec, skipped: list) -> bool:
    if r.error is None:
        return True
    if spec.storage.on_error == "fail":
        raise BuildError(f"{split} image {key}: {r.error} (set storage.on_error=skip to leave such images out)")
    skipped.append({"split": split, "source_index": r.index, "key": key, "error": r.error})
    return False


def build(spec: PoisonSpec, out: str | Path, force: bool = False,
          log: Callable[[str], None] = _log) -> dict:
    """Build into `out` (refused if it exists, unless force). Returns the manifest dict."""
    validate(spec)
    out = Path(out).absolute()
    if out.exists() and not force:
        raise BuildError(f"output {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise BuildError(f"output {out} exists and is not a folder")
    t0 = time.perf_counter()
    with staged_folder(out) as tmp:
        manifest, timings = _build_into(spec, tmp, log)
        manifest = mf.seal(manifest)  # self hash last; a manifest that contradicts itself is never written
        write_json(tmp / "manifest.json", manifest)
        timings["total_s"] = time.perf_counter() - t0
        write_json(tmp / "build_log.json", {"timings": timings, "workers": _workers(spec), "host": os.uname().nodename})
    log(f"wrote {out} ({manifest['counts']['train_total']} train, {manifest['counts']['val']} val, "
        f"{manifest['counts']['train_poisoned']} poisoned) in {timings['total_s']:.1f} s")
    return manifest


def _workers(spec: PoisonSpec) -> int:
    return spec.workers or cores()


def _build_into(spec: PoisonSpec, folder: Path, log) -> tuple[dict, dict]:
    source = open_source(spec.source)
    classes = source.classes
    target = resolve_class(classes, spec.attack.target) if spec.attack.targeted else None
    kind = make_kind(spec, source, target)
    log(f"trigger: {kind.summary()}")
    items = {s: source.items(s) for s in ("train", "val")}
    for s, its in items.items():
        if not its:
            raise ConfigError(f"source: the {s} split has no images")
    runner = _Runner(spec, source, kind, _workers(spec), log)
    # Importing FFCV costs ~4 CPU-seconds (numba); do it while the pool works.
    ffcv_import = threading.Thread(target=importlib.import_module, args=("ffcv.writer",), daemon=True)
    ffcv_import.start()
    timings: dict[str, float] = {}
    try:
        train, poisoned, rates, digests, skipped, passthrough = _build_train(spec, folder, items["train"], target,
                                                                             kind, runner, timings)
        val, val_meta, vdigests = _build_val(spec, folder, items["val"], target, runner, timings, skipped)
    finally:
        runner.close()
    t = time.perf_counter()
    ffcv_import.join()
    for split in (train, val["val"], val["val_poisoned"]):
        split.finish(folder)
    timings["beton_s"] = time.perf_counter() - t
    fingerprint = hashlib.sha256()
    for split, its, dg in (("train", items["train"], digests), ("val", items["val"], vdigests)):
        for (key, label), d in zip(its, dg):
            fingerprint.update(f"{split}\t{key}\t{label}\t{d}\n".encode())
    n_clean = len(train.sizes) - len(poisoned)
    manifest = {
        "schema": mf.SCHEMA,
        "fastbd_version": fastbd_version(),
        # `workers` changes speed, never bytes, so it is left out and the manifest stays identical.
        "spec": {k: v for k, v in to_dict(spec).items() if k != "workers"},
        "seed": spec.seed,
        "source": {"kind": spec.source.kind, "fingerprint": fingerprint.hexdigest(),
                   "num_train": len(items["train"]), "num_val": len(items["val"]), "classes": classes},
        "target": None if target is None else {"index": target, "name": classes[target]},
        "trigger": kind.record(),
        "storage": {**to_dict(spec.storage), "resize_filter": RESIZE_FILTER.name.lower(),
                    "resize_rule": "longest side <= max_resolution, ffcv truncation",
                    "jpeg": f"baseline, {spec.storage.chroma[0]}:{spec.storage.chroma[1]}:{spec.storage.chroma[2]}, "
                            "Pillow/libjpeg-turbo",
                    "val_transform": ("Resize(val_resize, bilinear) + CenterCrop(val_crop), then trigger"
                                      if spec.storage.val_resize else "none: trigger on the full image")},
        "counts": {"train_clean": n_clean, "train_poisoned": len(poisoned), "train_total": len(train.sizes),
                   "val": len(val["val"].sizes), "val_poisoned": len(val_meta["label"]),
                   # is_target is all 0 for an untargeted attack, so this is then every image
                   "val_poisoned_nontarget": len(val_meta["label"]) - sum(val_meta["is_target"]),
                   "skipped": len(skipped), "passthrough": passthrough},
        "rates": rates,
        "poisoned": poisoned,
        "val_poisoned": val_meta,
        "skipped": skipped,
        # the clean part's identity (manifest.same_data): clean training samples, then val
        "clean_sha256": hashlib.sha256(f"{train.clean_digest}\n{val['val'].digest.hexdigest()}".encode()).hexdigest(),
    }
    manifest["files"] = {str(p.relative_to(folder)): mf.sha256_file(p)
                         for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "build_log.json"}
    return manifest, timings


def _build_train(spec, folder, items, target, kind: TriggerKind, runner, timings):
    t = time.perf_counter()
    train = _Split(folder, "train", spec, ("label", "source_index", "poisoned"))
    skipped, digests, clean_index, src_sizes, passthrough = [], [""] * len(items), {}, {}, 0
    tasks = [Task("clean", "train", i, k) for i, (k, _) in enumerate(items)]
    for r in runner.map(tasks, "train (clean)"):
        digests[r.index] = r.digest
        key, label = items[r.index]
        if _accept(r, "train", key, spec, skipped):
            clean_index[r.index] = train.add(r, label, source_index=r.index, poisoned=0)
            src_sizes[r.index] = (r.src_w, r.src_h)
            passthrough += r.passthrough
    timings["train_clean_s"] = time.perf_counter() - t
    train.clean_digest = train.digest.hexdigest()  # before the poisoned copies are appended
    kept = np.array(sorted(clean_index), np.int64)
    labels = np.array([items[i][1] for i in kept], np.int64)
    if kind.adds:  # composed images: the largest rate's count of them, each its own slot
        n_target = int((labels == target).sum()) if target is not None else len(labels)
        counts = rate_counts(spec.attack, n_target, len(labels))
        rates = rate_records(spec.attack, counts)
        tasks = [Task("poison", "train", j, None, slot=j) for j in range(max(counts, default=0))]
    else:
        max_res = spec.storage.max_resolution
        size = (lambda i: stored_size(*src_sizes[i], max_res)) if kind.stored_resolution else src_sizes.__getitem__
        eligible = np.array([kind.fits(*size(i)) for i in kept], bool)
        chosen_pos, rates = select_poison(labels, eligible, spec.attack, target, spec.seed)
        tasks = [Task("poison", "train", int(i), items[i][0], slot=k) for k, i in enumerate(kept[chosen_pos])]
    t = time.perf_counter()
    poisoned = []
    for r in runner.map(tasks, "train (poisoned)"):
        if kind.adds:
            if r.error is not None:
                raise BuildError(f"poisoned image {r.index} ({kind.name}): {r.error}")
            idx = train.add(r, target, source_index=-1, poisoned=1)
            rec = {"index": idx, "clean_index": None, "source_index": None, "key": None, "label": target}
        else:
            key, label = items[r.index]
            if r.error is not None:  # it decoded cleanly a moment ago, so this is a real fault
                raise BuildError(f"train image {key}: poisoning failed: {r.error}")
            idx = train.add(r, label, source_index=r.index, poisoned=1)
            rec = {"index": idx, "clean_index": clean_index[r.index], "source_index": r.index, "key": key,
                   "label": label}
        rec.update(box=_box(r.box), box_source=_box(r.box_src))
        if r.parts is not None:
            rec["parts"] = r.parts
        poisoned.append(rec)
    timings["train_poison_s"] = time.perf_counter() - t
    for e in rates:
        e["poisoned_indices"] = [p["index"] for p in poisoned[: e["count"]]]
        e["replaced_indices"] = [p["clean_index"] for p in poisoned[: e["count"]] if p["clean_index"] is not None]
    return train, poisoned, rates, digests, skipped, passthrough


def _box(b) -> list | None:
    return None if b is None else list(b)


def _build_val(spec, folder, items, target, runner, timings, skipped):
    t = time.perf_counter()
    val = _Split(folder, "val", spec, ("label", "source_index"))
    vp = _Split(folder, "val_poisoned", spec, ("label", "source_index", "is_target"))
    digests, ok = [""] * len(items), []
    for r in runner.map([Task("clean", "val", i, k) for i, (k, _) in enumerate(items)], "val (clean)"):
        digests[r.index] = r.digest
        key, label = items[r.index]
        if _accept(r, "val", key, spec, skipped):
            val.add(r, label, source_index=r.index)
            ok.append(r.index)
    timings["val_clean_s"] = time.perf_counter() - t
    t = time.perf_counter()
    meta = {"source_index": [], "label": [], "is_target": [], "box": []}
    for r in runner.map([Task("valpoison", "val_poisoned", i, items[i][0]) for i in ok], "val (triggered)"):
        key, label = items[r.index]
        if r.error is not None:
            raise BuildError(f"val image {key}: poisoning failed: {r.error}")
        is_target = int(target is not None and label == target)
        vp.add(r, label, source_index=r.index, is_target=is_target)
        for k, v in (("source_index", r.index), ("label", label), ("is_target", is_target), ("box", _box(r.box))):
            meta[k].append(v)
    timings["val_poison_s"] = time.perf_counter() - t
    return {"val": val, "val_poisoned": vp}, meta, digests
