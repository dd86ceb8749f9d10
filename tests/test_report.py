"""fastbd.report: CSV, aggregation, markdown and plots from synthetic sweep rows."""

from __future__ import annotations

import csv
import io
import itertools
import statistics
from pathlib import Path

import pytest

from fastbd.plots import plot_curves, plot_rates
from fastbd.report import CSV_COLUMNS, METRIC_KEYS, PARAM_KEYS, aggregate, summary_csv, summary_markdown, write_report

PIL = pytest.importorskip("PIL.Image")


def _row(i: int, **kw) -> dict:
    row = dict(run_id=f"{i:012x}", method="moco", trigger="htba10", target="n02106550", rate=0.005,
               poisoned=650, seed=0, defense="none", clean_fraction=None, label_fraction=0.01, state="done",
               error=None, clean_top1=0.5, patched_top1=0.4, target_fp=100, nontarget_count=4900, asr=0.1,
               nfp=0.02, knn_top1=0.45)
    row.update(kw)
    return row


def _rows() -> list[dict]:
    """2 methods x 3 rates x 2 seeds x {none, distill 25%} at 1% labels, plus a failed and a pending run."""
    rows, i = [], 0
    for method, rate, seed, defense in itertools.product(("moco", "byol"), (0.0, 0.005, 0.01), (0, 1),
                                                         ("none", "distill")):
        i += 1
        bump = 0.01 * seed + (0.1 if method == "byol" else 0.0)
        rows.append(_row(i, method=method, rate=rate, poisoned=int(rate * 130000), seed=seed, defense=defense,
                         clean_fraction=0.25 if defense == "distill" else None,
                         clean_top1=0.5 + bump, target_fp=int(rate * 10000) + seed * 10,
                         asr=rate * 10 + 0.01 * seed, knn_top1=None if seed else 0.4))
    rows.append(_row(100, method="moco", rate=0.01, poisoned=1300, seed=2, state="failed",
                     error="CUDA out of memory", clean_top1=None, patched_top1=None, target_fp=None,
                     nontarget_count=None, asr=None, nfp=None, knn_top1=None))
    rows.append(_row(101, method="byol", rate=0.0, poisoned=0, seed=2, state="failed",
                     error="bad | pipe", clean_top1=None, patched_top1=None, target_fp=None,
                     nontarget_count=None, asr=None, nfp=None, knn_top1=None))
    rows.append(_row(102, method="moco", rate=0.01, poisoned=None, seed=3, state="pending", clean_top1=None,
                     patched_top1=None, target_fp=None, nontarget_count=None, asr=None, nfp=None,
                     knn_top1=None))
    return rows


def _group(aggs, **params):
    [g] = [a for a in aggs if all(a[k] == v for k, v in params.items())]
    return g


def test_csv_header_lines_none_and_order():
    rows = _rows()
    text = summary_csv(rows)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["run_id", *PARAM_KEYS, "state", *METRIC_KEYS, "error"] == list(CSV_COLUMNS)
    assert len(parsed) == len(rows) + 1 and len(text.splitlines()) == len(rows) + 1
    recs = list(csv.DictReader(io.StringIO(text)))
    # None -> empty cell (attacked rows have no clean_fraction; seed-1 rows no kNN).
    assert (recs[0]["method"], recs[0]["defense"], recs[0]["clean_fraction"]) == ("byol", "distill", "0.25")
    attacked = next(r for r in recs if r["defense"] == "none" and r["state"] == "done")
    assert attacked["clean_fraction"] == "" and attacked["error"] == ""
    assert any(r["knn_top1"] == "" and r["state"] == "done" for r in recs)
    # byol sorts before moco; within a method, defense "distill" before "none", then rate, then seed.
    assert [r["method"] for r in recs] == sorted(r["method"] for r in recs)
    moco_none = [(float(r["rate"]), int(r["seed"])) for r in recs if r["method"] == "moco" and r["defense"] == "none"]
    assert moco_none == sorted(moco_none)
    assert {r["error"] for r in recs} >= {"CUDA out of memory", "bad | pipe"}


def test_aggregate_means_stds_and_counts():
    aggs = aggregate(_rows())
    assert len(aggs) == 2 * 3 * 2  # failed/pending rows fall into existing groups
    g = _group(aggs, method="moco", rate=0.01, defense="none")
    assert (g["n"], g["failed"], g["pending"]) == (2, 1, 1)
    assert g["poisoned"] == 1300 and "seed" not in g
    # seeds 0 and 1: clean 0.50/0.51, target FP 100/110, asr 0.10/0.11.
    assert g["clean_top1_mean"] == pytest.approx(0.505)
    assert g["clean_top1_std"] == pytest.approx(statistics.stdev([0.50, 0.51]))
    assert g["target_fp_mean"] == pytest.approx(105.0)
    assert g["target_fp_std"] == pytest.approx(7.0710678, rel=1e-6)  # sample std, not 5.0 (ddof=0)
    assert g["asr_mean"] == pytest.approx(0.105)
    # only seed 0 has kNN: a mean but no std.
    assert g["knn_top1_mean"] == pytest.approx(0.4) and g["knn_top1_std"] is None
    gb = _group(aggs, method="byol", rate=0.0, defense="none")
    assert (gb["n"], gb["failed"], gb["pending"]) == (2, 1, 0)
    gd = _group(aggs, method="moco", rate=0.01, defense="distill")
    assert gd["clean_fraction"] == 0.25 and (gd["n"], gd["failed"]) == (2, 0)
    # a group with no done rows: everything None.
    [only_failed] = aggregate([_rows()[-3]])
    assert only_failed["n"] == 0 and only_failed["failed"] == 1
    assert all(only_failed[f"{m}_mean"] is None and only_failed[f"{m}_std"] is None for m in METRIC_KEYS)


def test_markdown():
    md = summary_markdown(_rows(), "Sweep A")
    assert md.startswith("# Sweep A\n")
    assert "24 done, 2 failed, 1 pending" in md
    assert "## Mean over seeds" in md and "## Runs" in md and "## Failed runs" in md
    # moco / none / 1% / rate 0.01: clean 50.5 ± 0.7, FP 105.0 ± 7.1, ASR 10.5 ± 0.7, kNN 40.0 alone.
    line = next(l for l in md.splitlines()
                if l.startswith("| moco | htba10 | n02106550 | none | 1 | 0.01 |"))
    assert "| 50.5 ± 0.7 |" in line and "| 105.0 ± 7.1 |" in line and "| 10.5 ± 0.7 |" in line
    assert line.rstrip().endswith("| 40.0 | - | - | - |")  # kNN top-1, kNN target FP, ... (none in these rows)
    assert "distill 25%" in md
    assert "100 / 4900" in md
    failed = md.split("## Failed runs")[1]
    assert "CUDA out of memory" in failed and "bad \\| pipe" in failed and "bad | pipe" not in md


def test_plot_rates(tmp_path: Path):
    out = tmp_path / "plots"
    paths = plot_rates(_rows(), out)
    assert sorted(p.name for p in paths) == ["rate_lf0.01.pdf", "rate_lf0.01.png"]
    for p in paths:
        assert p.parent == out and p.stat().st_size > 0
    with PIL.open(out / "rate_lf0.01.png") as im:
        assert im.size[0] > 0 and im.size[1] > 0
    assert not list(out.glob(".*tmp"))  # no temp files left behind
    # two label fractions -> two figures; no done rows -> nothing.
    more = _rows() + [_row(200, label_fraction=0.1, target_fp=None, nontarget_count=None)]
    assert len(plot_rates(more, tmp_path / "two")) == 4
    assert plot_rates([r for r in _rows() if r["state"] != "done"], tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_write_report(tmp_path: Path):
    paths = write_report(tmp_path / "rep", _rows(), "Sweep B")
    names = {p.relative_to(tmp_path / "rep").as_posix() for p in paths}
    assert names == {"summary.csv", "summary.md", "plots/rate_lf0.01.png", "plots/rate_lf0.01.pdf"}
    assert all(p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "rep" / "summary.md").read_text().startswith("# Sweep B")
    # empty sweep: tables still written (header only), no plots.
    empty = write_report(tmp_path / "empty", [], "Nothing yet")
    assert {p.name for p in empty} == {"summary.csv", "summary.md"}


def test_knn_backdoor_columns_are_averaged_beside_the_probes():
    rows = [_row(i, seed=i, target_fp_clean=4 + i, knn_target_fp=30 + 2 * i, knn_target_fp_clean=3, knn_asr=0.1)
            for i in range(2)]
    g = aggregate(rows)[0]
    assert g["knn_target_fp_mean"] == pytest.approx(31) and g["target_fp_clean_mean"] == pytest.approx(4.5)
    md = summary_markdown(rows, "kNN")
    assert "kNN target FP" in md and "target FP clean" in md
    line = next(l for l in md.splitlines() if l.startswith("| moco | htba10 |"))
    assert "| 31.0 ± 1.4 | 3.0 ± 0.0 |" in line
    header = summary_csv(rows).splitlines()[0].split(",")
    assert {"target_fp_clean", "knn_target_fp", "knn_target_fp_clean", "knn_asr"} <= set(header)


def test_trigger_shift_columns_reach_the_csv_and_the_mean_table():
    rows = [_row(i, seed=i, shift_cos_target=c, shift_rank_target=r, shift_length=0.5)
            for i, (c, r) in enumerate([(0.2, 3), (0.4, 1)])]
    g = aggregate(rows)[0]
    assert g["shift_cos_target_mean"] == pytest.approx(0.3) and g["shift_rank_target_mean"] == pytest.approx(2)
    md = summary_markdown(rows, "shift")
    assert "shift cos target" in md.splitlines()[6]
    line = next(l for l in md.splitlines() if l.startswith("| moco | htba10 |"))
    assert line.rstrip().endswith("| 0.30 ± 0.14 |")
    parsed = list(csv.reader(io.StringIO(summary_csv(rows))))
    col = parsed[0].index("shift_rank_target")
    assert [r[col] for r in parsed[1:]] == ["3", "1"]


def test_backdoor_curves_plot_poisoned_against_clean(tmp_path: Path):
    def curve(rate, seed, fps, defense="none"):
        checks = [dict(kind="backdoor", epoch=e, knn_target_fp=fp, knn_target_fp_clean=3, knn_nontarget_count=450,
                       knn_clean_top1=0.5 + 0.01 * e) for e, fp in zip((0, 3, 6), fps)]
        return dict(run_id=f"r{rate}{seed}{defense}", method="moco", rate=rate, seed=seed, defense=defense,
                    clean_fraction=0.25 if defense == "distill" else None, checks=checks)
    curves = [curve(0.5, 0, [5, 40, 90]), curve(0.5, 1, [5, 50, 110]), curve(0.0, 0, [5, 6, 7]),
              curve(0.5, 0, [5, 6, 8], "distill")]
    paths = plot_curves(curves, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["backdoor_epochs.pdf", "backdoor_epochs.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert plot_curves([], tmp_path / "none") == [] and not (tmp_path / "none").exists()
    names = {p.name for p in write_report(tmp_path / "rep", _rows(), "with curves", curves=curves)}
    assert "backdoor_epochs.png" in names
    # a study over rates keeps each rate its own line (not one "poisoned" mean of 0.05 and 0.5), and the
    # clean control is one line whichever trigger's build it was checked on
    from fastbd.plots import _curve_series
    study = [curve(0.5, 0, [5, 40, 90]), curve(0.05, 0, [5, 9, 9]), curve(0.0, 0, [5, 6, 7])]
    series = _curve_series(study, lambda chk: chk["knn_target_fp"])
    assert {line[2]: [p[1] for p in pts] for line, pts in series.items()} == {
        0.5: [5, 40, 90], 0.05: [5, 9, 9], 0.0: [5, 6, 7]}
    assert plot_curves(study, tmp_path / "study")
