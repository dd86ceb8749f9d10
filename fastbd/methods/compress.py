"""CompRess distillation (Abbasi Koohpayegani et al., NeurIPS 2020), the paper's defense (Saha et al. 2022,
Sec. 5): a fresh student learns to reproduce a frozen teacher's similarity structure on a small clean
subset, and so keeps the teacher's clean features but not its backdoor.

Teacher: the frozen encoder of a `fastbd train` run (`method.compress.teacher`), in eval mode.
Student: a new backbone + MLP head. Anchors: two aligned FIFO banks, teacher-space (teacher features)
and student-space (a momentum copy of the student, 0.999), of the same images (CompRess-2q). Loss:
KL between the softmax similarity distributions over the banks, temperature 0.04. One view (crop + flip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..dist import all_gather_cat
from ..losses import compress_loss
from ..models import ModelConfig
from ..runs import load_encoder
from .base import Method
from .blocks import add_ring, ema_update, ema_warning, fifo_enqueue, frozen_copy, ring_warning


def load_teacher(run: str) -> nn.Module:
    if not run:
        raise ValueError("method.compress.teacher: required (the run folder of the encoder to distil)")
    net, _ = load_encoder(Path(run), None, ModelConfig())
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


@dataclass
class CompressConfig:
    teacher: str = ""  # run folder of the (possibly backdoored) encoder to distil
    dim: int = 128  # student embedding
    hidden: int = 512  # student MLP head hidden width
    bank: int = 128000  # anchors per bank; capped to the clean subset's size
    momentum: float = 0.999  # the momentum student that fills the student-space bank
    temperature: float = 0.04  # both softmaxes (CompRess)


class CompRess(Method):
    VIEWS = ("weak",)
    Config = CompressConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.compress
        self.teacher = load_teacher(c.teacher)
        t_dim = self.teacher(torch.zeros(2, 3, 32, 32)).shape[1]
        self.head = nn.Sequential(nn.Linear(feat_dim, c.hidden), nn.ReLU(inplace=True), nn.Linear(c.hidden, c.dim))
        self.encoder_m = frozen_copy(encoder)
        self.head_m = frozen_copy(self.head)
        # Two aligned banks (row i of both from one image) share one pointer; capped to the clean subset.
        add_ring(self, "bank_t", c.bank, num_samples, t_dim)
        add_ring(self, "bank_s", c.bank, num_samples, c.dim, ptr="bank_ptr")
        self._new_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's (t, m), for after_step

    def teacher_run(self) -> str:
        return self.cfg.compress.teacher

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: BN statistics of the teacher never move
        return self

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x = views[0]
        s = F.normalize(self.head(self.encoder(x)), dim=1)
        with torch.no_grad():
            t = F.normalize(self.teacher(x).float(), dim=1)
            m = F.normalize(self.head_m(self.encoder_m(x)), dim=1)
        loss = compress_loss(t, s, self.bank_t, self.bank_s, self.cfg.compress.temperature)
        self._new_rows = (t, m)  # enqueued by after_step, once backward has read the banks (base.py)
        return loss, {"loss": loss.detach()}

    def schedule_warnings(self, total_steps: int) -> list[str]:
        c = self.cfg.compress
        return [*ring_warning("method.compress.bank", c.bank, self.num_samples),
                *ema_warning("method.compress.momentum", c.momentum, total_steps)]

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = self.cfg.compress.momentum
        ema_update(self.encoder_m, self.encoder, m)
        ema_update(self.head_m, self.head, m)
        rows, self._new_rows = self._new_rows, None
        if rows is None:
            return
        t_all, m_all = (all_gather_cat(x) for x in rows)
        ptr = self.bank_ptr.clone()
        fifo_enqueue(self.bank_t, ptr, t_all)
        fifo_enqueue(self.bank_s, self.bank_ptr, m_all)
