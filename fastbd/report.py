"""Tables and plots: the one home of markdown tables and of matplotlib figures.

Sweep reports turn a flat list of per-run result rows into a CSV, a markdown summary and plots. Each row
is a plain dict with the keys `run_id`, PARAM_KEYS, `state`, `error` and METRIC_KEYS (values may be None).
This module only consumes rows; collecting them from run folders happens elsewhere (fastbd.sweep).

    paths = write_report(Path("reports/sweep"), rows, title="MoCo vs BYOL, HTBA triggers")

An evaluation's own outputs are drawn here too: `report_markdown` (RUN/eval/report.md, `fastbd compare`)
and `heatmap_png` (the confusion-matrix heatmap, RUN/eval/conf_matrix_poisoned.png).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from beton_builders.files import atomic_write, atomic_write_bytes
from fastbd.metrics import as_count, check_cm

Row = dict[str, Any]

PARAM_KEYS: tuple[str, ...] = ("method", "trigger", "target", "rate", "poisoned", "seed", "defense",
                               "clean_fraction", "label_fraction")
METRIC_KEYS: tuple[str, ...] = ("clean_top1", "patched_top1", "target_fp", "nontarget_count", "asr",
                                "nfp", "knn_top1")
CSV_COLUMNS: tuple[str, ...] = ("run_id", *PARAM_KEYS, "state", *METRIC_KEYS, "error")

# `poisoned` follows from (rate, dataset) and `seed` is what we average over, so neither splits a group.
GROUP_KEYS: tuple[str, ...] = tuple(k for k in PARAM_KEYS if k not in ("seed", "poisoned"))


# --- small helpers -------------------------------------------------------------------------------------

def _sort_key(row: Row) -> tuple:
    """(method, trigger, target, defense, clean_fraction or 0, label_fraction, rate, seed); None-safe so a
    half-filled row never makes sorting raise."""
    def s(k: str) -> str:
        return "" if row.get(k) is None else str(row[k])

    def f(k: str) -> float:
        return float(row.get(k) or 0)
    return (s("method"), s("trigger"), s("target"), s("defense"), f("clean_fraction"),
            f("label_fraction"), f("rate"), f("seed"))


def _num(v: Any) -> float | None:
    """A metric value as float, or None when missing; NaN counts as missing so one bad run does not turn
    a whole group's mean into NaN."""
    if v is None:
        return None
    x = float(v)
    return None if math.isnan(x) else x


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1: with 2-5 seeds the population std understates the spread)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) >= 2 else None)


def defense_label(defense: str | None, clean_fraction: float | None) -> str:
    """"distill 25%" for a distilled student with a known clean fraction, the defense name otherwise."""
    if defense in (None, "none"):
        return "none"
    if clean_fraction is None:
        return str(defense)
    return f"{defense} {clean_fraction * 100:g}%"


# --- tables --------------------------------------------------------------------------------------------

def summary_csv(rows: Iterable[Row]) -> str:
    """One CSV line per run (header CSV_COLUMNS, None as an empty cell, "\\n" line endings), sorted."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in sorted(rows, key=_sort_key):
        w.writerow(["" if row.get(k) is None else row[k] for k in CSV_COLUMNS])
    return buf.getvalue()


def aggregate(rows: Iterable[Row]) -> list[Row]:
    """Group runs by every param but seed/poisoned; per group: params, n (done), failed, pending, and
    `<metric>_mean` / `<metric>_std` over done rows with a value. Sorted like summary_csv."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in GROUP_KEYS)].append(row)
    out = []
    for key, members in groups.items():
        agg: Row = dict(zip(GROUP_KEYS, key))
        agg["poisoned"] = next((r["poisoned"] for r in members if r.get("poisoned") is not None), None)
        done = [r for r in members if r.get("state") == "done"]
        agg["n"] = len(done)
        agg["failed"] = sum(r.get("state") == "failed" for r in members)
        agg["pending"] = sum(r.get("state") == "pending" for r in members)
        for m in METRIC_KEYS:
            vals = [v for v in (_num(r.get(m)) for r in done) if v is not None]
            agg[f"{m}_mean"], agg[f"{m}_std"] = _mean_std(vals)
        out.append({k: agg[k] for k in (*[p for p in PARAM_KEYS if p != "seed"], "n", "failed", "pending",
                                        *[f"{m}_{s}" for m in METRIC_KEYS for s in ("mean", "std")])})
    return sorted(out, key=_sort_key)


def _cell(v: Any) -> str:
    """A markdown table cell: "-" for None; `|` escaped and newlines flattened so the row stays intact."""
    if v is None:
        return "-"
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """"mean ± std" (std omitted when None, "-" when there is no mean)."""
    if mean is None:
        return "-"
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if _num(v) is None else f"{float(v) * 100:.1f}"


def _table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in body]
    return lines


def run_counts(rows: Sequence[Row]) -> str:
    """"Runs: ..." of summary.md. A row is one evaluation (run x defense x pair x label fraction), so runs are
    counted by run_id: failed if any of its rows failed, done if all are done, pending otherwise."""
    states: dict[Any, list] = defaultdict(list)
    for r in rows:
        states[r.get("run_id")].append(r.get("state"))
    runs = {s: 0 for s in ("done", "failed", "pending")}
    for st in states.values():
        runs["failed" if "failed" in st else "done" if all(x == "done" for x in st) else "pending"] += 1
    evals = {s: sum(r.get("state") == s for r in rows) for s in ("done", "failed", "pending")}
    return (f"Runs: {len(states)} total, {runs['done']} done, {runs['failed']} failed, {runs['pending']} pending "
            f"({len(rows)} evaluations: {evals['done']} done, {evals['failed']} failed, {evals['pending']} pending).")


def summary_markdown(rows: Sequence[Row], title: str) -> str:
    """A markdown report: run counts, a mean-over-seeds table, one line per run, failed runs with errors."""
    rows = sorted(rows, key=_sort_key)
    lines = [f"# {title}", "", run_counts(rows), "", "## Mean over seeds", ""]
    lines += _table(
        ["method", "trigger", "target", "defense", "label %", "rate", "poisoned", "n", "clean top-1 %",
         "patched top-1 %", "target FP", "ASR %", "kNN top-1 %"],
        ([a["method"], a["trigger"], a["target"], defense_label(a["defense"], a["clean_fraction"]),
          f"{a['label_fraction'] * 100:g}" if a["label_fraction"] is not None else None,
          f"{a['rate']:g}" if a["rate"] is not None else None, a["poisoned"], a["n"],
          _pm(a["clean_top1_mean"], a["clean_top1_std"], 100), _pm(a["patched_top1_mean"], a["patched_top1_std"], 100),
          _pm(a["target_fp_mean"], a["target_fp_std"]), _pm(a["asr_mean"], a["asr_std"], 100),
          _pm(a["knn_top1_mean"], a["knn_top1_std"], 100)] for a in aggregate(rows)))
    lines += ["", "## Runs", ""]
    lines += _table(
        ["run", "method", "trigger", "target", "defense", "label %", "rate", "poisoned", "seed", "state",
         "clean top-1 %", "target FP", "ASR %"],
        ([r["run_id"], r["method"], r["trigger"], r["target"], defense_label(r["defense"], r["clean_fraction"]),
          f"{r['label_fraction'] * 100:g}" if r["label_fraction"] is not None else None,
          f"{r['rate']:g}" if r["rate"] is not None else None, r["poisoned"], r["seed"], r["state"],
          _pct(r["clean_top1"]),
          f"{r['target_fp']} / {r['nontarget_count'] if r['nontarget_count'] is not None else '-'}"
          if r["target_fp"] is not None else None, _pct(r["asr"])] for r in rows))
    failed = [r for r in rows if r.get("state") == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += _table(["run", "error"], ([r["run_id"], r.get("error")] for r in failed))
    return "\n".join(lines) + "\n"


# The models table of an evaluation (RUN/eval/report.md) and of `fastbd compare`.
EVAL_COLUMNS: tuple[str, ...] = ("model", "clean top-1", "patched top-1", "target FP (of N non-target)", "ASR",
                                 "NFP", "kNN top-1")


def report_markdown(rows: list[Row]) -> str:
    """A markdown table of models. Row keys (all optional; missing or None shows as "-"): `model`,
    `clean_top1`, `patched_top1`, `target_fp`, `nontarget_count`, `asr`, `nfp`, `knn_top1`. Top-1s and ASR
    are fractions shown as percentages with one decimal; NFP with two decimals; target FP as `FP / N`."""
    def fp(r: Row) -> str | None:
        if r.get("target_fp") is None:
            return None
        n = r.get("nontarget_count")
        return f"{as_count(r['target_fp'])}" + ("" if n is None else f" / {as_count(n)}")
    body = ([r.get("model"), _pct(r.get("clean_top1")), _pct(r.get("patched_top1")), fp(r), _pct(r.get("asr")),
             None if r.get("nfp") is None else f"{float(r['nfp']):.2f}", _pct(r.get("knn_top1"))] for r in rows)
    return "\n".join(_table(EVAL_COLUMNS, body)) + "\n"


# --- plots ---------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # headless: reports are written on cluster nodes without a display
    import matplotlib.pyplot as plt
    return plt


# (metric, y label, scale): ASR and accuracy as %, target FP as a count.
_PANELS: tuple[tuple[str, str, float], ...] = (("target_fp", "target FP (count)", 1.0),
                                              ("asr", "ASR (%)", 100.0),
                                              ("clean_top1", "clean top-1 (%)", 100.0))


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


def write_report(out_dir: Path, rows: Sequence[Row], title: str, rate_label: str = "poison rate") -> list[Path]:
    """Write summary.csv, summary.md and plots/ under out_dir (each file atomically); return their paths."""
    out_dir = Path(out_dir)
    rows = list(rows)
    written = [atomic_write_bytes(out_dir / "summary.csv", summary_csv(rows).encode()),
               atomic_write_bytes(out_dir / "summary.md", summary_markdown(rows, title).encode())]
    return written + plot_rates(rows, out_dir / "plots", rate_label)
