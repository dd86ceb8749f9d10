"""k-means in torch on the device: seeded, deterministic, batched.

PatchSearch clusters the suspect encoder's L2-normalised training features (Tejankar et al. 2023, Sec. 3.1;
reference patch_search_iterative_search.py `faiss_kmeans`: faiss.Clustering with L2 distance, 20
iterations, initial centroids a random sample of the points). This is the same Lloyd iteration without
faiss, seeded with k-means++ instead of a random sample (a random sample often starts two centroids in
one dense group and never separates them): squared-L2 assignment in chunks, centroid sums as a one-hot
matrix product (a deterministic
reduction on GPUs too, unlike atomic scatter-adds), and an empty cluster re-seeded with the point
farthest from its centroid (faiss splits a large cluster instead; both keep k clusters non-empty).
Same features, k, iterations and seed give the same assignment on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KMeans:
    centroids: torch.Tensor  # (k, D) float32, the last iteration's means
    assign: torch.Tensor  # (N,) int64, each point's nearest centroid
    dist: torch.Tensor  # (N,) float32, squared L2 distance to it


def _nearest(x: torch.Tensor, c: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance, index) of each row of x to its nearest row of c."""
    cc = (c * c).sum(1)
    ds, ids = [], []
    for s in range(0, len(x), chunk):
        xb = x[s:s + chunk]
        d = (xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + cc
        m, i = d.min(1)
        ds.append(m.clamp_min(0))
        ids.append(i)
    return torch.cat(ds), torch.cat(ids)


def _means(x: torch.Tensor, a: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-cluster sums, member counts) as one-hot products, chunk by chunk."""
    sums = torch.zeros(k, x.shape[1], device=x.device, dtype=x.dtype)
    counts = torch.zeros(k, device=x.device, dtype=x.dtype)
    for s in range(0, len(x), chunk):
        oh = torch.nn.functional.one_hot(a[s:s + chunk], k).to(x.dtype)
        sums += oh.T @ x[s:s + chunk]
        counts += oh.sum(0)
    return sums, counts


def _plus_plus(x: torch.Tensor, k: int, g: torch.Generator, chunk: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centroid a point drawn with probability
    proportional to its squared distance to the nearest centroid so far (the draws on the CPU generator)."""
    first = int(torch.randint(len(x), (1,), generator=g))
    c = [x[first]]
    d = _nearest(x, x[first][None], chunk)[0]
    for _ in range(1, k):
        w = d.double().cpu()
        if w.sum() > 0:
            i = int(torch.multinomial(w / w.sum(), 1, generator=g))
        else:  # every point is a centroid already (duplicates): any will do
            i = int(torch.randint(len(x), (1,), generator=g))
        c.append(x[i])
        d = torch.minimum(d, _nearest(x, x[i][None], chunk)[0])
    return torch.stack(c).clone()


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, chunk: int = 8192) -> KMeans:
    """Cluster the rows of `x` (N, D) into `k` clusters with `iters` Lloyd iterations."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"search.clusters: {k} clusters for {n} images; must lie in [1, {n}]")
    x = x.float()
    c = _plus_plus(x, k, torch.Generator().manual_seed(int(seed)), chunk)
    for _ in range(max(1, iters)):
        d, a = _nearest(x, c, chunk)
        sums, counts = _means(x, a, k, chunk)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        if empty:  # re-seed each empty cluster with the point farthest from its centroid (distinct points)
            far = torch.argsort(d, descending=True, stable=True)[:len(empty)]
            c[torch.tensor(empty, device=x.device)] = x[far]
    d, a = _nearest(x, c, chunk)  # the final assignment: every point's nearest centroid, as a flip test sees it
    return KMeans(centroids=c, assign=a, dist=d)
