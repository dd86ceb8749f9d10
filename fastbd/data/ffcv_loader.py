"""The `ffcv` backend: the stock `ffcv.loader.Loader` over `train.beton`, one JPEG decode per sample.

FFCV 1.0.2 decodes an image field into one output per sample, so a two-view SSL method would have to
decode every JPEG twice (two image pipelines). `_MultiCropDecoder` instead decodes each image once
into a scratch buffer and cuts one random-resized crop per view (that view's recipe's scale range,
aspect ratio 3/4..4/3, area-resized to res x res) from it, giving uint8 (N, V, res, res, 3). Its
structure follows ffcv/fields/rgb_image.py (`ResizedCropRGBImageDecoder.generate_code`): the same
libffcv `imdecode` and `resize_crop`, `get_random_crop`, `Compiler.compile` / `Compiler.get_iterator`,
a temp buffer of the largest stored image per batch slot, and raw-mode images read in place.

Determinism. FFCV 1.0.2 never seeds the numba RNG its random crops draw from, and its decoders are
compiled once, with their parameters as constants. So the decoder reseeds np.random per sample from a
hash of (seed, epoch, .beton index) -- the crops of a sample are then a pure function of those three,
whichever thread decodes it -- and reads the epoch at run time from a one-word array the loader owns
(through a ctypes memcpy from its address, the same foreign-call route libffcv's functions take), so
`set_epoch` needs no recompilation. The order is FFCV's own: `seed + epoch` with `order=RANDOM`, or
torch's DistributedSampler when world > 1 (rank sharding is FFCV's, so it differs from `epoch_order`).

Flip, colour augmentation and normalisation run afterwards on the device (`gpu_aug.augment_views`), with
one device generator and one host Random per step, pure functions of (seed, epoch, step), shared by the
views in turn. The batches reach the device with non-blocking copies (FFCV's ToDevice), so the host queues
a step's work without waiting for the GPU.

What limits it: JPEG decoding on the CPU (libjpeg-turbo, `workers` numba threads); the crops and the
resize are cheap next to it. Note that FFCV sets torch's CPU thread count to `workers` as a side effect.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .base import Batch, Recipe
from .gpu_aug import augment_views

try:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder, get_random_crop
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline import PipelineSpec
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation
    from ffcv.reader import Reader
    from ffcv.transforms import Squeeze, ToDevice, ToTensor
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"data.backend=ffcv needs FFCV: `pip install ffcv==1.0.2` (scripts/setup.sh installs it "
                      f"with its system libraries), or use data.backend=dali|torch ({e})") from e

_RATIO = np.array([3 / 4, 4 / 3])
_memcpy = ctypes.CDLL(None).memcpy  # numba calls ctypes functions natively, without the GIL
_memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_memcpy.restype = ctypes.c_void_p


def quiet_numba_finalizers() -> None:
    """Drop one known, harmless message, and only it: numba's `Dispatcher` finaliser (numba/core/dispatcher.py,
    `_make_finalizer`) runs when an FFCV Loader's compiled pipeline is garbage-collected, and iterates an
    OrderedDict keyed by argument types whose hash has changed since they were inserted (types with
    Literal and array flags, as FFCV's decoders compile), so the lookup raises KeyError. The finaliser only
    unregisters compiled functions; Python prints "Exception ignored in: <finalize ...>" and a traceback
    and carries on. Every other unraisable exception still goes to the previous hook. Installed once."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_fastbd_numba_filter", False):
        return

    def hook(unraisable) -> None:
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code if tb is not None else None
        if (unraisable.exc_type is KeyError and code is not None and code.co_name == "finalizer"
                and code.co_filename.replace("\\", "/").endswith("numba/core/dispatcher.py")):
            return
        previous(unraisable)
    hook._fastbd_numba_filter = True
    sys.unraisablehook = hook


def _sample_seed(seed, epoch, index):
    """A 32-bit seed for np.random from (seed, epoch, .beton index): splitmix64's finaliser."""
    z = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(epoch) * np.uint64(0xD1B54A32D192ED03)
         + np.uint64(index) * np.uint64(0x8CB92BA72F3D8DD7))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.uint32(z & np.uint64(0xFFFFFFFF))


class _MultiCropDecoder(SimpleRGBImageDecoder):
    """RGBImageField -> uint8 (N, V, res, res, 3): one decode, then V random-resized crops of it."""

    def __init__(self, res: int, scales: list[tuple[float, float]], seed: int):
        super().__init__()
        self.res, self.scales, self.seed = res, np.array(scales, np.float64), int(seed)
        self.epoch = np.zeros(1, np.int64)  # read by the compiled code at every batch, by address

    def declare_state_and_memory(self, previous_state):
        max_h = np.uint64(self.metadata["height"].max())  # uint64: h * w * 3 overflows smaller types
        max_w = np.uint64(self.metadata["width"].max())
        out = (len(self.scales), self.res, self.res, 3)
        u8 = np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=out, dtype=u8),
                (AllocationQuery(out, u8), AllocationQuery((max_h * max_w * np.uint64(3),), u8)))

    def generate_code(self):
        mem_read, jpg = self.memory_read, IMAGE_MODES["jpg"]
        my_range = Compiler.get_iterator()
        # Fresh dispatchers per call, as FFCV's decoders make: do not cache them across loaders. FFCV's
        # OSCacheManager.state_type flips `mutable` on numba's interned uint8[::1] type, which corrupts
        # the signature keys of any dispatcher compiled before another Loader is made.
        imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
        crop_c, seed_c = Compiler.compile(get_random_crop), Compiler.compile(_sample_seed)
        scales, ratio, seed, n_views = self.scales, _RATIO, self.seed, len(self.scales)
        epoch_addr, copy = self.epoch.ctypes.data, _memcpy

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            epoch = np.zeros(1, np.int64)
            copy(epoch.ctypes.data, epoch_addr, 8)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == jpg:
                    image = temp_storage[dst_ix]
                    imdecode_c(image_data, image, height, width, height, width, 0, 0, 1, 1, False, False)
                    image = image.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    image = image_data.reshape(height, width, 3)
                np.random.seed(seed_c(seed, epoch[0], source_ix))  # this thread's numba RNG
                for v in range(n_views):
                    i, j, h, w = crop_c(height, width, scales[v], ratio)
                    resize_crop_c(image, i, i + h, j, j + w, destination[dst_ix, v])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class _IndexDecoder(Operation):
    """Any field -> int64 (N,): the samples' .beton indices (FFCV stores no index field)."""

    def declare_state_and_memory(self, previous_state):
        i8 = np.dtype("<i8")
        return replace(previous_state, jit_mode=True, shape=(1,), dtype=i8), AllocationQuery((1,), i8)

    def generate_code(self):
        def decode(batch_indices, destination, metadata, storage_state):
            for k in range(len(batch_indices)):
                destination[k, 0] = batch_indices[k]
            return destination[:len(batch_indices)]

        return decode


class FfcvLoader:
    """Batches of `len(recipes)` views from `<folder>/train.beton`; `Batch.index` is the .beton index.

    The same interface as `TorchLoader`: `set_epoch(e)` before each epoch (the order and the crops are
    a function of (seed, epoch), so a resumed run repeats them), `len()` batches per epoch.
    """

    def __init__(self, folder, indices: np.ndarray, recipes: list[Recipe], res: int, batch: int, workers: int,
                 device: torch.device, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True,
                 shuffle: bool = True, aug_impl: str = "exact", compile_aug: bool = False):
        path = Path(folder) / "train.beton"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no train.beton; is {folder} a build-beton folder?")
        if world > 1:  # FFCV shards through torch's DistributedSampler, which asks torch.distributed
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()) or (dist.get_rank(), dist.get_world_size()) != (
                    rank, world):
                raise RuntimeError(f"FfcvLoader(rank={rank}, world={world}) needs torch.distributed initialised "
                                   "with that rank and world size: FFCV shards the samples by it")
        quiet_numba_finalizers()
        self.recipes, self.device, self.seed, self.epoch = list(recipes), torch.device(device), int(seed), 0
        self.aug_impl, self.compile_aug = aug_impl, compile_aug
        self.decoder = _MultiCropDecoder(res, [(r.scale_min, r.scale_max) for r in self.recipes], self.seed)
        to_dev = [ToDevice(self.device, non_blocking=True)] if self.device.type == "cuda" else []
        pipelines = {name: None for name in Reader(str(path)).field_names}  # FFCV decodes every field not off
        pipelines.update({
            "image": [self.decoder, ToTensor(), *to_dev],
            "label": [IntDecoder(), ToTensor(), Squeeze(1), *to_dev],
            # a second decoder on `label`, which ignores its values and writes the .beton indices
            "index": PipelineSpec("label", _IndexDecoder(), [ToTensor(), Squeeze(1), *to_dev]),
        })
        self.loader = Loader(str(path), batch_size=batch, num_workers=workers, os_cache=True,
                             order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
                             distributed=world > 1, seed=self.seed, indices=np.asarray(indices),
                             pipelines=pipelines, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.next_epoch = self.epoch  # FFCV's order for epoch e: seed + e
        self.decoder.epoch[0] = self.epoch  # its crops: read by the compiled decoder at each batch
        epoch, n = self.epoch, len(self.recipes)
        it, step = iter(self.loader), 0
        try:
            while True:
                _wait_for_batch(it)
                try:
                    views, label, index = next(it)
                except StopIteration:
                    return
                out = augment_views([views[:, v].permute(0, 3, 1, 2) for v in range(n)], self.recipes, self.device,
                                    self.seed, epoch, step, self.aug_impl, self.compile_aug)
                # label and index are views of FFCV's rotating batch buffers: copy them before handing over
                yield Batch(out, label.clone(), index.clone())
                step += 1
        finally:
            it.close()  # stops FFCV's thread if the consumer left the epoch early


def _wait_for_batch(it) -> None:
    """Block until FFCV's EpochIterator thread has a batch ready; raise if that thread died instead.

    FFCV 1.0.2 drops an exception in its pipeline thread (a numba error, say) and its __next__ then
    waits forever on the queue; a training job should fail, not hang.
    """
    q = it.output_queue
    with q.not_empty:
        while not q._qsize():
            if not it.is_alive():
                raise RuntimeError("FFCV's loading thread stopped without a batch; its traceback is above")
            q.not_empty.wait(1.0)
