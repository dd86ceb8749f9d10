"""MoCo v3 with a ResNet (Chen, Xie & He, ICCV 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"; reference code facebookresearch/moco-v3, moco/builder.py MoCo_ResNet and main_moco.py).

Base encoder = backbone + projector (2-layer MLP: Linear-BN-ReLU to `mlp_dim`, Linear to `dim`, BN without
affine) followed by a predictor (2-layer MLP, no final BN); momentum encoder = an EMA copy of backbone +
projector, its momentum rising from `momentum` to 1 on a cosine (--moco-m-cos). No queue: each query's
negatives are the other keys of the batch, gathered from every rank. Symmetrised: ctr(q1, k2) + ctr(q2, k1)
with InfoNCE at temperature T, scaled by 2T. Augmentation: BYOL's asymmetric pair (blur 1.0 / 0.1,
solarize 0 / 0.2), crops from 0.2 of the area as the reference's ResNet-50 commands (CONFIG.md). ViT
backbones (the paper's main subject) are not offered here. Not reproduced: the reference's
zero_init_residual backbone option.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses import mocov3_loss
from .base import Method
from .blocks import bn_mlp, cosine_tau, ema_update, ema_warning, frozen_copy, other_ranks


@dataclass
class Mocov3Config:
    dim: int = 256  # projector and predictor output (reference --moco-dim 256)
    mlp_dim: int = 4096  # hidden width of projector and predictor (reference --moco-mlp-dim 4096)
    temperature: float = 1.0  # InfoNCE softmax temperature (reference, ResNet: 1.0; ViT: 0.2)
    momentum: float = 0.99  # momentum encoder's EMA at the start, cosine-increased to 1 (reference --moco-m 0.99 --moco-m-cos)


class MoCoV3(Method):
    VIEWS = ("byol_a", "byol_b")
    Config = Mocov3Config

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.mocov3
        self.projector = bn_mlp([feat_dim, c.mlp_dim, c.dim], last_bn=True)
        self.predictor = bn_mlp([c.dim, c.mlp_dim, c.dim], last_bn=False)
        self.encoder_t = frozen_copy(encoder)
        self.projector_t = frozen_copy(self.projector)
        self.momentum = c.momentum  # the EMA rate the last after_step used (logged)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.cfg.mocov3
        q1, q2 = (self.predictor(self.projector(self.encoder(v))) for v in views[:2])
        with torch.no_grad():
            k1, k2 = (self.projector_t(self.encoder_t(v)) for v in views[:2])
        loss = (mocov3_loss(q1, k2, c.temperature, other_ranks(k2))
                + mocov3_loss(q2, k1, c.temperature, other_ranks(k1)))
        return loss, {"loss": loss.detach(), "momentum": self.momentum}

    def schedule_warnings(self, total_steps: int) -> list[str]:
        # the cosine schedule starts at `momentum`, so its first horizon is that of a constant EMA
        return ema_warning("method.mocov3.momentum", self.cfg.mocov3.momentum, total_steps)

    # the momentum travels with the checkpoint, so the first logged value after a resume is the right one
    def get_extra_state(self) -> dict:
        return {"momentum": self.momentum}

    def set_extra_state(self, state: dict) -> None:
        self.momentum = float(state["momentum"])

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        # the reference updates the momentum encoder at the start of the next forward; after the step is the same
        self.momentum = cosine_tau(self.cfg.mocov3.momentum, progress)
        ema_update(self.encoder_t, self.encoder, self.momentum)
        ema_update(self.projector_t, self.projector, self.momentum)
