"""SimSiam (Chen & He, CVPR 2021, "Exploring Simple Siamese Representation Learning"; reference code
facebookresearch/simsiam, simsiam/builder.py and main_simsiam.py).

Backbone + 3-layer projector f (Linear-BN-ReLU twice at the backbone's width, then Linear to `dim` and BN)
and a 2-layer bottleneck predictor h (Linear to `pred_hidden`-BN-ReLU-Linear back to `dim`); no momentum
encoder, no negatives. Loss: D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2 with D the negative cosine
(Eq. 3). The predictor's learning rate is not decayed (`fix_pred_lr`, the reference's --fix-pred-lr, which
its README's ImageNet recipe uses; paper Sec. 4.4). Not reproduced: the reference also zero-initialises
each residual block's last BN (torchvision's zero_init_residual), a backbone option fastbd does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import simsiam_loss
from .base import Method
from .blocks import bn_mlp


@dataclass
class SimsiamConfig:
    dim: int = 2048  # projector and predictor output (paper: 2048)
    pred_hidden: int = 512  # predictor bottleneck width (paper: 512)
    proj_hidden: int = 0  # projector hidden width; 0: the backbone's feature width (the reference: prev_dim)
    fix_pred_lr: bool = True  # keep the predictor at the base learning rate, undecayed (reference --fix-pred-lr)


class SimSiam(Method):
    VIEWS = ("mocov2", "mocov2")  # the reference's augmentation is MoCo v2's aug-plus
    Config = SimsiamConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.simsiam
        hidden = c.proj_hidden or feat_dim
        self.projector = bn_mlp([feat_dim, hidden, hidden, c.dim], last_bn=True)
        self.predictor = bn_mlp([c.dim, c.pred_hidden, c.dim], last_bn=False, last_bias=True)

    def optim_groups(self) -> list[dict]:
        if not self.cfg.simsiam.fix_pred_lr:
            return super().optim_groups()
        pred = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in pred]
        return [{"params": rest}, {"params": list(self.predictor.parameters()), "fixed_lr": True}]

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        # One forward per view, as the reference: BN statistics are per view.
        z1, z2 = (self.projector(self.encoder(v)) for v in views[:2])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))
        # Collapse monitor (paper Fig. 2): the per-dimension std of the l2-normalised output; ~1/sqrt(dim)
        # when healthy, 0 when collapsed.
        z_std = F.normalize(z1.detach().float(), dim=1).std(0).mean()
        return loss, {"loss": loss.detach(), "z_std": z_std}
