"""MoCo v2 (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"; moco/builder.py).

Query encoder = backbone + 2-layer MLP head; key encoder = a momentum (EMA) copy of both, never trained
by gradient; a FIFO queue of normalised keys gathered from every rank supplies the negatives. One
direction only, as in MoCo v2: queries from view 0, keys from view 1.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from ..dist import all_gather_cat, rank, world_size
from ..losses import info_nce
from ..models import ema_update
from .base import Method, MethodConfig


def frozen_copy(m: nn.Module) -> nn.Module:
    """A momentum copy: same weights at start (moco/builder.py copies q into k), no gradient."""
    c = copy.deepcopy(m)
    for p in c.parameters():
        p.requires_grad_(False)
    return c


def moco_head(feat_dim: int, hidden: int, dim: int) -> nn.Sequential:
    # MoCo v2's head (builder.py, --mlp): Linear-ReLU-Linear, *without* BN, unlike BYOL's projector.
    return nn.Sequential(nn.Linear(feat_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


@torch.no_grad()
def shuffle_across_ranks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shuffling BN (MoCo Sec. 3.3; builder.py _batch_shuffle_ddp): the key encoder sees a batch mixed
    across ranks, so its BN statistics cannot leak which key belongs to which query. Identity in a
    single process. Returns (this rank's slice of the shuffled global batch, index to undo it)."""
    world = world_size()
    if world == 1:
        return x, None
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    xs = all_gather_cat(x.contiguous())
    perm = torch.randperm(xs.shape[0], device=x.device)
    tdist.broadcast(perm, 0)  # every rank must use rank 0's permutation
    mine = perm.view(world, -1)[rank()]
    undo = perm.argsort().view(world, -1)[rank()]
    return xs[mine].contiguous(memory_format=fmt), undo


@torch.no_grad()
def unshuffle_across_ranks(k: torch.Tensor, undo: torch.Tensor | None) -> torch.Tensor:
    return k if undo is None else all_gather_cat(k)[undo]


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


class MoCo(Method):
    VIEWS = ("mocov2", "mocov2")

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg: MethodConfig, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.moco
        self.head = moco_head(feat_dim, c.hidden, c.dim)
        self.encoder_k = frozen_copy(encoder)
        self.head_k = frozen_copy(self.head)
        add_ring(self, "queue", c.queue, num_samples, c.dim, ptr="queue_ptr")  # (K, D) negatives

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg.moco
        q = F.normalize(self.head(self.encoder(views[0])), dim=1)
        with torch.no_grad():
            x, undo = (shuffle_across_ranks(views[1]) if c.shuffle_bn else (views[1], None))
            k = F.normalize(self.head_k(self.encoder_k(x)), dim=1)
            k = unshuffle_across_ranks(k, undo)
        # clone: the enqueue below writes the buffer in place, which autograd saved for backward.
        loss, logits = info_nce(q, k, self.queue.clone(), c.temperature, return_logits=True)
        fifo_enqueue(self.queue, self.queue_ptr, all_gather_cat(k))
        acc = (logits.detach().argmax(1) == 0).float().mean()
        return loss, {"loss": loss.item(), "acc": acc.item()}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        # builder.py updates the key encoder at the start of the next forward; after the step is the same.
        m = self.cfg.moco.momentum
        ema_update(self.encoder_k, self.encoder, m)
        ema_update(self.head_k, self.head, m)
