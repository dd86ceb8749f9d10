"""DALI-readable output: webdataset-style tar shards, `DIR/dali/<split>-NNNNN.tar`.

Each sample is three consecutive tar members sharing a key (`00000042`):
  `00000042.jpg`  the encoded image, byte-identical to the same sample in the .beton
                  (raw mode: `.rgb` with H*W*3 uint8 bytes plus `.shape`, int32 [H, W, 3]);
  `00000042.cls`  the label as one little-endian int32 (DALI: `dtypes=[types.INT32]`, no Python parsing);
  `00000042.idx`  the sample's index in the .beton, little-endian int32.
Read with the stock reader:
  fn.readers.webdataset(paths=sorted(glob("DIR/dali/train-*.tar")), ext=["jpg", "cls", "idx"],
                        dtypes=[types.UINT8, types.INT32, types.INT32])
Tars are plain USTAR with zeroed mtime/uid/gid, written in index order, so they are byte-reproducible.
"""

from __future__ import annotations

import os
import struct
import tarfile
from pathlib import Path

import numpy as np


class ShardFiles:
    """Random reads of byte ranges from a list of shard files, one open handle per shard and process,
    opened lazily: a forked or pickled DataLoader worker opens its own instead of sharing a file offset."""

    def __init__(self, paths: list[str]):
        self.paths, self._files, self._pid = list(paths), {}, os.getpid()

    def read(self, shard: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # inherited through fork: the parent's handles share its seek position
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")
        f.seek(offset)
        return f.read(size)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self):
        return {"paths": self.paths, "_files": {}, "_pid": -1}


class ShardWriter:
    """Appends samples to numbered tar shards and remembers where each payload's bytes lie."""

    def __init__(self, folder: Path, split: str, shard_size: int, raw: bool):
        self.folder, self.split, self.shard_size, self.raw = folder, split, shard_size, raw
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.tar: tarfile.TarFile | None = None
        self.shards: list[str] = []
        self.locations: list[tuple[int, int, int]] = []  # (shard, byte offset of payload, size)
        self._files: ShardFiles | None = None  # read side, opened once writing is done

    def _member(self, name: str, data: bytes) -> int:
        # What TarFile.addfile writes, minus its per-member copy and file-object plumbing (a third of
        # the main process's time on small images): a USTAR header block, the data, zero padding.
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
        info.uname = info.gname = ""
        header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        offset = self.tar.offset + len(header)
        pad = -len(data) % tarfile.BLOCKSIZE
        self.tar.fileobj.write(header + data + tarfile.NUL * pad)
        self.tar.offset = offset + len(data) + pad
        return offset

    def add(self, payload: bytes, label: int, height: int, width: int) -> int:
        """Write one sample; returns its index."""
        if self.count % self.shard_size == 0:
            self._roll()
        key = f"{self.count:08d}"
        ext = "rgb" if self.raw else "jpg"
        off = self._member(f"{key}.{ext}", payload)
        self.locations.append((len(self.shards) - 1, off, len(payload)))
        if self.raw:
            self._member(f"{key}.shape", np.array([height, width, 3], "<i4").tobytes())
        self._member(f"{key}.cls", struct.pack("<i", int(label)))
        self._member(f"{key}.idx", struct.pack("<i", self.count))
        self.count += 1
        return self.count - 1

    def _roll(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.tar"
        self.shards.append(name)
        self.tar = tarfile.open(self.folder / name, "w", format=tarfile.USTAR_FORMAT)

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def read(self, i: int) -> np.ndarray:
        """The payload bytes of sample i, read back from its shard (used to fill the .beton)."""
        if self._files is None:
            self._files = ShardFiles([str(self.folder / s) for s in self.shards])
        return np.frombuffer(self._files.read(*self.locations[i]), np.uint8)

    def close_readers(self) -> None:
        if self._files is not None:
            self._files.close()
            self._files = None
