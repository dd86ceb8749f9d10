"""RotNet (Gidaris et al. ICLR 2018, "Unsupervised Representation Learning by Predicting Image Rotations").

Every image is shown at all rotations (0, 90, 180, 270 degrees) in the same batch -- the paper found
this better than one random rotation per image (Sec. 2.2) -- and a linear classifier on the backbone's
pooled features predicts which rotation it sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method


def rotate_all(x: torch.Tensor, rotations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, S, S) -> (R*N, C, S, S) rotated copies, rotation-major, and their (R*N,) class labels.
    rotations = 4: multiples of 90 degrees; 2: 0 and 180 degrees."""
    if rotations not in (2, 4):
        raise ValueError(f"method.rotnet.rotations must be 2 or 4, got {rotations}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotnet needs square views, got {tuple(x.shape[-2:])}")
    step = 4 // rotations
    out = torch.cat([torch.rot90(x, r * step, dims=(2, 3)) for r in range(rotations)], 0)
    if x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)  # rot90 returns strided copies
    labels = torch.arange(rotations, device=x.device).repeat_interleave(x.shape[0])
    return out, labels


@dataclass
class RotnetConfig:
    rotations: int = 4  # 0, 90, 180, 270 degrees


class RotNet(Method):
    VIEWS = ("geometric",)
    Config = RotnetConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        if cfg.rotnet.rotations not in (2, 4):
            raise ValueError(f"method.rotnet.rotations must be 2 or 4, got {cfg.rotnet.rotations}")
        self.classifier = nn.Linear(feat_dim, cfg.rotnet.rotations)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x, y = rotate_all(views[0], self.cfg.rotnet.rotations)
        logits = self.classifier(self.encoder(x))
        loss = F.cross_entropy(logits, y)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}
