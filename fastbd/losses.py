"""The SSL objectives as pure functions: tensors in, scalar loss out, no module state.

Queues, memory banks and momentum encoders live in the methods (fastbd/methods/); keeping the losses
free of them lets tests check each one on hand-made tensors. Jigsaw and RotNet are plain
classification and call `F.cross_entropy` directly.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F


def _fp32(fn):
    """Run the loss in float32 with autocast off: logits divided by a small temperature, and 2 - 2cos
    near 0, lose too much in bf16/fp16; the reference implementations compute them in fp32."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        cast = lambda a: a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        args = [cast(a) for a in args]
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(dev, enabled=False):
            return fn(*args, **kwargs)
    return wrapped


@_fp32
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
             return_logits: bool = False):
    """MoCo's InfoNCE (He et al. 2020, Eq. 1; moco/builder.py MoCo.forward).

    q, k: (N, D), L2-normalised queries and their positive keys; queue: (K, D) normalised negatives.
    Logits are [q.k, q.queue] / T with the positive in column 0, so the target class is 0 for every row.
    Returns the scalar loss, or (loss, logits (N, 1 + K)) with `return_logits`, for top-1 accuracy.
    """
    pos = (q * k).sum(1, keepdim=True)  # (N, 1)
    neg = q @ queue.t()  # (N, K)
    logits = torch.cat([pos, neg], 1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, labels)
    return (loss, logits) if return_logits else loss


@_fp32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss (Grill et al. 2020, Eq. 2): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), batch mean.

    p: online predictions (N, D); z: target projections (N, D), treated as constants (stop-gradient).
    The symmetrised BYOL loss is the sum of this over both view orders (the method does that).
    """
    p = F.normalize(p, dim=1)
    z = F.normalize(z.detach(), dim=1)
    return (2 - 2 * (p * z).sum(1)).mean()


@_fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
            z_all_other: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1; SimCLR objective.py add_contrastive_loss).

    z1, z2: (N, D) projections of the two views of the same N images (normalised here). Each of the 2N
    embeddings must pick its partner among the other 2N - 1 (self-similarity masked out), plus, in
    distributed runs, the (M, D) embeddings `z_all_other` gathered from the other ranks (extra
    negatives; no gradient flows into them, as in the reference's cross-replica gather on TPU).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], 0), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    if z_all_other is not None and z_all_other.numel():
        other = F.normalize(z_all_other.detach(), dim=1)
        sim = torch.cat([sim, z @ other.t() / temperature], 1)
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, labels)


@_fp32
def msf_loss(q: torch.Tensor, target: torch.Tensor, bank: torch.Tensor, topk: int) -> torch.Tensor:
    """Mean Shift loss (Koohpayegani et al. ICCV 2021, Eq. 2; UMBCvision/MSF builder.py).

    q: (N, D) online predictions of the strong view; target: (N, D) target-encoder embeddings of the
    weak view; bank: (K, D) memory bank of earlier target embeddings. The neighbours are the `topk`
    nearest to the *target* among the bank plus the target itself (MSF includes the current target, so
    topk=1 reduces to BYOL); the loss pulls q towards each of them: mean of ||q - nn||^2 = 2 - 2 cos
    over neighbours and batch. Everything is normalised here; target and bank carry no gradient.
    """
    q = F.normalize(q, dim=1)
    t = F.normalize(target.detach(), dim=1)
    b = F.normalize(bank.detach(), dim=1)
    # Column 0 is the target itself (similarity 1, always selected); then the bank.
    sim_t = torch.cat([torch.ones_like(t[:, :1]), t @ b.t()], 1)
    sim_q = torch.cat([(q * t).sum(1, keepdim=True), q @ b.t()], 1)
    k = min(topk, sim_t.shape[1])
    nn_idx = sim_t.topk(k, dim=1).indices
    return (2 - 2 * sim_q.gather(1, nn_idx)).mean()


@_fp32
def compress_loss(t: torch.Tensor, s: torch.Tensor, bank_t: torch.Tensor, bank_s: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """CompRess (Abbasi Koohpayegani et al., NeurIPS 2020, Eq. 2-3): KL(p_t || p_s) between the teacher's and
    the student's softmax similarity distributions over their own anchor banks.

    t (N, Dt) and s (N, Ds): L2-normalised teacher and student embeddings of the same images;
    bank_t (K, Dt) and bank_s (K, Ds): normalised anchors, row i of both from the same image.
    """
    log_pt = F.log_softmax(t @ bank_t.T / temperature, dim=1)
    log_ps = F.log_softmax(s @ bank_s.T / temperature, dim=1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")


@_fp32
def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, stopgrad(z)) (Chen & He 2021, Eq. 1 and 3; simsiam/main_simsiam.py's
    -CosineSimilarity): the negative cosine similarity, batch mean, in [-1, 1]. The symmetrised loss is the
    mean of this over both view orders (the method does that)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@_fp32
def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float,
                k_other: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MoCo v3's contrastive loss (Chen, Xie & He 2021, Alg. 1; moco/builder.py contrastive_loss): InfoNCE of
    each query against every key of the batch, its own image's key the positive, scaled by 2T as the
    reference does. q, k: (N, D) queries and keys (normalised here); k_other: (M, D) the other ranks' keys
    (no gradient), which the reference gathers across GPUs. Keys carry no gradient."""
    q = F.normalize(q, dim=1)
    keys = F.normalize(k.detach(), dim=1)
    if k_other is not None and k_other.numel():
        keys = torch.cat([keys, F.normalize(k_other.detach(), dim=1)], 0)  # own keys first: positive i at column i
    logits = q @ keys.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) * (2 * temperature)
