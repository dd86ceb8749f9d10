"""PatchSearch's search: candidate trigger windows by Grad-CAM, their poison score by the flip test, and the
iterative search over clusters (Tejankar et al., CVPR 2023, Sec. 3.2-3.4; reference code
UCDvision/PatchSearch, patch_search_iterative_search.py).

- Candidate trigger (paper Sec. 3.2, reference `get_candidate_patches`): the k-means centroids act as a
  linear classifier on the L2-normalised features (cosine similarity to each centroid, reference
  `KMeansLinear`); Grad-CAM of the image's top-scoring cluster on the backbone's last stage (`layer4`, the
  reference's target layer for ResNets), rectified, upsampled to the crop and min-max scaled, gives a
  heat map; the w x w window with the largest heat sum is the candidate (w = 60 px at 224, `window_w`).
- Poison score (Sec. 3.3, the flip test): paste the candidate at a uniformly random position on each
  test image (one per cluster, the nearest to its centroid, `test_images_size` = 1000 in all), embed them,
  and count how many more of them fall into the candidate image's cluster than did before the paste.
- Iterative search (Sec. 3.4): every round scores `samples_per_iteration` = 2 random unscored images of
  each candidate cluster, a cluster's score is the largest of its images' scores (unscored: 0), and the
  `remove_per_iteration` = 25% lowest clusters leave the search. The reference drops `cluster_scores[:-rem]`
  with rem = int(0.25 x clusters left), which empties the list once fewer than 4 remain; the search ends
  there, or when no candidate cluster has an unscored image left. We do the same.
Everything runs in batches on the device; the flip test of many candidates shares batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastbd.defenses.images import CropReader, crop_windows, normalise, paste
from fastbd.defenses.kmeans import KMeans
from fastbd.device import autocast


@dataclass
class SearchResult:
    score: np.ndarray  # (N,) int64 poison score (flips) per position in the training set; 0 where unscored
    scored: np.ndarray  # (N,) bool
    top: np.ndarray  # (N,) int64 the candidate window's top row, in crop pixels (-1 where unscored)
    left: np.ndarray  # (N,) int64 its left column
    size: np.ndarray  # (N, 2) int64 the stored image's (W, H) (0 where unscored)
    test_positions: np.ndarray  # positions of the test images in the training set
    rounds: list  # per round: {candidates, clusters, best_score}


@torch.no_grad()
def embed(net, images: torch.Tensor, amp, batch: int) -> torch.Tensor:
    """L2-normalised float32 features of uint8 images, in batches (on the images' device)."""
    out = []
    for s in range(0, len(images), batch):
        with autocast(images.device, amp):
            f = net(normalise(images[s:s + batch]))
        out.append(F.normalize(f.float(), dim=1))
    return torch.cat(out) if out else torch.zeros(0, 0, device=images.device)


def _stage(net, name: str):
    modules = dict(net.named_modules())
    if name not in modules:
        raise ValueError(f"search.cam_layer: the encoder has no module {name!r} (e.g. layer4 of a ResNet)")
    return modules[name]


def gradcam_windows(net, images: torch.Tensor, centroids: torch.Tensor, w: int, layer: str,
                    batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, left) of the w x w window with the largest Grad-CAM mass in each uint8 image (B, 3, R, R), for
    the cluster it is most similar to. Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of the
    gradient of that cluster's cosine score w.r.t. `layer`'s activations; map = ReLU(sum_c weight_c A_c)."""
    stage, acts = _stage(net, layer), []
    hook = stage.register_forward_hook(lambda m, i, o: acts.append(o))
    c = F.normalize(centroids.float(), dim=1)
    tops, lefts = [], []
    try:
        for s in range(0, len(images), batch):
            acts.clear()
            x = normalise(images[s:s + batch]).requires_grad_(True)
            with torch.enable_grad():
                logits = F.normalize(net(x).float(), dim=1) @ c.T
                y = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                a = acts[-1]
                (g,) = torch.autograd.grad(y, a)
            cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach().float()
            cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
            lo = cam.amin((2, 3), keepdim=True)
            cam = cam - lo
            cam = cam / (cam.amax((2, 3), keepdim=True) + 1e-7)  # the reference's scale_cam_image
            sums = F.avg_pool2d(cam, w, stride=1)[:, 0]  # (B, R-w+1, R-w+1) mean heat of each window
            flat = sums.flatten(1).argmax(1)
            tops.append(flat // sums.shape[-1])
            lefts.append(flat % sums.shape[-1])
    finally:
        hook.remove()
    return torch.cat(tops), torch.cat(lefts)


@torch.no_grad()
def flip_scores(net, patches: torch.Tensor, clusters: torch.Tensor, test: torch.Tensor, test_assign: torch.Tensor,
                centroids: torch.Tensor, amp, batch: int, gen: torch.Generator) -> torch.Tensor:
    """The flip test of each candidate patch (P, 3, w, w) against cluster `clusters[p]`: pasted at a random
    position on every test image, how many more test images land in that cluster than before (P,) int64.
    The (candidate, test image) pairs stream through the encoder in shared batches."""
    p_n, t_n, dev = len(patches), len(test), test.device
    if p_n == 0:
        return torch.zeros(0, dtype=torch.int64)
    r, w = test.shape[-1], patches.shape[-1]
    c = F.normalize(centroids.float(), dim=1)
    hits = torch.zeros(p_n, dtype=torch.int64, device=dev)
    # all random corners up front, on the CPU generator, so the scores do not depend on `batch`
    corner = torch.randint(0, r - w + 1, (p_n * t_n, 2), generator=gen)
    for s in range(0, p_n * t_n, batch):
        pair = torch.arange(s, min(s + batch, p_n * t_n))
        pi, ti = (pair // t_n).to(dev), (pair % t_n).to(dev)
        x = paste(test[ti], patches[pi], corner[pair, 0], corner[pair, 1])
        with autocast(dev, amp):
            f = net(normalise(x))
        a = (F.normalize(f.float(), dim=1) @ c.T).argmax(1)  # nearest centroid (cosine, on the unit sphere)
        hits += torch.bincount(pi[a == clusters.to(dev)[pi]], minlength=p_n)
    before = (test_assign.to(dev)[None, :] == clusters.to(dev)[:, None]).sum(1)
    return (hits - before).cpu()


def test_set(km: KMeans, size: int, gen: torch.Generator) -> np.ndarray:
    """Positions of the flip test's images: the `size // k` nearest to each centroid (reference
    `get_test_images`), or, when there are more clusters than test images, the nearest of `size` random ones."""
    a, d = km.assign.cpu().numpy(), km.dist.cpu().numpy()
    k = len(km.centroids)
    members = [np.flatnonzero(a == c) for c in range(k)]
    ranked = [m[np.argsort(d[m], kind="stable")] for m in members]
    per = size // k
    if per > 0:
        return np.concatenate([m[:per] for m in ranked]).astype(np.int64)
    pick = torch.randperm(k, generator=gen).numpy()
    return np.asarray([ranked[c][0] for c in pick if len(ranked[c])][:size], np.int64)


def iterative_search(net, reader: CropReader, indices: np.ndarray, km: KMeans, cfg, w: int, amp, batch: int,
                     seed: int, log: Callable[[str], None]) -> SearchResult:
    """Score candidate patches cluster by cluster until the search ends (module docstring). `indices` are the
    training set's .beton indices; every array in the result is by position in it."""
    dev = km.centroids.device
    n, k = len(indices), len(km.centroids)
    gen = torch.Generator().manual_seed(int(seed) + 0x5EA)
    assign = km.assign.cpu().numpy()
    queues = [list(np.flatnonzero(assign == c)[torch.randperm(int((assign == c).sum()), generator=gen).numpy()])
              for c in range(k)]  # each cluster's members in a seeded random order (reference random_cluster_wise_i)
    tpos = test_set(km, cfg.test_images, gen)
    test, _ = reader.read(indices[tpos], batch)
    test = test.to(dev)
    test_assign = km.assign[torch.as_tensor(tpos, device=dev)]
    res = SearchResult(score=np.zeros(n, np.int64), scored=np.zeros(n, bool), top=np.full(n, -1, np.int64),
                       left=np.full(n, -1, np.int64), size=np.zeros((n, 2), np.int64), test_positions=tpos,
                       rounds=[])
    candidates = list(range(k))
    while candidates:
        pos = [q.pop(0) for c in candidates for q in [queues[c]] for _ in range(min(len(q), cfg.per_iteration))]
        if not pos:
            break
        pos = np.asarray(pos, np.int64)
        images, sizes = reader.read(indices[pos], batch)
        images = images.to(dev)
        top, left = gradcam_windows(net, images, km.centroids, w, cfg.cam_layer, batch)
        patches = crop_windows(images, top, left, w)
        flips = flip_scores(net, patches, km.assign[torch.as_tensor(pos, device=dev)], test, test_assign,
                            km.centroids, amp, batch, gen)
        res.score[pos], res.scored[pos] = flips.numpy(), True
        res.top[pos], res.left[pos], res.size[pos] = top.cpu().numpy(), left.cpu().numpy(), sizes.numpy()
        best = np.full(k, np.iinfo(np.int64).min)  # a cluster's score: its best image (unscored count as 0)
        np.maximum.at(best, assign, res.score)
        order = sorted(candidates, key=lambda c: (-best[c], c))
        res.rounds.append({"candidates": int(len(pos)), "clusters": len(candidates), "best_score": int(flips.max())})
        log(f"[patchsearch] round {len(res.rounds)}: scored {len(pos)} images of {len(candidates)} clusters, "
            f"{int(res.scored.sum())} of {n} so far, best poison score {int(res.score.max())}")
        if cfg.prune > 0:
            rem = int(cfg.prune * len(order))
            candidates = order[:-rem] if rem else []
        else:
            candidates = order
    return res
