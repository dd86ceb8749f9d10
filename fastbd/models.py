"""Backbones: torchvision ResNets with the classifier removed (features = global-pooled, 512-d for ResNet-18).

`small_input=True` swaps the 7x7/stride-2 stem and max-pool for a 3x3 stem without a pool, the usual
change for images under ~64 px; its stride (`stem_stride`) is 1 as in CIFAR ResNets, or 2, which costs a
quarter as much at 32-64 px views (what the CPU experiments use). `width` scales every stage's channels
(64 in torchvision: 64/128/256/512); a narrower ResNet-18 is what fits a 2-core CPU budget. ImageNet-size
runs keep torchvision's exact network (standard stem, width 64), as the paper does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3]),
         # one block per stage: PatchSearch's poison classifier (ResNet(BasicBlock, [1, 1, 1, 1]) in its code)
         "resnet10": (BasicBlock, [1, 1, 1, 1])}


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 (torchvision definitions) | resnet10 (one block per stage)
    small_input: bool = False  # 3x3 stem, no max-pool: for images under ~64 px
    stem_stride: int = 1  # px, the small stem's stride: 1 (CIFAR ResNets) | 2 (a quarter of the cost)
    width: int = 64  # channels of the first stage, doubled at each later stage (torchvision: 64)


class _ScaledResNet(ResNet):
    """torchvision's ResNet with `width` channels in the first stage instead of 64: the same modules, names
    and initialisation (ResNet.__init__ with its 64s scaled), so state dicts load the same way."""

    def __init__(self, block, layers, width: int):
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def make_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """(backbone mapping (N, 3, H, W) -> (N, feat_dim), feat_dim)."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"model.arch: {cfg.arch!r} is not one of {tuple(ARCHS)}")
    if cfg.width < 1:
        raise ValueError(f"model.width: {cfg.width} channels; must be >= 1")
    if cfg.stem_stride not in (1, 2):
        raise ValueError(f"model.stem_stride: {cfg.stem_stride} is not 1 or 2")
    if cfg.width == 64 and hasattr(torchvision.models, cfg.arch):  # torchvision's own: bit for bit, as always
        net = getattr(torchvision.models, cfg.arch)(weights=None)
    else:
        net = _ScaledResNet(*ARCHS[cfg.arch], cfg.width)
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    if cfg.small_input:
        net.conv1 = nn.Conv2d(3, cfg.width, 3, cfg.stem_stride, 1, bias=False)
        net.maxpool = nn.Identity()
    return net, feat_dim


def model_meta(cfg: ModelConfig) -> dict:
    """What encoder.json records of the backbone, enough to rebuild it (`model_from_meta`)."""
    return {"arch": cfg.arch, "small_input": cfg.small_input, "model": asdict(cfg)}


def model_from_meta(meta: dict) -> ModelConfig:
    """The ModelConfig of an encoder.json; exports from before `model` was recorded name only arch and stem."""
    if isinstance(meta.get("model"), dict):
        return ModelConfig(**meta["model"])
    return ModelConfig(arch=meta["arch"], small_input=bool(meta.get("small_input", False)))
