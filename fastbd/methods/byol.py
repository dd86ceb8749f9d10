"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent").

Online network = backbone + projector + predictor; target network = an EMA copy of backbone + projector
with no predictor and no gradient. The online prediction of each view regresses the target projection
of the other view; the loss is symmetrised (Eq. 2: L + L~). The EMA rate tau rises from tau_base to 1
on a cosine schedule over training (Sec. 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses import byol_loss
from .base import Method
from .blocks import add_byol_heads, cosine_tau, ema_update  # cosine_tau: BYOL Sec. 3.2's tau schedule


@dataclass
class ByolConfig:
    dim: int = 128  # embedding (the paper's reference code: 128)
    hidden: int = 1024  # projector and predictor hidden width, with BN
    tau_base: float = 0.99  # target EMA, cosine-increased to 1 over training
    asymmetric: bool = False  # the BYOL paper's asymmetric augmentation pair instead of the reference's symmetric one


class BYOL(Method):
    VIEWS = ("byol", "byol")
    Config = ByolConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.byol
        add_byol_heads(self, feat_dim, c.hidden, c.dim)
        self.tau = c.tau_base  # EMA rate used by the last after_step (logged)

    @classmethod
    def views_for(cls, cfg) -> tuple[str, ...]:
        return ("byol_a", "byol_b") if cfg.byol.asymmetric else cls.VIEWS

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        # One forward per view, like the reference: BN statistics are per view, not over both.
        p1, p2 = (self.predictor(self.projector(self.encoder(v))) for v in views[:2])
        with torch.no_grad():
            z1, z2 = (self.projector_t(self.encoder_t(v)) for v in views[:2])
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return loss, {"loss": loss.detach(), "tau": self.tau}

    # tau travels with the checkpoint, so the first logged value after a resume is the right one.
    def get_extra_state(self) -> dict:
        return {"tau": self.tau}

    def set_extra_state(self, state: dict) -> None:
        self.tau = float(state["tau"])

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.tau = cosine_tau(self.cfg.byol.tau_base, progress)
        ema_update(self.encoder_t, self.encoder, self.tau)
        ema_update(self.projector_t, self.projector, self.tau)
