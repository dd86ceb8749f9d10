"""Device and mixed-precision helpers, below everything that runs a network (train, eval, distill, methods).

They sit in a module of their own so that evaluation and defenses never import the trainer to get them
(the third wall, tests/test_architecture.py).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU (cuda:local_rank) when CUDA is available, else the CPU; otherwise `name`."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def amp_mode(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a grad scaler is needed) for the `amp` setting."""
    mode = amp if amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    if mode not in ("bf16", "fp16", "none"):
        raise ValueError(f"amp: {amp!r} is not one of auto, bf16, fp16, none")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[mode], mode == "fp16"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast at `dtype`, or a no-op context when AMP is off."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
