"""What every SSL method module provides, and the registry.

A method is a small nn.Module holding the online encoder (the backbone whose weights get exported),
its heads, and any momentum copies, queues or memory banks. The trainer calls:

    loss, logs = method(views)            # views: list of (N, 3, H, W) float tensors, one per VIEWS entry
    method.after_step(progress)           # momentum/EMA updates; progress in [0, 1] over the whole run

Losses themselves are pure functions in fastbd/losses.py. Methods register in `METHODS` (a plain dict,
fastbd/methods/__init__.py) under their config name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MocoConfig:
    dim: int = 128  # projection output
    hidden: int = 2048  # MLP head hidden width (MoCo v2: 2048 for ResNet-50; 512 = backbone width for ResNet-18)
    queue: int = 65536  # negatives; capped to the training set size
    momentum: float = 0.999  # key-encoder EMA
    temperature: float = 0.2
    shuffle_bn: bool = True  # shuffle keys across ranks before the key encoder (MoCo Sec. 3.3); no-op in one process


@dataclass
class ByolConfig:
    dim: int = 128  # embedding (the paper's reference code: 128)
    hidden: int = 1024  # projector and predictor hidden width, with BN
    tau_base: float = 0.99  # target EMA, cosine-increased to 1 over training
    asymmetric: bool = False  # the BYOL paper's asymmetric augmentation pair instead of the reference's symmetric one


@dataclass
class MsfConfig:
    dim: int = 128
    hidden: int = 1024
    bank: int = 128000  # memory bank size; capped to the training set size
    topk: int = 10  # nearest neighbours of the target embedding
    momentum: float = 0.99  # target EMA


@dataclass
class SimclrConfig:
    dim: int = 128
    hidden: int = 2048
    temperature: float = 0.2


@dataclass
class JigsawConfig:
    grid: int = 3  # tiles per side
    permutations: int = 100  # classes: a fixed, seeded set of maximally different permutations
    tile_jitter: int = 0  # px of random shift inside each tile (0 = none)
    tile_norm: bool = True  # normalise each tile's mean/std on its own (Noroozi & Favaro 2016, Sec. 3.3: no shortcuts)
    hidden: int = 1024  # width of the classifier MLP over the concatenated tile features


@dataclass
class RotnetConfig:
    rotations: int = 4  # 0, 90, 180, 270 degrees


@dataclass
class CompressConfig:
    teacher: str = ""  # run folder of the (possibly backdoored) encoder to distil
    dim: int = 128  # student embedding
    hidden: int = 512  # student MLP head hidden width
    bank: int = 128000  # anchors per bank; capped to the clean subset's size
    momentum: float = 0.999  # the momentum student that fills the student-space bank
    temperature: float = 0.04  # both softmaxes (CompRess)


@dataclass
class MethodConfig:
    name: str = "moco"  # moco | byol | msf | simclr | jigsaw | rotnet | compress (distillation)
    moco: MocoConfig = field(default_factory=MocoConfig)
    byol: ByolConfig = field(default_factory=ByolConfig)
    msf: MsfConfig = field(default_factory=MsfConfig)
    simclr: SimclrConfig = field(default_factory=SimclrConfig)
    jigsaw: JigsawConfig = field(default_factory=JigsawConfig)
    rotnet: RotnetConfig = field(default_factory=RotnetConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)


class Method(nn.Module):
    """Base class: subclasses set VIEWS (augmentation recipe names, fastbd/data/base.py RECIPES)."""

    VIEWS: tuple[str, ...] = ()

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg: MethodConfig, num_samples: int):
        super().__init__()
        self.encoder = encoder  # the backbone exported as the run's encoder
        self.feat_dim = feat_dim
        self.cfg = cfg
        self.num_samples = num_samples  # training-set size, to cap queues and banks

    @classmethod
    def views_for(cls, cfg: MethodConfig) -> tuple[str, ...]:
        """The views a method built from `cfg` asks for; a classmethod so the loader can be made first."""
        return cls.VIEWS

    def views(self) -> tuple[str, ...]:
        return self.views_for(self.cfg)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called after each optimizer step; progress = step / total_steps."""
