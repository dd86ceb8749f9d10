"""What every SSL method module provides, and how the registry composes their configs.

A method is a small nn.Module holding the online encoder (the backbone whose weights get exported),
its heads, and any momentum copies, queues or memory banks. The trainer calls:

    loss, logs = method(views)            # views: list of (N, 3, H, W) float tensors, one per VIEWS entry
    method.after_step(progress)           # momentum/EMA updates and ring (queue, bank) writes;
                                          # progress in [0, 1] over the whole run

`loss` is a 0-dim tensor; `logs` maps names to 0-dim device tensors (or plain floats the host already
knows, like BYOL's tau). Nothing in `forward` may call `.item()` or branch on a tensor: the trainer reads
the logs only every `log_every` steps, so the step never waits for the GPU (tests/test_train.py).
Nor may `forward` write a buffer that the loss reads (a MoCo queue, an MSF bank): it keeps the new rows
and `after_step` writes them, after backward. Under torch.compile an in-place write in the forward reached
the backward pass (inductor dropped the loss's copy of the queue, so the gradients used the updated one;
tests/test_train.py compares the compiled step with the eager one).

A new method is one module and one registry line: the module defines its config dataclass (every field
with its unit in a comment) and a `Method` subclass naming it in `Config`; `METHODS` in
fastbd/methods/__init__.py maps a name to the class, and `MethodConfig` gets a section of that name, so
`method.<name>.<field>=...` works in YAML and on the command line. Losses are pure functions in
fastbd/losses.py; shared pieces (EMA copies, ring banks, heads) are in blocks.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn


@dataclasses.dataclass
class NoConfig:
    """The config of a method without settings."""


class Method(nn.Module):
    """Base class: subclasses set VIEWS (augmentation recipe names, fastbd/data/base.py RECIPES) and Config.

    `cfg` is the whole composed MethodConfig (fastbd.methods.MethodConfig): `name` and one section per
    registered method; a method reads its own, e.g. `cfg.moco`."""

    VIEWS: tuple[str, ...] = ()
    Config: type = NoConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__()
        self.encoder = encoder  # the backbone exported as the run's encoder
        self.feat_dim = feat_dim
        self.cfg = cfg
        self.num_samples = num_samples  # training-set size, to cap queues and banks

    @classmethod
    def views_for(cls, cfg) -> tuple[str, ...]:
        """The views a method built from `cfg` asks for; a classmethod so the loader can be made first."""
        return cls.VIEWS

    def views(self) -> tuple[str, ...]:
        return self.views_for(self.cfg)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        raise NotImplementedError

    def optim_groups(self) -> list[dict]:
        """The optimiser's parameter groups: one of every trainable parameter. A group with `fixed_lr: True`
        stays at the base learning rate while the schedule moves the others (SimSiam's predictor)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def schedule_warnings(self, total_steps: int) -> list[str]:
        """Settings that do not suit a run of `total_steps` steps on `num_samples` images (printed by the
        trainer at start): the paper's defaults are for 200 ImageNet epochs and are traps in short runs."""
        return []

    def allows_sync_bn(self) -> bool:
        """Whether the trainer may turn this method's BatchNorm layers into SyncBatchNorm under DDP on GPUs
        (train.sync_bn); a method whose BN statistics must stay per rank says no."""
        return True

    def teacher_run(self) -> str | None:
        """The run folder of a teacher this method learns from (distillation), or None: the trainer checks
        that the teacher was trained on the same data, and a student inherits the teacher's record."""
        return None

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called after each optimizer step (after every forward that trains); progress = step / total_steps."""


def compose_config(methods: dict[str, type[Method]], default: str) -> type:
    """The MethodConfig dataclass: `name` plus one section per registered method, named by its registry key
    and typed by its `Config`, so OmegaConf checks every `method.<name>.<field>` as it did a written-out class."""
    fields: list[tuple[str, Any, Any]] = [
        ("name", str, dataclasses.field(default=default, metadata={"help": " | ".join(methods)}))]
    fields += [(key, cls.Config, dataclasses.field(default_factory=cls.Config)) for key, cls in methods.items()]
    cls = dataclasses.make_dataclass("MethodConfig", fields)
    cls.__module__ = "fastbd.methods"  # where it is bound, so pickle finds it (make_dataclass's module= is 3.12+)
    return cls
