"""Backbones: torchvision ResNets with the classifier removed (features = global-pooled, 512-d for ResNet-18).

`small_input=True` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 stem, the usual change
for images under ~64 px (the CPU demo); ImageNet-size runs keep the standard stem as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
