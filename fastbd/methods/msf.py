"""Mean Shift, MSF (Koohpayegani et al. ICCV 2021, "Mean Shift for Self-Supervised Learning").

BYOL's architecture (online backbone + projector + predictor; target = EMA of backbone + projector at a
constant rate) with BYOL's single positive replaced by the top-k nearest neighbours of the target
embedding in a memory bank of earlier target embeddings. The weak view (crop + flip) goes to the
target, the strong (MoCo v2) view to the online network; one direction, not symmetrised (Sec. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..dist import all_gather_cat
from ..losses import msf_loss
from .base import Method
from .blocks import add_byol_heads, add_ring, ema_update, ema_warning, fifo_enqueue, ring_warning


@dataclass
class MsfConfig:
    dim: int = 128  # projection output
    hidden: int = 1024  # projector and predictor hidden width, with BN
    bank: int = 128000  # memory bank size; capped to the training set size
    topk: int = 10  # nearest neighbours of the target embedding
    momentum: float = 0.99  # target EMA


class MSF(Method):
    VIEWS = ("weak", "mocov2")  # view 0 -> target, view 1 -> online
    Config = MsfConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.msf
        add_byol_heads(self, feat_dim, c.hidden, c.dim)
        add_ring(self, "bank", c.bank, num_samples, c.dim, ptr="bank_ptr")  # (K, D) target embeddings
        self._new_rows: torch.Tensor | None = None  # this step's targets, for after_step

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        q = self.predictor(self.projector(self.encoder(views[1])))
        with torch.no_grad():
            t = F.normalize(self.projector_t(self.encoder_t(views[0])), dim=1)
        # Neighbours come from the bank as it was before this batch, plus each sample's own target.
        loss = msf_loss(q, t, self.bank, self.cfg.msf.topk)
        self._new_rows = t  # enqueued by after_step, once backward has read the bank (base.py)
        return loss, {"loss": loss.detach()}

    def schedule_warnings(self, total_steps: int) -> list[str]:
        c = self.cfg.msf
        return [*ring_warning("method.msf.bank", c.bank, self.num_samples),
                *ema_warning("method.msf.momentum", c.momentum, total_steps)]

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = self.cfg.msf.momentum  # constant in MSF (0.99), unlike BYOL's cosine schedule
        ema_update(self.encoder_t, self.encoder, m)
        ema_update(self.projector_t, self.projector, m)
        rows, self._new_rows = self._new_rows, None
        if rows is not None:
            fifo_enqueue(self.bank, self.bank_ptr, all_gather_cat(rows))
