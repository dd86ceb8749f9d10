"""SSL methods by config name (`method.name`); see base.py for the interface the trainer uses.

Adding a method: a new module beside these (its config dataclass and its `Method` subclass), and one
entry in METHODS below; its config section appears in MethodConfig by itself.
"""

from __future__ import annotations

from torch import nn

from .base import Method, compose_config
from .byol import BYOL
from .compress import CompRess
from .jigsaw import Jigsaw
from .moco import MoCo
from .mocov3 import MoCoV3
from .msf import MSF
from .rotnet import RotNet
from .simclr import SimCLR
from .simsiam import SimSiam

METHODS: dict[str, type[Method]] = {
    "moco": MoCo,
    "byol": BYOL,
    "msf": MSF,
    "simclr": SimCLR,
    "jigsaw": Jigsaw,
    "rotnet": RotNet,
    "simsiam": SimSiam,  # Chen & He 2021
    "mocov3": MoCoV3,  # Chen, Xie & He 2021 (ResNet)
    "compress": CompRess,  # the distillation defense (fastbd distill)
}

MethodConfig = compose_config(METHODS, default="moco")


def make_method(cfg, encoder: nn.Module, feat_dim: int, num_samples: int) -> Method:
    """The configured method around `encoder` (feature width `feat_dim`); `num_samples` caps queues/banks."""
    if cfg.name not in METHODS:
        raise ValueError(f"method.name: unknown method {cfg.name!r}; known: {sorted(METHODS)}")
    return METHODS[cfg.name](encoder, feat_dim, cfg, num_samples)


__all__ = ["METHODS", "Method", "MethodConfig", "make_method"]
