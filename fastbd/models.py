"""Backbones: torchvision ResNets with the classifier removed (features = global-pooled, 512-d for ResNet-18).

`small_input=True` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 stem, the usual change
for images under ~64 px (the CPU demo); ImageNet-size runs keep the standard stem as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 (torchvision definitions)
    small_input: bool = False  # 3x3 stride-1 stem, no max-pool: for images under ~64 px


def make_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """(backbone mapping (N, 3, H, W) -> (N, feat_dim), feat_dim)."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"model.arch: {cfg.arch!r} is not one of {ARCHS}")
    net = getattr(torchvision.models, cfg.arch)(weights=None)
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    if cfg.small_input:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    return net, feat_dim


def mlp(in_dim: int, hidden: int, out_dim: int, bn_last: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU-Linear: the BYOL / MSF / SimCLR projection head shape (MoCo v2's head has no BN)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                               nn.Linear(hidden, out_dim)]
    if bn_last:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = m * target + (1 - m) * online over parameters only; BN statistics of the target are its
    own, from its own forward passes, as in moco/builder.py (_momentum_update_key_encoder) and BYOL."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
