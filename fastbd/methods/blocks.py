"""Building blocks several SSL methods share: momentum (EMA) copies and their cosine schedule, FIFO ring
banks, the other ranks' embeddings, projection and prediction heads. A new method takes what it needs
from here instead of from a sibling method.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..dist import all_gather_cat, rank, world_size


# ----- momentum copies ------------------------------------------------------------------------------------

def frozen_copy(m: nn.Module) -> nn.Module:
    """A momentum copy: same weights at start (moco/builder.py copies q into k), no gradient."""
    c = copy.deepcopy(m)
    for p in c.parameters():
        p.requires_grad_(False)
    return c


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = m * target + (1 - m) * online over parameters only; BN statistics of the target are its
    own, from its own forward passes, as in moco/builder.py (_momentum_update_key_encoder) and BYOL.
    Two multi-tensor calls over the parameter lists (a few kernels on a GPU, where a loop over the ~60
    tensors of a ResNet-18 would launch two each); the same arithmetic as a per-tensor mul_ + add_."""
    t = list(target.parameters())
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, [o.detach() for o in online.parameters()], alpha=1 - momentum)


def cosine_tau(tau_base: float, progress: float) -> float:
    """The momentum rising from tau_base to 1 on a cosine over training: 1 - (1 - tau_base)(cos(pi p) + 1) / 2
    (BYOL Sec. 3.2; MoCo v3's --moco-m-cos, main_moco.py adjust_moco_momentum, is the same curve)."""
    progress = min(max(progress, 0.0), 1.0)
    return 1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2


# ----- other ranks' embeddings --------------------------------------------------------------------------

def other_ranks(z: torch.Tensor) -> torch.Tensor | None:
    """Every rank's `z` except this one's, concatenated, without gradient; None in a single process."""
    world = world_size()
    if world == 1:
        return None
    zs = all_gather_cat(z.detach()).view(world, *z.shape)
    keep = [r for r in range(world) if r != rank()]
    return zs[keep].flatten(0, 1)


# ----- FIFO ring banks (MoCo queue, MSF memory bank, CompRess anchors) ---------------------------------

@torch.no_grad()
def fifo_enqueue(buf: torch.Tensor, ptr: torch.Tensor, rows: torch.Tensor) -> None:
    """Write `rows` into the ring buffer `buf` (K, D) at `ptr` and advance it, wrapping around, so K need
    not be a multiple of the global batch (builder.py asserts it is). More rows than K: the last K win."""
    size = buf.shape[0]
    rows = rows[-size:].to(buf.dtype)
    idx = (ptr + torch.arange(rows.shape[0], device=rows.device)) % size
    buf[idx] = rows
    ptr.copy_((ptr + rows.shape[0]) % size)


def add_ring(module: nn.Module, name: str, capacity: int, num_samples: int, dim: int,
             ptr: str | None = None) -> None:
    """Register a (K, dim) buffer of random unit rows (builder.py's queue init), K = min(capacity, training
    set) because more rows than images would only hold stale copies; `ptr` names its write pointer."""
    k = max(1, min(capacity, num_samples))
    module.register_buffer(name, F.normalize(torch.randn(k, dim), dim=1))
    if ptr:
        module.register_buffer(ptr, torch.zeros((), dtype=torch.long))


def ring_warning(field: str, capacity: int, num_samples: int) -> list[str]:
    """A note when a queue or bank is capped to the training set (add_ring does it silently)."""
    if capacity <= num_samples:
        return []
    return [f"{field}={capacity} is capped to the {num_samples} training images"]


def ema_warning(field: str, momentum: float, total_steps: int, share: float = 0.25) -> list[str]:
    """A note when an EMA's horizon, 1 / (1 - m) steps, exceeds `share` of the run: its copy then still
    mostly holds the random initialisation for much of training (0.999 is 1,000 steps; ImageNet-100 at
    batch 256 has ~500 steps per epoch, a 5-epoch CPU run on 5,000 images has ~200 in all)."""
    horizon = 1.0 / max(1e-12, 1.0 - momentum)
    if horizon <= share * total_steps:
        return []
    suggest = 1 - 1 / max(2.0, 0.1 * total_steps)  # a horizon of a tenth of the run
    return [f"{field}={momentum:g} averages over ~{horizon:.0f} steps, more than {share:.0%} of this run's "
            f"{total_steps} steps, so the momentum copy lags the online network for much of it; for short "
            f"runs use a lower momentum (e.g. {suggest:.3g})"]


# ----- heads ----------------------------------------------------------------------------------------------

def mlp(in_dim: int, hidden: int, out_dim: int, bn_last: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU-Linear: the BYOL / MSF / SimCLR projection head shape (MoCo v2's head has no BN)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                               nn.Linear(hidden, out_dim)]
    if bn_last:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def bn_mlp(dims: list[int], last_bn: bool, last_bias: bool = False) -> nn.Sequential:
    """Linear layers through `dims` (in, hidden..., out), each hidden one followed by BN and ReLU, without
    biases (BN follows); the last optionally followed by BN without affine parameters. MoCo v3's _build_mlp
    (moco/builder.py) and SimSiam's projector and predictor (simsiam/builder.py) are all of this shape."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last and last_bias and not last_bn))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


def add_byol_heads(m: nn.Module, feat_dim: int, hidden: int, dim: int) -> None:
    """Online projector + predictor (Linear-BN-ReLU-Linear, BYOL Sec. 3.3) and the momentum target
    (a frozen copy of encoder + projector); MSF uses the same architecture."""
    m.projector = mlp(feat_dim, hidden, dim)
    m.predictor = mlp(dim, hidden, dim)
    m.encoder_t = frozen_copy(m.encoder)
    m.projector_t = frozen_copy(m.projector)
