"""Optimisers and learning-rate schedules.

The learning rate in configs is per 256 images and scales linearly with the global batch (Goyal et
al. 2017), as moco/main_moco.py and BYOL do. Schedules are per step: linear warm-up, then cosine to
zero (MoCo v2's cosine, here per step rather than per epoch), constant, or step decay at milestones.
NVIDIA apex's fused optimisers are used only when apex is importable; otherwise torch's (SGD, Adam and AdamW
fused on CUDA; LARS is ours, per tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | lars | adam | adamw
    lr: float = 0.06  # per 256 images; the actual lr is lr * global_batch / 256
    momentum: float = 0.9  # sgd / lars
    weight_decay: float = 1e-4  # L2 penalty coefficient (lars: weights only, not biases or BN)
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw
    warmup_epochs: float = 0.0  # epochs of linear warm-up from 0
    schedule: str = "cosine"  # cosine | constant | step
    milestones: list[int] = field(default_factory=list)  # epochs, for schedule=step
    gamma: float = 0.1  # lr factor at each milestone
    trust: float = 0.001  # lars trust coefficient


OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step")


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise trust ratios (You et al. 2017); biases and norm weights are not adapted or decayed."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:  # weights only: biases and BN parameters skip decay and adaptation
                    d = d.add(p, alpha=g["weight_decay"])
                    pn, dn = torch.norm(p), torch.norm(d)
                    q = torch.where((pn > 0) & (dn > 0), g["trust"] * pn / dn, torch.ones_like(pn))
                    d = d.mul(q)
                buf = self.state[p].get("mu")
                if buf is None:
                    buf = self.state[p]["mu"] = torch.zeros_like(p)
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def _apex():
    try:
        from apex import optimizers  # NVIDIA apex, only if the user installed it
        return optimizers if hasattr(optimizers, "FusedSGD") else None
    except Exception:  # noqa: BLE001 - the PyPI package named "apex" is unrelated and may fail oddly
        return None


def make_optimizer(cfg: OptimConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name: {cfg.name!r} is not one of {OPTIMIZERS}")
    # A method names its parameter groups (fastbd.methods.base.Method.optim_groups); any other module is one group.
    params = model.optim_groups() if hasattr(model, "optim_groups") else [
        {"params": [p for p in model.parameters() if p.requires_grad]}]
    apex = _apex()
    first = next((p for g in params for p in g["params"]), None)
    cuda = first is not None and first.is_cuda
    if cfg.name == "sgd":
        if apex is not None and cuda:
            return apex.FusedSGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        # fused on CUDA: one kernel over all parameters, no host sync (torch's default there is foreach)
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=cuda or None)
    if cfg.name == "lars":
        return LARS(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, trust=cfg.trust)
    if apex is not None and cuda:
        return apex.FusedAdam(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                              adam_w_mode=cfg.name == "adamw")
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=cuda or None)


def lr_at(cfg: OptimConfig, base_lr: float, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate for `step` (0-based)."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return base_lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return base_lr
    if cfg.schedule == "step":
        epoch = step / max(1, steps_per_epoch)
        return base_lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    t = (step - warm) / max(1, total_steps - warm)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
