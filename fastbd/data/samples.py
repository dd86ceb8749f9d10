"""Random access to a build's samples through its DALI tar shards, and the per-epoch sample order.

The tar shards hold the same encoded bytes as the .beton; the torch and dali backends read them by
byte offset (found once by walking the 512-byte tar headers), so every backend can take the same
index list (a poison rate's subset, from the manifest) and the same per-rank, per-epoch order.
"""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

import numpy as np

from beton_builders.dali_writer import ShardFiles
from beton_builders.manifest import load_manifest, training_set, verify_files


class TarSamples:
    """Encoded image bytes and labels of one split, by .beton index."""

    def __init__(self, folder: str | Path, split: str):
        self.folder = Path(folder)
        shards = sorted((self.folder / "dali").glob(f"{split}-*.tar"))
        if not shards:
            raise FileNotFoundError(f"{self.folder / 'dali'}: no {split}-*.tar shards; is this a build-beton folder?")
        self.shards = [str(s) for s in shards]
        offs, sizes, shard_of, labels, self.raw = [], [], [], [], False
        for k, s in enumerate(self.shards):
            for name, off, size, data in _walk(s):
                ext = name.split(".", 1)[1]
                if ext in ("jpg", "rgb"):
                    self.raw = ext == "rgb"
                    offs.append(off), sizes.append(size), shard_of.append(k)
                elif ext == "cls":
                    labels.append(struct.unpack("<i", data)[0])
        self.offset = np.asarray(offs, np.int64)
        self.size = np.asarray(sizes, np.int64)
        self.shard = np.asarray(shard_of, np.int64)
        self.label = np.asarray(labels, np.int64)
        self._files = ShardFiles(self.shards)

    def __len__(self) -> int:
        return len(self.offset)

    def read(self, i: int) -> bytes:
        return self._files.read(int(self.shard[i]), int(self.offset[i]), int(self.size[i]))


def _walk(path: str):
    """(member name, data offset, size, data if small) for each member: headers only, data skipped."""
    with open(path, "rb") as f:
        while True:
            hdr = f.read(tarfile.BLOCKSIZE)
            if len(hdr) < tarfile.BLOCKSIZE or hdr == tarfile.NUL * tarfile.BLOCKSIZE:
                return
            info = tarfile.TarInfo.frombuf(hdr, "utf-8", "surrogateescape")
            off = f.tell()
            data = f.read(info.size) if info.size <= 16 else None
            f.seek(off + info.size + (-info.size % tarfile.BLOCKSIZE))
            yield info.name, off, info.size, data


def dataset_indices(folder: str | Path, rate: float | None, check: bool = True,
                    clean_fraction: float | None = None, seed: int = 0,
                    indices: str | Path | None = None) -> tuple[dict, np.ndarray]:
    """The manifest and the training index list (manifest.training_set: a poison `rate`'s, None: the largest
    built, with `clean_fraction` the distillation clean subset, or an `indices` file such as a defense's
    filtered set), after checking the files' sha256."""
    m = load_manifest(folder)
    if check:
        bad = verify_files(folder, m)
        if bad:
            raise ValueError(f"{folder}: files differ from manifest.json (sha256): {bad}; rebuild, or set "
                             "data.verify_files=false to train anyway")
    return m, training_set(m, rate, clean_fraction, seed, indices)


def epoch_order(indices: np.ndarray, seed: int, epoch: int, rank: int, world: int, batch: int,
                drop_last: bool, shuffle: bool = True) -> np.ndarray:
    """This rank's samples for one epoch: a seeded global permutation, cut to whole global batches,
    dealt round-robin by rank (so ranks see disjoint samples and equal batch counts)."""
    order = np.random.default_rng([seed, epoch]).permutation(indices) if shuffle else np.asarray(indices)
    gbatch = batch * world
    n = (len(order) // gbatch) * gbatch if drop_last else len(order)
    return order[:n][rank::world]


class EpochOrdered:
    """Shared by the torch and dali backends: the per-rank, per-epoch sample order and the batch count."""

    def _init_order(self, indices, batch: int, seed: int, rank: int, world: int, drop_last: bool,
                    shuffle: bool) -> None:
        self.indices = np.asarray(indices, np.int64)
        self.batch, self.seed, self.rank, self.world = int(batch), seed, rank, world
        self.drop_last, self.shuffle, self.epoch = drop_last, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        return epoch_order(self.indices, self.seed, self.epoch, self.rank, self.world, self.batch,
                           self.drop_last, self.shuffle)

    def _num_batches(self, n: int) -> int:
        return n // self.batch if self.drop_last else -(-n // self.batch)

    def __len__(self) -> int:
        return self._num_batches(len(self._order()))
