"""FFCV output: a stock-readable .beton whose image bytes are exactly the ones in the DALI shards.

FFCV's RGBImageField re-encodes whatever it is given (cv2.imencode), which would make the .beton and
the DALI files hold different pixels. So the field instance gets an `encode` that stores our already
encoded payload as is; the field's type stays RGBImageField, so the file's header, metadata and
decoders are stock and `ffcv.loader.Loader` reads it unchanged.
One writer, in this process: FFCV's page allocator hands pages to whichever worker asks first, so
several workers would make the byte layout depend on scheduling, and copying bytes is cheap (the
parallel work, decode, paste and encode, happened before). `_InProcessWriter` runs FFCV's own worker
function inline instead of in a subprocess, which saves a process start and FFCV's 0.1 s polling.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import queue
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Prebuilt:
    payload: np.ndarray  # uint8 bytes
    height: int
    width: int
    raw: bool


def _encode_prebuilt(self, destination, item: Prebuilt, malloc) -> None:
    from ffcv.fields.rgb_image import IMAGE_MODES

    destination["mode"] = IMAGE_MODES["raw" if item.raw else "jpg"]
    destination["height"], destination["width"] = item.height, item.width
    destination["data_ptr"], storage = malloc(item.payload.nbytes)
    storage[:] = item.payload


class _Rows:
    """The indexable dataset FFCV's writer pulls from: one tuple per sample, image first."""

    def __init__(self, shard_writer, sizes, columns, raw):
        self.shards, self.sizes, self.columns, self.raw = shard_writer, sizes, columns, raw

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        img = Prebuilt(self.shards.read(i), int(h), int(w), self.raw)
        return (img, *(int(c[i]) for c in self.columns.values()))


def write_beton(path: Path, shard_writer, sizes: list[tuple[int, int]], columns: dict[str, np.ndarray],
                raw: bool) -> None:
    """Write `path` with fields image (RGBImageField) and one IntField per entry of `columns`."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    image = RGBImageField(write_mode="raw" if raw else "jpg")
    image.encode = types.MethodType(_encode_prebuilt, image)
    fields = {"image": image, **{name: IntField() for name in columns}}
    from ffcv.writer import MIN_PAGE_SIZE

    # Small sets get FFCV's smallest page (2 MiB) so a demo file is not mostly padding; large ones keep
    # FFCV's default 8 MiB, which its quasi-random loader reads efficiently.
    total = sum(shard_writer.locations[i][2] for i in range(len(sizes)))
    page = MIN_PAGE_SIZE if total < 256 * 2**20 else 4 * MIN_PAGE_SIZE
    writer = _in_process_writer(DatasetWriter)(str(path), fields, page_size=page, num_workers=1)
    writer.from_indexed_dataset(_Rows(shard_writer, sizes, columns, raw), chunksize=256)


def _in_process_writer(base):
    from ffcv.memory_allocator import MemoryAllocator

    class _InProcessWriter(base):
        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            # Same steps as DatasetWriter._write_common with num_workers=1, minus the Process.
            self.num_samples = num_samples
            self.prepare()
            work: queue.SimpleQueue = queue.SimpleQueue()
            for todo in queue_content:
                work.put(todo)
            work.put(None)
            allocations: queue.SimpleQueue = queue.SimpleQueue()
            done = mp.Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            work_fn(work, self.metadata_sm, self.metadata_type, self.fields, allocator, done, allocations,
                    *extra_worker_args)
            self.finalize(allocations.get())
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    return _InProcessWriter
