"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Backbone + MLP projection head; NT-Xent over the 2N views of the batch. In distributed runs the other
ranks' projections join as extra negatives (the reference gathers across TPU cores), without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses import nt_xent
from .base import Method
from .blocks import mlp, other_ranks


@dataclass
class SimclrConfig:
    dim: int = 128  # projection output
    hidden: int = 2048  # projection head hidden width, with BN
    temperature: float = 0.2  # NT-Xent softmax temperature


class SimCLR(Method):
    VIEWS = ("simclr", "simclr")
    Config = SimclrConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.simclr
        self.head = mlp(feat_dim, c.hidden, c.dim)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        n = views[0].shape[0]
        # Both views in one pass: the reference encodes the 2N batch together (one set of BN statistics).
        z = self.head(self.encoder(torch.cat(views[:2], 0)))
        loss = nt_xent(z[:n], z[n:], self.cfg.simclr.temperature, other_ranks(z))
        return loss, {"loss": loss.detach()}
