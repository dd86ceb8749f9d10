"""Jigsaw puzzles (Noroozi & Favaro ECCV 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles"): the non-contrastive method Saha et al. contrast the attacked SSL methods with.

The view is cut into grid x grid tiles, shuffled by one of a fixed set of permutations; every tile goes
through the shared backbone (the paper's siamese "context-free network"), and an MLP over the
concatenated tile features classifies which permutation was applied.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Method

ENUMERATE_UP_TO = 5040  # 7!: below this, every permutation is a candidate; above, a seeded random sample


def permutation_set(n_tiles: int, count: int, seed: int = 0, candidates: int = 2000) -> np.ndarray:
    """(count, n_tiles) distinct permutations picked greedily to be far apart in Hamming distance
    (Noroozi & Favaro Sec. 3.2, Algorithm 1): a class set of near-identical puzzles would be ambiguous.

    Each step adds the candidate whose *minimum* distance to those already picked is largest (ties:
    largest total distance, Algorithm 1's criterion; then lowest index), so no permutation repeats.
    For 9 tiles the 9! candidates are replaced by max(candidates, 20 * count) random ones. Deterministic.
    """
    total = math.factorial(n_tiles)
    if not 1 <= count <= total:
        raise ValueError(f"method.jigsaw.permutations must be in [1, {total}] for {n_tiles} tiles, got {count}")
    rng = np.random.default_rng(seed)
    if total <= ENUMERATE_UP_TO:
        cands = np.array(list(itertools.permutations(range(n_tiles))), dtype=np.int64)
    else:
        draws = rng.random((max(candidates, 20 * count), n_tiles)).argsort(1)
        cands = np.unique(draws, axis=0)  # sorted: order independent of duplicates among the draws
    first = int(rng.integers(len(cands)))
    picked = [first]
    d = (cands != cands[first]).sum(1)
    min_d, sum_d = d.copy(), d.copy()
    for _ in range(count - 1):
        i = int(np.argmax(min_d * (n_tiles * count + 1) + sum_d))  # lexicographic (min, sum)
        picked.append(i)
        d = (cands != cands[i]).sum(1)
        np.minimum(min_d, d, out=min_d)
        sum_d += d
    return cands[picked]


def cut_tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, grid*grid, C, t, t), row-major; the centre square of side grid*t is used,
    t = min(H, W) // grid, so sizes that are not multiples of the grid lose a few border pixels."""
    n, c, h, w = x.shape
    t = min(h, w) // grid
    top, left = (h - grid * t) // 2, (w - grid * t) // 2
    x = x[:, :, top:top + grid * t, left:left + grid * t]
    return x.reshape(n, c, grid, t, grid, t).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, t, t)


def jitter_tiles(tiles: torch.Tensor, jitter: int) -> torch.Tensor:
    """(M, C, t, t) -> (M, C, t - j, t - j), each tile cropped at its own random offset in [0, j]: the
    gap between tiles Noroozi & Favaro leave so edges cannot be matched (Sec. 3.3)."""
    m, _, t, _ = tiles.shape
    s = t - jitter
    if s < 1:
        raise ValueError(f"method.jigsaw.tile_jitter={jitter} px leaves nothing of a {t}-px tile")
    off = torch.randint(0, jitter + 1, (2, m, 1), device=tiles.device)
    rows = off[0] + torch.arange(s, device=tiles.device)  # (M, s)
    cols = off[1] + torch.arange(s, device=tiles.device)
    ar = torch.arange(m, device=tiles.device)[:, None, None]
    return tiles[ar, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (M, s, s, C) -> (M, C, s, s)


def normalise_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """Per-tile zero mean, unit std over all its pixels (Sec. 3.3), so low-level statistics shared by
    neighbouring tiles are no shortcut. Relative colour within a tile is kept."""
    dims = (1, 2, 3)
    mean = tiles.mean(dims, keepdim=True)
    std = tiles.std(dims, keepdim=True)
    return (tiles - mean) / (std + 1e-5)


@dataclass
class JigsawConfig:
    grid: int = 3  # tiles per side
    permutations: int = 100  # classes: a fixed, seeded set of maximally different permutations
    tile_jitter: int = 0  # px of random shift inside each tile (0 = none)
    tile_norm: bool = True  # normalise each tile's mean/std on its own (Noroozi & Favaro 2016, Sec. 3.3: no shortcuts)
    hidden: int = 1024  # width of the classifier MLP over the concatenated tile features


class Jigsaw(Method):
    VIEWS = ("geometric",)
    Config = JigsawConfig

    def __init__(self, encoder: nn.Module, feat_dim: int, cfg, num_samples: int):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        c = cfg.jigsaw
        n_tiles = c.grid * c.grid
        # Saved with the checkpoint, so a run's classes are known even if the selection code changes.
        self.register_buffer("perms", torch.from_numpy(permutation_set(n_tiles, c.permutations)))
        self.head = nn.Sequential(nn.Linear(n_tiles * feat_dim, c.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(c.hidden, c.permutations))

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.cfg.jigsaw
        x = views[0]
        tiles = cut_tiles(x, c.grid)
        n, g2 = tiles.shape[:2]
        label = torch.randint(0, self.perms.shape[0], (n,), device=x.device)
        # Puzzle position i shows original tile perms[label][i].
        tiles = tiles[torch.arange(n, device=x.device)[:, None], self.perms[label]].flatten(0, 1)
        if c.tile_jitter > 0:
            tiles = jitter_tiles(tiles, c.tile_jitter)
        if c.tile_norm:
            tiles = normalise_tiles(tiles)
        if x.is_contiguous(memory_format=torch.channels_last):
            tiles = tiles.contiguous(memory_format=torch.channels_last)
        feats = self.encoder(tiles).reshape(n, g2 * self.feat_dim)
        logits = self.head(feats)
        loss = F.cross_entropy(logits, label)
        acc = (logits.detach().argmax(1) == label).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}
