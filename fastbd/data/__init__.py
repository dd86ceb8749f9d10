"""Loaders for SSL training: `make_loader(cfg, views, ...)` picks the ffcv, dali or torch backend."""

from __future__ import annotations

import numpy as np
import torch

from .base import BACKENDS, RECIPES, Batch, DataConfig, Recipe, resolve_recipes
from .samples import dataset_indices, epoch_order

__all__ = ["BACKENDS", "RECIPES", "Batch", "DataConfig", "Recipe", "make_loader", "dataset_indices",
           "epoch_order"]


def make_loader(cfg: DataConfig, views: list[str] | tuple[str, ...], *, device: torch.device, seed: int,
                rank: int = 0, world: int = 1, shuffle: bool = True, subset=None):
    """An iterable of Batch for this rank; `len()` batches per epoch; `set_epoch(e)` before each epoch.
    `subset`: read exactly these train.beton indices instead of the config's training set (a defense's
    own selection, e.g. PatchSearch's poison-classifier pool)."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"data.backend: {cfg.backend!r} is not one of {BACKENDS}")
    if cfg.batch_size % world:
        raise ValueError(f"data.batch_size: {cfg.batch_size} does not split evenly over {world} ranks")
    if subset is None:
        _, indices = dataset_indices(cfg.path, cfg.rate, cfg.verify_files, cfg.clean_fraction, seed, cfg.indices)
    else:
        indices = np.asarray(subset, np.int64)
    recipes = resolve_recipes(list(views), cfg.recipes)
    args = dict(folder=cfg.path, indices=indices, recipes=recipes, res=cfg.res, batch=cfg.batch_size // world,
                workers=cfg.workers, device=device, seed=seed, rank=rank, world=world,
                drop_last=cfg.drop_last, shuffle=shuffle)
    if cfg.backend == "torch":  # PIL does the whole augmentation in worker processes
        from .torch_loader import TorchLoader as cls
    else:
        args["aug_impl"], args["compile_aug"] = aug_impl(cfg.aug_impl, device), cfg.compile_aug
        if cfg.backend == "ffcv":
            from .ffcv_loader import FfcvLoader as cls
        else:
            from .dali_loader import DaliLoader as cls
    loader = cls(**args)
    loader.num_samples = len(indices)  # the training set's size (all ranks), for queues and banks
    loader.sample_indices = indices  # the exact training set, recorded by the trainer when it is a subset
    return loader


def aug_impl(name: str, device: torch.device) -> str:
    """`data.aug_impl` resolved: auto is the exact jitter on a GPU, the one-matrix linear one on the CPU,
    where the exact one's HSV round trip costs more than the JPEG decode (fastbd/data/gpu_aug.py)."""
    if name == "auto":
        return "exact" if torch.device(device).type == "cuda" else "linear"
    from .gpu_aug import IMPLS
    if name not in IMPLS:
        raise ValueError(f"data.aug_impl: {name!r} is not one of auto, {', '.join(IMPLS)}")
    return name
