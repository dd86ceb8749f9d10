"""Distributed helpers: torchrun + DDP when launched by torchrun, a single process otherwise.

Rank 0 alone writes files and logs. Gathers used by the methods (MoCo keys, SimCLR negatives, the MSF
memory bank) go through `all_gather_cat`, which is the identity in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the torchrun process group if the environment says so (RANK/WORLD_SIZE), else single process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every rank along dim 0, in rank order (no gradient), as moco's concat_all_gather."""
    if world_size() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, 0)


def all_reduce_mean(x: float, device: torch.device) -> float:
    if world_size() == 1:
        return float(x)
    t = torch.tensor([float(x)], device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()
