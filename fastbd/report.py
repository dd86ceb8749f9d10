"""Tables: the one home of result rows' CSV and markdown (figures are fastbd/plots.py).

Sweep reports turn a flat list of per-run result rows into a CSV, a markdown summary and plots. Each row
is a plain dict with the keys `run_id`, PARAM_KEYS, `state`, `error` and METRIC_KEYS (values may be None).
This module only consumes rows; collecting them from run folders happens elsewhere (fastbd.sweep).

    paths = write_report(Path("reports/sweep"), rows, title="MoCo vs BYOL, HTBA triggers")

An evaluation's own table is made here too: `report_markdown` (RUN/eval/report.md, `fastbd compare`), and a
defense's: `patchsearch_markdown` (RUN/defense_patchsearch/report.md).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence


from beton_builders.files import atomic_write_bytes
from fastbd.metrics import _mean_std, _num, as_count, defense_label

Row = dict[str, Any]

PARAM_KEYS: tuple[str, ...] = ("method", "trigger", "target", "rate", "poisoned", "seed", "defense",
                               "clean_fraction", "label_fraction")
# The probe's metrics, then the kNN's (the first k of the eval): target FP on the triggered non-target
# images beside the same model's target FP on the clean ones, which is the baseline it must be read against.
# Last the trigger shift's numbers (a diagnostic, evaluate.trigger_shift): read them against a clean control.
METRIC_KEYS: tuple[str, ...] = ("clean_top1", "patched_top1", "target_fp", "target_fp_clean", "nontarget_count",
                                "asr", "nfp", "knn_top1", "knn_target_fp", "knn_target_fp_clean", "knn_asr",
                                "shift_cos_target", "shift_rank_target", "shift_length")
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
         "patched top-1 %", "target FP", "target FP clean", "ASR %", "kNN top-1 %", "kNN target FP",
         "kNN target FP clean", "shift cos target"],
        ([a["method"], a["trigger"], a["target"], defense_label(a["defense"], a["clean_fraction"]),
          f"{a['label_fraction'] * 100:g}" if a["label_fraction"] is not None else None,
          f"{a['rate']:g}" if a["rate"] is not None else None, a["poisoned"], a["n"],
          _pm(a["clean_top1_mean"], a["clean_top1_std"], 100), _pm(a["patched_top1_mean"], a["patched_top1_std"], 100),
          _pm(a["target_fp_mean"], a["target_fp_std"]), _pm(a["target_fp_clean_mean"], a["target_fp_clean_std"]),
          _pm(a["asr_mean"], a["asr_std"], 100), _pm(a["knn_top1_mean"], a["knn_top1_std"], 100),
          _pm(a["knn_target_fp_mean"], a["knn_target_fp_std"]),
          _pm(a["knn_target_fp_clean_mean"], a["knn_target_fp_clean_std"]),
          _pm(a["shift_cos_target_mean"], a["shift_cos_target_std"], digits=2)] for a in aggregate(rows)))
    lines += ["", "## Runs", ""]
    lines += _table(
        ["run", "method", "trigger", "target", "defense", "label %", "rate", "poisoned", "seed", "state",
         "clean top-1 %", "target FP", "target FP clean", "ASR %", "kNN target FP"],
        ([r["run_id"], r["method"], r["trigger"], r["target"], defense_label(r["defense"], r["clean_fraction"]),
          f"{r['label_fraction'] * 100:g}" if r["label_fraction"] is not None else None,
          f"{r['rate']:g}" if r["rate"] is not None else None, r["poisoned"], r["seed"], r["state"],
          _pct(r["clean_top1"]),
          f"{r['target_fp']} / {r['nontarget_count'] if r['nontarget_count'] is not None else '-'}"
          if r["target_fp"] is not None else None, r.get("target_fp_clean"), _pct(r["asr"]),
          r.get("knn_target_fp")] for r in rows))
    failed = [r for r in rows if r.get("state") == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += _table(["run", "error"], ([r["run_id"], r.get("error")] for r in failed))
    return "\n".join(lines) + "\n"


# The models table of an evaluation (RUN/eval/report.md) and of `fastbd compare`.
EVAL_COLUMNS: tuple[str, ...] = ("model", "clean top-1", "patched top-1", "target FP (of N non-target)",
                                 "target FP clean", "ASR", "NFP", "kNN top-1", "kNN target FP", "kNN target FP clean",
                                 "kNN ASR", "shift cos target (rank)")


def report_markdown(rows: list[Row]) -> str:
    """A markdown table of models. Row keys (all optional; missing or None shows as "-"): `model`,
    `clean_top1`, `patched_top1`, `target_fp`, `nontarget_count`, `target_fp_clean`, `asr`, `nfp`, the
    kNN's `knn_top1`, `knn_target_fp`, `knn_target_fp_clean`, `knn_asr`, and the trigger shift's
    `shift_cos_target`, `shift_rank_target`. Top-1s and ASR are fractions shown as percentages with one
    decimal; NFP and the shift's cosine with two decimals; target FP as `FP / N`; "target FP clean" is the
    same model's target FP on the clean validation images, the baseline a triggered FP is read against."""
    def fp(r: Row, key: str = "target_fp") -> str | None:
        if r.get(key) is None:
            return None
        n = r.get("nontarget_count")
        return f"{as_count(r[key])}" + ("" if n is None else f" / {as_count(n)}")

    def count(v: Any) -> str | None:
        return None if v is None else str(as_count(v))
    body = ([r.get("model"), _pct(r.get("clean_top1")), _pct(r.get("patched_top1")), fp(r),
             count(r.get("target_fp_clean")), _pct(r.get("asr")),
             None if r.get("nfp") is None else f"{float(r['nfp']):.2f}", _pct(r.get("knn_top1")),
             fp(r, "knn_target_fp"), count(r.get("knn_target_fp_clean")), _pct(r.get("knn_asr")),
             None if r.get("shift_cos_target") is None else
             f"{float(r['shift_cos_target']):.2f} ({r.get('shift_rank_target')})"] for r in rows)
    return "\n".join(_table(EVAL_COLUMNS, body)) + "\n"


def trigger_shift_line(ts: dict | None, names: Sequence[str]) -> str:
    """report.md's line for evaluate.trigger_shift (a diagnostic, not a paper metric); "" when absent."""
    if not ts:
        return ""
    tgt = ("" if ts.get("cos_target") is None else
           f"cos with the target's direction {ts['cos_target']:.2f} (rank {ts['rank_target']} of {len(names)}); ")
    length = "-" if ts.get("length") is None else f"{ts['length']:.2f}"
    return (f"Trigger shift (kNN space, mean over {ts['images']} triggered non-target images; a diagnostic): "
            f"{tgt}nearest class {names[ts['nearest_class']]} (cos {ts['nearest_cos']:.2f}); "
            f"length {length} of the mean distance between class means.\n")


def detection_markdown(rows: Sequence[Row]) -> str:
    """summary.md's PatchSearch section: per defended run, the removed set scored against the manifest
    (precision, recall, poisoned images left), both rankings' average precision, the found boxes' mean IoU,
    and the defense's wall time beside the suspect encoder's training time. Empty without rows."""
    if not rows:
        return ""
    lines = ["", "## PatchSearch detection (scored against the manifest)", ""]
    lines += _table(["run", "method", "trigger", "target", "rate", "seed", "poisoned / images", "removed",
                     "precision %", "recall %", "poisoned left", "AP search %", "AP classifier %", "mean IoU",
                     "defense s", "training s"],
                    ([r["run_id"], r["method"], r["trigger"], r["target"], f"{r['rate']:g}", r["seed"],
                      f"{r['poisoned']} / {r['training_images']}", r["count"], _pct(r["precision"]),
                      _pct(r["recall"]), r["poisoned_left"], _pct(r["ap_search"]), _pct(r["ap_classifier"]),
                      "-" if r["iou_mean"] is None else f"{r['iou_mean']:.2f}", f"{r['defense_s']:.0f}",
                      f"{r['train_s']:.0f}"] for r in sorted(rows, key=lambda r: (r["method"], r["rate"], r["seed"]))))
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, rows: Sequence[Row], title: str, rate_label: str = "poison rate",
                 curves: Sequence[Row] = (), defenses: Sequence[Row] = ()) -> list[Path]:
    """Write summary.csv, summary.md and plots/ under out_dir (each file atomically); return their paths.
    `curves` (fastbd.sweep.results.collect_curves) adds the training-time backdoor curves; `defenses`
    (collect_defenses) the PatchSearch detection table."""
    out_dir = Path(out_dir)
    rows = list(rows)
    text = summary_markdown(rows, title) + detection_markdown(defenses)
    written = [atomic_write_bytes(out_dir / "summary.csv", summary_csv(rows).encode()),
               atomic_write_bytes(out_dir / "summary.md", text.encode())]
    from fastbd.plots import plot_curves, plot_rates  # matplotlib only when a report is written

    return written + plot_rates(rows, out_dir / "plots", rate_label) + plot_curves(curves, out_dir / "plots")


# --- a defense's own report (RUN/defense_patchsearch/report.md) ------------------------------------------

def _frac(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def patchsearch_markdown(report: dict) -> str:
    """report.md of `fastbd defend patchsearch`: the removed set and both rankings scored against the
    manifest, the boxes' overlap with the true triggers, the top-ranked images, and the cost per phase."""
    s = report["scored_against_manifest"]
    rm, cost = s["removed"], report["cost"]
    lines = [f"# PatchSearch on {report['run']}", "",
             f"Build {report['data']}, rate {report['rate']:g}: {s['training_images']} training images, "
             f"{s['poisoned_images']} of them poisoned (manifest). Search: {report['search']['clusters']} clusters, "
             f"{report['search']['window_px']}-px windows, {report['search']['scored']} images scored in "
             f"{len(report['search']['rounds'])} rounds against {report['search']['test_images']} test images.", "",
             "## Removed by the poison classifier", ""]
    lines += _table(["removed", "poisoned removed", "precision", "recall", "poisoned left", "clean removed"],
                    [[rm["count"], rm["true_positives"], _frac(rm["precision"]), _frac(rm["recall"]),
                      rm["poisoned_left"], rm["clean_removed"]]])
    ap = s["average_precision"]
    lines += ["", f"## Rankings at cut-offs (average precision: search {_frac(ap['search'])}, "
                  f"classifier {_frac(ap['classifier'])})", ""]
    lines += _table(["top k", "search precision", "search recall", "classifier precision", "classifier recall"],
                    [[c["k"], _frac(c["search_precision"]), _frac(c["search_recall"]),
                      _frac(c["classifier_precision"]), _frac(c["classifier_recall"])] for c in s["cutoffs"]])
    b = s["boxes"]
    lines += ["", f"## Found windows vs the manifest's boxes ({b['iou']['n']} poisoned images scored)", ""]
    lines += _table(["", "mean", "median", ">= 0.5"],
                    [[name, _pm(b[key]["mean"], None, 1, 3), _pm(b[key]["median"], None, 1, 3),
                      _frac(b[key]["at_least_0.5"])] for name, key in (("IoU", "iou"), ("coverage of the trigger", "coverage"))])
    lines += ["", "## Top-ranked images (their patches train the classifier)", ""]
    lines += _table(["rank", "index", "poisoned", "poison score", "IoU"],
                    [[t["rank"], t["index"], "yes" if t["poisoned"] else "no", t["score"],
                      "-" if t["iou"] is None else f"{t['iou']:.2f}"] for t in s["top"]])
    tr = cost["training"]
    lines += ["", f"## Cost ({cost['device']}{', ' + cost['gpu'] if cost.get('gpu') else ''})", ""]
    lines += _table(["phase", "wall s", "CPU core-s"],
                    [*([k, f"{v['wall_s']:.1f}", f"{v['cpu_core_s']:.1f}"] for k, v in cost["phases"].items()),
                     ["**defense, total**", f"{cost['defense']['wall_s']:.1f}", f"{cost['defense']['cpu_core_s']:.1f}"],
                     [f"training the suspect encoder ({tr['epochs']} epochs)", f"{tr['wall_s']:.1f}",
                      "-" if tr["cpu_core_s"] is None else f"{tr['cpu_core_s']:.1f}"]])
    return "\n".join(lines) + "\n"
