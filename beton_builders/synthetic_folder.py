"""Materialise the synthetic dataset as an ImageFolder tree of JPEG files (train/<class>/*.jpg, val/...).

Used by the build benchmark (both implementations then read the same files from disk) and by anyone
who wants to look at the images or feed them to another tool. Written atomically: a temporary folder
renamed into place (files.staged_folder).
"""

from __future__ import annotations

from pathlib import Path

from .build import mp_context
from .files import staged_folder
from .host import cores
from .sources import SyntheticSource
from .spec import SourceSpec, SyntheticSpec


def _write_one(args) -> None:
    src, key, path = args
    Path(path).write_bytes(src.read(key))


def write_imagefolder(syn: SyntheticSpec, out: str | Path, force: bool = False, workers: int = 0) -> int:
    out = Path(out).absolute()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    src = SyntheticSource.open(SourceSpec(kind="synthetic", synthetic=syn))
    with staged_folder(out) as tmp:
        jobs = []
        for split in ("train", "val"):
            for name in src.classes:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
            for key, label in src.items(split):
                jobs.append((src, key, str(tmp / split / src.classes[label] / f"{key.rsplit('/', 1)[1]}.jpg")))
        with mp_context().Pool(workers or cores()) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=64):
                pass
    return len(jobs)
