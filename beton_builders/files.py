"""Writing files and folders so that no reader ever sees half of one: the project's one atomic-write helper.

A file is written under a temporary name beside its final one, flushed to disk, and renamed over it
(`os.replace` is atomic on POSIX); a failed write leaves no temporary behind. The file is created like
any other (mode 0666 minus the umask), so results stay readable by the other users of a cluster. A folder
is filled under a hidden temporary name and swapped into place the same way. The compiler and the
training side both write through here (the compiler may import nothing of fastbd/, so it lives here).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary name next to `path` (its folder is created), then rename it over
    `path`. `write` must create the file itself (Path.write_bytes, torch.save, savefig(..., format=...))."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_json(path: str | Path, obj) -> Path:
    """Indented JSON with a final newline (the manifest, status and plan files); `str` for other types."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def save_npy(path: str | Path, array) -> Path:
    """A .npy file (np.save would append `.npy` to the temporary name, so it goes through bytes)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield a new hidden folder beside `out` to fill; when the block ends without error it replaces `out`
    (an existing `out` is moved aside first and deleted after), on an error it is deleted. Leftovers of
    an interrupted earlier attempt at the same `out` are cleared first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
