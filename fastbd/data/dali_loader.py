"""The `dali` backend: NVIDIA DALI decodes and crops; colour augmentation runs in torch on the device.

Data flow, per step (V = number of views, one recipe each):

    tar shard bytes (TarSamples.read, by .beton index, in `epoch_order`)
      -> fn.external_source        batch mode: encoded JPEG bytes (uint8), label and index (int64)
      -> fn.decoders.image         device="mixed" on a GPU (nvJPEG: the hardware JPEG decoder where the
                                   GPU has one, else CUDA kernels), "cpu" (libjpeg-turbo) otherwise;
                                   each image is decoded ONCE
      -> V x fn.random_resized_crop  one per view, cut from the same decoded image, res x res, HWC uint8
      -> torch                     copied out of DALI's buffers (feed_ndarray) on the device, as NCHW
      -> fastbd.data.gpu_aug       flip, colour jitter, grayscale, blur, solarize, normalise,
                                   channels_last: the same code as the ffcv backend (`augment_views`:
                                   one device generator and one host Random per step, from (seed,
                                   epoch, step), shared by the views in turn)
    labels and indices go to the device through pinned memory, without blocking, so the host never
    waits for the GPU between steps.

Why `external_source` rather than DALI's own `fn.readers.webdataset`: a poison rate trains on a SUBSET
of train.beton (an index list from the manifest: clean images minus the replaced ones, plus that
rate's poisoned copies), and every backend must visit the same samples in the same per-rank,
per-epoch order (`epoch_order`), so that a run's data does not depend on the backend. The webdataset
reader can only read all samples of its shards in its own shuffle order; it cannot select indices.
So a Python source reads the encoded bytes of the next `batch` indices straight from the tar shards
(by byte offset, `TarSamples`) and hands them to DALI. The stock `fn.readers.webdataset` still reads
the same shards for anyone who wants every sample (see `beton_builders/dali_writer.py`).

Raw-mode builds (`.rgb` + `.shape` members) skip the decoder: the source hands over HWC arrays.

Determinism: a new pipeline is built for each epoch, its seed and every crop's seed derived from
(seed, epoch, view), so a fresh loader after `set_epoch(e)` reproduces epoch e of one that ran the
earlier epochs, and the result does not depend on `workers` (DALI keeps one RNG per batch slot).
The last partial batch is kept when drop_last=False (external_source takes smaller batches).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Batch, Recipe
from .gpu_aug import augment_views
from .samples import EpochOrdered, TarSamples, _walk

DALI_INSTALL = "pip install nvidia-dali-cuda130==2.4.0"


def _dali():
    """The DALI modules, imported on first use (the package is optional)."""
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn, types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as e:
        raise ImportError(f"data.backend=dali needs NVIDIA DALI, which is not installed: `{DALI_INSTALL}` "
                          "(or `pip install -e .[dali]`), or pick data.backend=ffcv|torch") from e
    return dali, fn, types, feed_ndarray


def derived_seed(*key: int) -> int:
    """A non-negative 31-bit seed that is a pure function of `key` (DALI takes int seeds)."""
    words = [int(k) % 2**32 for k in key]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


class DaliLoader(EpochOrdered):
    def __init__(self, folder, indices: np.ndarray, recipes: list[Recipe], res: int, batch: int, workers: int,
                 device: torch.device, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True,
                 shuffle: bool = True, aug_impl: str = "exact", compile_aug: bool = False):
        self.aug_impl, self.compile_aug = aug_impl, compile_aug
        _dali()  # fail at construction, not at the first batch, when DALI is missing
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.type not in ("cuda", "cpu"):
            raise ValueError(f"dali backend: device {device} is neither cuda nor cpu")
        if not recipes:
            raise ValueError("dali backend: at least one view recipe is needed")
        self.samples = TarSamples(folder, "train")
        self.shapes = _raw_shapes(self.samples) if self.samples.raw else None
        self.recipes, self.res, self.workers, self.device = list(recipes), int(res), int(workers), device
        self._init_order(indices, batch, seed, rank, world, drop_last, shuffle)

    def _source(self, order: np.ndarray, steps: int):
        """The epoch's batches, as external_source wants them: (encoded arrays, labels, indices)."""
        for s in range(steps):
            idx = order[s * self.batch:(s + 1) * self.batch]
            data = [np.frombuffer(self.samples.read(int(i)), np.uint8) for i in idx]
            if self.shapes is not None:
                data = [d.reshape(self.shapes[int(i)]) for d, i in zip(data, idx)]
            yield data, self.samples.label[idx].astype(np.int64), idx.astype(np.int64)

    def _pipeline(self, order: np.ndarray, steps: int):
        dali, fn, types, _ = _dali()
        gpu = self.device.type == "cuda"
        pipe = dali.Pipeline(batch_size=self.batch, num_threads=max(1, self.workers),
                             device_id=self.device.index if gpu else None,
                             seed=derived_seed(self.seed, self.epoch, 0), prefetch_queue_depth=2)
        raw = self.shapes is not None
        with pipe:
            enc, label, index = fn.external_source(
                source=self._source(order, steps), num_outputs=3, batch=True,
                dtype=[types.UINT8, types.INT64, types.INT64], ndim=[3 if raw else 1, 0, 0],
                layout=["HWC"] if raw else None)
            if raw:
                img = enc.gpu() if gpu else enc
            else:  # decoded once; every view is cut from this
                img = fn.decoders.image(enc, device="mixed" if gpu else "cpu", output_type=types.RGB)
            views = [fn.random_resized_crop(img, size=(self.res, self.res), random_area=(r.scale_min, r.scale_max),
                                            random_aspect_ratio=(3 / 4, 4 / 3),
                                            seed=derived_seed(self.seed, self.epoch, v + 1))
                     for v, r in enumerate(self.recipes)]
            pipe.set_outputs(*views, label, index)
        pipe.build()
        return pipe

    def _to_torch(self, tl, feed_ndarray) -> torch.Tensor:
        """A batch of HWC uint8 crops out of DALI, copied into a torch tensor on the device."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.array(tl.as_tensor()))
        out = torch.empty((len(tl), self.res, self.res, 3), dtype=torch.uint8, device=self.device)
        # as_tensor: feed_ndarray compares shape() with the torch tensor's, and a TensorList's shape() is the
        # list of its samples' shapes (found on the first GPU run, 2026-11-26); the crops are dense, so one tensor
        feed_ndarray(tl.as_tensor(), out, cuda_stream=torch.cuda.current_stream(self.device))
        return out

    def _host_to_device(self, tl) -> torch.Tensor:
        """A CPU TensorList (labels, indices) as a tensor on the device; pinned and non-blocking on a GPU,
        where a plain .to() from pageable memory waits for the device's queue to drain."""
        t = torch.from_numpy(np.array(tl.as_tensor()))
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def __iter__(self):
        epoch, order = self.epoch, self._order()  # fixed for the epoch, even if set_epoch is called mid-way
        steps = self._num_batches(len(order))
        if steps == 0:
            return
        feed_ndarray = _dali()[3]
        pipe = self._pipeline(order, steps)
        try:
            for step in range(steps):
                *views, label, index = pipe.run()
                label, index = (self._host_to_device(t) for t in (label, index))
                crops = [self._to_torch(tl, feed_ndarray).permute(0, 3, 1, 2) for tl in views]  # NCHW views of HWC
                out = augment_views(crops, self.recipes, self.device, self.seed, epoch, step, self.aug_impl,
                                    self.compile_aug)  # as the ffcv backend
                yield Batch(out, label, index)
        finally:
            del pipe


def _raw_shapes(samples: TarSamples) -> list[tuple[int, int, int]]:
    """(H, W, 3) of every sample of a raw-mode build, from its `.shape` members, in index order."""
    shapes = [tuple(int(v) for v in np.frombuffer(data, "<i4"))
              for shard in samples.shards for name, _, _, data in _walk(shard) if name.endswith(".shape")]
    if len(shapes) != len(samples):
        raise ValueError(f"{samples.folder}: {len(shapes)} .shape members for {len(samples)} raw images")
    return shapes
