"""Figures: the one home of matplotlib in fastbd (sweep plots, training-time backdoor curves, heatmaps).

    plot_rates(rows, "SWEEP/plots")      target FP, ASR, clean top-1, kNN target FP against the poison rate
    plot_curves(curves, "SWEEP/plots")   the monitor's kNN checks against epochs, poisoned vs clean
    heatmap_png(path, cm, classes, ...)  an evaluation's confusion matrix (RUN/eval/conf_matrix_poisoned.png)
    pr_curve_png(path, curves, point)    a detector's precision-recall curves (RUN/defense_patchsearch/pr_curve.png)

Rows are fastbd.report's result rows; every figure is written atomically, as PNG (and PDF for sweeps).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from beton_builders.files import atomic_write
from fastbd.metrics import _mean_std, _num, as_count, check_cm, defense_label

Row = dict  # a result row (fastbd.report's schema)

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # headless: reports are written on cluster nodes without a display
    import matplotlib.pyplot as plt
    return plt


# (metric, y label, scale): ASR and accuracy as %, target FP as a count.
_PANELS: tuple[tuple[str, str, float], ...] = (("target_fp", "target FP (count)", 1.0),
                                              ("asr", "ASR (%)", 100.0),
                                              ("clean_top1", "clean top-1 (%)", 100.0),
                                              ("knn_target_fp", "kNN target FP (count)", 1.0))


def _rate_series(rows: Sequence[Row], metric: str) -> dict[tuple, list[tuple[float, float, float | None]]]:
    """(method, defense, clean_fraction) -> [(rate, mean, std)] pooling seeds, triggers and targets."""
    pts: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = _num(r.get(metric))
        if v is not None and r.get("rate") is not None:
            pts[(r["method"], r["defense"], r["clean_fraction"])][float(r["rate"])].append(v)
    return {line: [(rate, *_mean_std(vals)) for rate, vals in sorted(by_rate.items())]
            for line, by_rate in pts.items()}


def _line_sort(line: tuple) -> tuple:
    method, defense, cf = line
    return (str(method), defense not in (None, "none"), str(defense), cf or 0.0)


def plot_rates(rows: Sequence[Row], out_dir: Path, rate_label: str = "poison rate") -> list[Path]:
    """Per label fraction, `rate_lf{lf:g}.png/.pdf`: target FP, ASR and clean top-1 vs poison rate, one
    line per (method, defense variant), mean ± sample std over every done run at that point."""
    done = [r for r in rows if r.get("state") == "done" and r.get("label_fraction") is not None]
    if not done:
        return []
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = sorted({str(r["method"]) for r in done})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}  # one colour per method across panels/figures
    written: list[Path] = []
    for lf in sorted({float(r["label_fraction"]) for r in done}):
        subset = [r for r in done if float(r["label_fraction"]) == lf]
        fig, axes = plt.subplots(1, len(_PANELS), figsize=(5 * len(_PANELS), 4))
        for ax, (metric, ylabel, scale) in zip(axes, _PANELS):
            series = _rate_series(subset, metric)
            for line in sorted(series, key=_line_sort):
                method, defense, cf = line
                attacked = defense in (None, "none")
                x = [p[0] for p in series[line]]
                y = [p[1] * scale for p in series[line]]
                err = [0.0 if p[2] is None else p[2] * scale for p in series[line]]
                ax.errorbar(x, y, yerr=err if any(err) else None, capsize=3, marker="o" if attacked else "s",
                            linestyle="-" if attacked else "--", color=colors[str(method)],
                            label=str(method) if attacked else f"{method} + {defense_label(defense, cf)}")
            ax.set_xlabel(rate_label)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if series:
                ax.legend(fontsize=8, handlelength=3)  # long enough to show the dashes
        fig.suptitle(f"label fraction {lf * 100:g}%")
        for ext in ("png", "pdf"):
            path = out_dir / f"rate_lf{lf:g}.{ext}"
            # savefig infers the format from the suffix, so name it explicitly for the temp file.
            written.append(atomic_write(path, lambda p, e=ext: fig.savefig(p, format=e, bbox_inches="tight")))
        plt.close(fig)
    return written


def _nice_step(n: int, ticks: int = 10) -> int:
    raw = max(1.0, n / ticks)
    mag = 10 ** math.floor(math.log10(raw))
    return int(next((m * mag for m in (1, 2, 5) if m * mag >= raw), 10 * mag))


def _short(s: str, n: int = 18) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def heatmap_png(path, cm, class_names: Sequence[str] | None = None, title: str = "",
                highlight: int | None = None) -> Path:
    """A row-normalised confusion-matrix heatmap (rows = true, columns = predicted), 850 x 800 px PNG.

    Class names label both axes when C <= 30 (cell counts are printed when C <= 15); otherwise class ids
    are ticked every few classes. `highlight` outlines that (target) column in red and names it in red.
    """
    from matplotlib.patches import Rectangle

    cm = check_cm(cm)
    n = cm.shape[0]
    if class_names is not None and len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} classes")
    if highlight is not None and not 0 <= int(highlight) < n:
        raise ValueError(f"highlight {highlight} outside [0, {n})")
    labelled = 0 < n <= 30
    names = [str(c) for c in range(n)] if class_names is None else [str(c) for c in class_names]
    cmf = cm.astype(np.float64)
    rows = cmf.sum(axis=1, keepdims=True)
    norm = np.divide(cmf, rows, out=np.zeros_like(cmf), where=rows > 0)
    red = (0.86, 0.12, 0.12)
    plt = _pyplot()
    fig = plt.figure(figsize=(8.5, 8.0), dpi=100)
    left = 0.2 if labelled else 0.1
    ax = fig.add_axes((left, 0.2 if labelled else 0.1, 0.78 - left, 0.7))
    image = ax.imshow(norm if n else np.zeros((1, 1)), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    fig.colorbar(image, cax=fig.add_axes((0.82, ax.get_position().y0, 0.025, 0.7)), label="row fraction")
    if 0 < n <= 15:
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(as_count(v)), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.55 else "black")
    ticks = list(range(n)) if labelled else list(range(0, n, _nice_step(n)))
    if highlight is not None and int(highlight) not in ticks:
        ticks = sorted([*ticks, int(highlight)])  # the target column is always named
    text = [_short(names[c]) if labelled else str(c) for c in ticks]
    ax.set_xticks(ticks, text, rotation=90 if labelled else 0, fontsize=7 if labelled else 8)
    ax.set_yticks(ticks, text, fontsize=7 if labelled else 8)
    if highlight is not None:
        h = int(highlight)
        ax.get_xticklabels()[ticks.index(h)].set_color(red)
        ax.get_yticklabels()[ticks.index(h)].set_color(red)
        ax.add_patch(Rectangle((h - 0.5, -0.5), 1, n, fill=False, edgecolor=red, linewidth=2, clip_on=False))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png"))
    finally:
        plt.close(fig)


def _curve_series(curves: Sequence[Row], key) -> dict[tuple, list[tuple[int, float, float | None]]]:
    """(method, trigger, rate, defense, clean_fraction) -> [(epoch, mean, std)] over seeds, of key(check).
    Rates and triggers stay apart (averaging a 0.05 and a 0.5 run into one line would hide both); the clean
    control (rate 0) is one line whatever build it was checked on."""
    pts: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in curves:
        rate = float(c["rate"] or 0)
        line = (c["method"], c.get("trigger") if rate else None, rate, c["defense"], c["clean_fraction"])
        for chk in c["checks"]:
            v = key(chk)
            if v is not None:
                pts[line][int(chk["epoch"])].append(float(v))
    return {line: [(e, *_mean_std(v)) for e, v in sorted(by_e.items())] for line, by_e in pts.items()}


def plot_curves(curves: Sequence[Row], out_dir: Path) -> list[Path]:
    """`backdoor_epochs.png/.pdf`: the training-time kNN checks against epochs, one line per method and
    poisoned / clean (dashed) / distilled (dotted): target FP on triggered non-target images (as % of them),
    and kNN top-1; mean over seeds, with a band of one sample std. A colour per method, or, for one method
    with several poisoned arms, a colour per arm."""
    if not curves:
        return []
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = sorted({str(c["method"]) for c in curves})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}

    def pct(key):
        return lambda chk: (None if chk.get(key) is None or not chk.get("knn_nontarget_count")
                            else 100.0 * chk[key] / chk["knn_nontarget_count"])
    panels = ((pct("knn_target_fp"), "kNN target FP, triggered (% of non-target)"),
              (pct("knn_target_fp_clean"), "kNN target FP, clean images (%)"),
              (lambda chk: None if chk.get("knn_clean_top1") is None else 100.0 * chk["knn_clean_top1"],
               "kNN top-1 (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    arms = sorted({(str(c.get("trigger")), float(c["rate"])) for c in curves if c["rate"]})  # poisoned trigger x rate
    markers = {arm: "os^vD<>p"[i % 8] for i, arm in enumerate(arms)}
    n_triggers, n_rates = len({t for t, _ in arms}), len({r for _, r in arms})
    # one method with several poisoned arms (a rate or trigger study): a colour per arm, the clean line grey
    by_arm = len(methods) == 1 and len(arms) > 1

    def colour(method, trigger, rate):
        if not by_arm:
            return colors[str(method)]
        return f"C{arms.index((str(trigger), float(rate))) % 10}" if rate else "0.35"

    def order(ln):  # per method: poisoned lines first, then the clean one, then defenses
        return str(ln[0]), not ln[2], str(ln[1]), ln[2], str(ln[3]), ln[4] or 0.0
    for ax, (key, ylabel) in zip(axes, panels):
        series = _curve_series(curves, key)
        for line in sorted(series, key=order):
            method, trigger, rate, defense, cf = line
            x = [p[0] for p in series[line]]
            y = [p[1] for p in series[line]]
            sd = [0.0 if p[2] is None else p[2] for p in series[line]]
            style = ":" if defense not in (None, "none") else ("-" if rate else "--")
            what = "poisoned" if rate else "clean"
            if rate and n_triggers > 1:
                what += f" {trigger}"
            if rate and n_rates > 1:
                what += f" {rate:g}"
            label = f"{method} {what}"
            if defense not in (None, "none"):
                label += f" + {defense_label(defense, cf)}"
            ax.plot(x, y, linestyle=style, marker=markers.get((str(trigger), rate), "o"), markersize=3,
                    color=colour(method, trigger, rate), label=label)
            if any(sd):
                ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                                color=colour(method, trigger, rate), alpha=0.12)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8, handlelength=3)
    written = []
    for ext in ("png", "pdf"):
        path = out_dir / f"backdoor_epochs.{ext}"
        written.append(atomic_write(path, lambda p, e=ext: fig.savefig(p, format=e, bbox_inches="tight")))
    plt.close(fig)
    return written




def pr_curve_png(path, curves: dict, point=None, title: str = "") -> Path:
    """Precision against recall of removing the top k of each ranking (`curves`: name -> (precision, recall)
    arrays over k = 1..N), with the removed set as one marked point (recall, precision)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (prec, rec) in curves.items():
        ax.plot(rec, prec, label=name)
    if point is not None:
        ax.plot([point[0]], [point[1]], "k*", markersize=12, label="removed set")
    ax.set_xlabel("recall (of the poisoned training images)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)
