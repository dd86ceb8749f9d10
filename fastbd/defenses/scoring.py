"""A detector scored exactly against the manifest: which training images truly carry the trigger, and where.

The manifest lists every poisoned copy with its box in stored pixels; a run's training set (an index list
into train.beton) holds the copies of its rate. So precision and recall of any ranking or removed set,
the rank of every truly poisoned image, and the overlap of each found patch box with the true box need no
hand labelling. Everything here is a pure function of arrays, tested on constructed cases.
"""

from __future__ import annotations

import numpy as np

from beton_builders.manifest import poisoned_boxes


def truth(manifest: dict, indices: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each training image (by .beton index) is a poisoned copy."""
    return np.isin(np.asarray(indices, np.int64), list(poisoned_boxes(manifest)))


def ranking(scores: np.ndarray) -> np.ndarray:
    """Positions by descending score, ties by position (an unscored image's poison score is 0, as in the
    reference's `(-poison_scores).argsort()`, whose ties we break by position to be deterministic)."""
    scores = np.asarray(scores, np.float64)
    return np.lexsort([np.arange(len(scores)), -scores])


def pr_at_cutoffs(order: np.ndarray, is_poisoned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of removing the top k of `order`, for every k = 1..N."""
    hits = np.cumsum(np.asarray(is_poisoned, bool)[order])
    k = np.arange(1, len(order) + 1)
    total = max(1, int(np.sum(is_poisoned)))
    return hits / k, hits / total


def average_precision(order: np.ndarray, is_poisoned: np.ndarray) -> float | None:
    """Mean of the precision at the rank of each poisoned image (None when there is none)."""
    p = np.asarray(is_poisoned, bool)[order]
    if not p.any():
        return None
    prec, _ = pr_at_cutoffs(order, is_poisoned)
    return float(prec[p].mean())


def ranks(order: np.ndarray) -> np.ndarray:
    """(N,) 1-based rank of each position in `order`."""
    r = np.empty(len(order), np.int64)
    r[order] = np.arange(1, len(order) + 1)
    return r


def iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, coverage) of boxes `a` against boxes `b`, both (M, 4) [x, y, w, h]; coverage is the fraction of
    each `b` box inside its `a` box (how much of the true trigger the found window holds)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / np.where(union > 0, union, 1), inter / np.where(b[:, 2] * b[:, 3] > 0, b[:, 2] * b[:, 3], 1)


def _summary(v: np.ndarray) -> dict:
    return {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None,
            "median": float(np.median(v)) if len(v) else None,
            "at_least_0.5": float((v >= 0.5).mean()) if len(v) else None}


def cutoff_table(orders: dict[str, np.ndarray], is_poisoned: np.ndarray, cutoffs) -> list[dict]:
    """Rows {k, <name>_precision, <name>_recall, ...} at each cut-off k (capped at N, sorted, unique)."""
    n = len(is_poisoned)
    ks = sorted({int(k) for k in cutoffs if 0 < int(k) <= n})
    curves = {name: pr_at_cutoffs(o, is_poisoned) for name, o in orders.items()}
    return [{"k": k, **{f"{name}_{w}": float(c[i][k - 1]) for name, c in curves.items()
                        for i, w in ((0, "precision"), (1, "recall"))}} for k in ks]


def score_detection(manifest: dict, indices: np.ndarray, search_score: np.ndarray, scored: np.ndarray,
                    p_poison: np.ndarray, removed: np.ndarray, boxes: np.ndarray, topk: int) -> dict:
    """report.json's `scored_against_manifest`: the removed set's precision and recall, both rankings
    (the search's poison score; the classifier's p(poisoned)) at cut-offs and as average precision, the rank
    of every truly poisoned image, and the IoU / coverage of the found boxes (`boxes` (N, 4) in stored
    pixels, NaN where no window was found) with the manifest's."""
    indices = np.asarray(indices, np.int64)
    is_p = truth(manifest, indices)
    n_p, removed = int(is_p.sum()), np.asarray(removed, bool)
    tp = int((removed & is_p).sum())
    orders = {"search": ranking(search_score), "classifier": ranking(p_poison)}
    rk = {k: ranks(o) for k, o in orders.items()}
    true_box = poisoned_boxes(manifest)
    pos = np.flatnonzero(is_p)
    found = ~np.isnan(np.asarray(boxes, np.float64)[:, 0])
    with_box = pos[found[pos]]
    ov, cov = iou(boxes[with_box], np.asarray([true_box[int(indices[i])] for i in with_box]).reshape(-1, 4))
    per_image = {int(i): (float(a), float(c)) for i, a, c in zip(with_box, ov, cov)}
    top = orders["search"][:topk]
    top_rows = [{"rank": r + 1, "index": int(indices[i]), "poisoned": bool(is_p[i]), "score": int(search_score[i]),
                 "box": [round(float(v), 2) for v in boxes[i]] if found[i] else None,
                 "iou": per_image.get(int(i), (None, None))[0], "coverage": per_image.get(int(i), (None, None))[1]}
                for r, i in enumerate(top)]
    cut = [topk, 10, 20, 50, 100, 200, 500, 1000, n_p, 2 * n_p, int(removed.sum())]
    return {
        "training_images": int(len(indices)), "poisoned_images": n_p,
        "removed": {"count": int(removed.sum()), "true_positives": tp,
                    "precision": tp / int(removed.sum()) if removed.any() else None,
                    "recall": tp / n_p if n_p else None, "poisoned_left": n_p - tp,
                    "clean_removed": int(removed.sum()) - tp},
        "average_precision": {k: average_precision(o, is_p) for k, o in orders.items()},
        "cutoffs": cutoff_table(orders, is_p, cut),
        "scored_images": int(np.sum(scored)), "poisoned_scored": int(np.sum(np.asarray(scored, bool) & is_p)),
        "boxes": {"iou": _summary(ov), "coverage": _summary(cov)},
        "top": top_rows,
        "poisoned_ranks": [{"index": int(indices[i]), "search_rank": int(rk["search"][i]),
                            "classifier_rank": int(rk["classifier"][i]), "scored": bool(scored[i]),
                            "score": int(search_score[i]), "p_poison": round(float(p_poison[i]), 4),
                            "removed": bool(removed[i]), "iou": per_image.get(int(i), (None, None))[0],
                            "coverage": per_image.get(int(i), (None, None))[1]} for i in pos],
    }
