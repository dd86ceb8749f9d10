"""MoCo v2 (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"; moco/builder.py).

Query encoder = backbone + 2-layer MLP head; key encoder = a momentum (EMA) copy of both, never trained
by gradient; a FIFO queue of normalised keys gathered from every rank supplies the negatives. One
direction only, as in MoCo v2: queries from view 0, keys from view 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from ..dist import all_gather_cat, rank, world_size
from ..losses import info_nce
from .base import Method
from .blocks import add_ring, ema_update, ema_warning, fifo_enqueue, frozen_copy, ring_warning


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


@dataclass
class MocoConfig:
    dim: int = 128  # projection output
    hidden: int = 2048  # MLP head hidden width (MoCo v2: 2048 for ResNet-50; 512 = backbone width for ResNet-18)
    queue: int = 65536  # negatives; capped to the training set size
    momentum: float = 0.999  # key-encoder EMA
    temperature: float = 0.2  # InfoNCE softmax temperature (MoCo v2: 0.2)
    shuffle_bn: bool = True  # shuffle keys across ranks before the key encoder (MoCo Sec. 3.3); no-op in one process


def queue_share_warning(queue: int, num_samples: int, share: float = 0.6) -> list[str]:
    """A note when the queue holds more than `share` of the training set: a query's own key from its last
    epoch is then among its negatives with about that probability. On the 5,250-image CPU effect set a
    4,096-key queue (78%) learnt far worse than 512 (10%): 10% probe 68 against 90% on one seed, 37 against
    64% on another (README "The effect on a CPU"). The paper's ImageNet-100 queue is 52% (65,536 of 126,689)."""
    k = min(queue, num_samples)
    if num_samples <= 0 or k <= share * num_samples:
        return []
    return [f"method.moco.queue={k} holds {k / num_samples:.0%} of the {num_samples} training images: a query's "
            f"own key from its last epoch is then that often among its negatives; a queue of ~10% learnt "
            f"better on the CPU effect set"]


class MoCo(Method):
    VIEWS = ("mocov2", "mocov2")
    Config = MocoConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.moco
        self.head = moco_head(feat_dim, c.hidden, c.dim)
        self.encoder_k = frozen_copy(encoder)
        self.head_k = frozen_copy(self.head)
        add_ring(self, "queue", c.queue, num_samples, c.dim, ptr="queue_ptr")  # (K, D) negatives
        self._new_keys: torch.Tensor | None = None  # this step's keys, for after_step

    def allows_sync_bn(self) -> bool:
        # Global BN statistics would undo what shuffling the keys across ranks is for (MoCo, Sec. 3.3).
        return not self.cfg.moco.shuffle_bn

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.cfg.moco
        q = F.normalize(self.head(self.encoder(views[0])), dim=1)
        with torch.no_grad():
            x, undo = (shuffle_across_ranks(views[1]) if c.shuffle_bn else (views[1], None))
            k = F.normalize(self.head_k(self.encoder_k(x)), dim=1)
            k = unshuffle_across_ranks(k, undo)
        loss, logits = info_nce(q, k, self.queue, c.temperature, return_logits=True)
        self._new_keys = k  # enqueued by after_step, once backward has read the queue (base.py)
        acc = (logits.detach().argmax(1) == 0).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}

    def schedule_warnings(self, total_steps: int) -> list[str]:
        c = self.cfg.moco
        return [*ring_warning("method.moco.queue", c.queue, self.num_samples),
                *queue_share_warning(c.queue, self.num_samples),
                *ema_warning("method.moco.momentum", c.momentum, total_steps)]

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        # builder.py updates the key encoder at the start of the next forward and enqueues the keys at the
        # end of the forward; both after the step is the same.
        m = self.cfg.moco.momentum
        ema_update(self.encoder_k, self.encoder, m)
        ema_update(self.head_k, self.head, m)
        keys, self._new_keys = self._new_keys, None
        if keys is not None:
            fifo_enqueue(self.queue, self.queue_ptr, all_gather_cat(keys))
