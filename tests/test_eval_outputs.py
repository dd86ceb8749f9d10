"""Issue 12, formats out: conf_matrix.csv as the reference writes it (Model and Data cells, float counts,
human-readable names), `fastbd compare` on evaluations written with out=, summary.md counting runs, and
eval backend=ffcv without numba's finaliser noise."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastbd.cli import app
from fastbd.train import train

from test_train import cfg_for

runner = CliRunner()
EVAL = ["res=32", "resize=36", "workers=0", "probe.label_fraction=0.5", "probe.epochs=2", "knn_k=[1]"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tiny_build, tmp_path_factory):
    return train(cfg_for(tiny_build, tmp_path_factory.mktemp("runs") / "enc", "max_steps=2"))


def test_conf_matrix_csv_has_the_references_cells_and_names(tiny_build, run, tmp_path):
    from beton_builders import load_manifest

    classes = load_manifest(tiny_build)["source"]["classes"]
    meta = tmp_path / "imagenet_metadata.txt"
    meta.write_text("".join(f"{c}\tthe {c.split('_', 1)[1]}, a shape\n" for c in classes))
    r = runner.invoke(app, ["eval", "--run", str(run), f"data={tiny_build}", f"out={tmp_path / 'e'}", *EVAL,
                            f"class_names={meta}"])
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(open(tmp_path / "e" / "conf_matrix.csv", newline="")))
    parts = [p for p in run.resolve().parts if p != "/"][-3:]
    assert rows[0][0] == f"Model {'/'.join(parts)}/encoder.safetensors"  # the reference's last 3 folders + file
    assert rows[1][0] == f"Data {tiny_build.resolve() / 'dali' / 'val_poisoned-*.tar'}"
    assert rows[4][0] == f"the {classes[0].split('_', 1)[1]}; a shape"  # commas become semicolons, as there
    counts = [c for row in rows[4:] for c in (row[2], row[3], row[5], row[6])]
    assert all(c.endswith(".0") and float(c) >= 0 for c in counts)  # float counts, like the reference's matrix
    assert sum(float(row[2]) + float(row[3]) for row in rows[4:]) == 12  # every val image predicted once
    meta.write_text(f"{classes[0]}\tonly one\n")
    r = runner.invoke(app, ["eval", "--run", str(run), f"data={tiny_build}", f"out={tmp_path / 'x'}", *EVAL,
                            f"class_names={meta}"])
    assert r.exit_code == 2 and "does not name 3 of the build's 4 classes" in r.output


def test_compare_reads_evaluations_written_with_out(tiny_build, run, tmp_path):
    r = runner.invoke(app, ["eval", "--run", str(run), f"data={tiny_build}", f"out={tmp_path / 'elsewhere'}", *EVAL])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "elsewhere"), str(tmp_path / "elsewhere" / "report.json")])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith(f"| {tmp_path / 'elsewhere'}")]
    assert len(lines) == 2 and lines[0].split("|")[2:] == lines[1].split("|")[2:]
    r = runner.invoke(app, ["compare", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no report.json" in r.output and "out=" in r.output


def test_summary_counts_runs_not_rows():
    """Issue 12: 6 runs, one of them a clean control evaluated on 4 pairs, gave "9 total"."""
    from fastbd.report import summary_markdown

    def row(rid, state="done", **kw):
        return {"run_id": rid, "method": "moco", "trigger": kw.get("trigger", "a"), "target": "1", "rate": 0.5,
                "poisoned": 6, "seed": 0, "defense": "none", "clean_fraction": None, "label_fraction": 0.5,
                "state": state, "error": "boom" if state == "failed" else None, "clean_top1": 0.5,
                "patched_top1": 0.4, "target_fp": 1, "nontarget_count": 9, "asr": 0.1, "nfp": 1.0, "knn_top1": 0.5}
    rows = [row(f"r{i}") for i in range(4)] + [row("clean", trigger=t) for t in "abcd"]
    rows += [row("r9", "failed"), row("r8", "pending")]
    md = summary_markdown(rows, "s")
    assert "Runs: 6 total, 5 done, 1 failed, 0 pending" not in md  # r8 is pending
    assert "Runs: 7 total, 5 done, 1 failed, 1 pending (10 evaluations: 8 done, 1 failed, 1 pending)." in md


def test_the_numba_filter_drops_only_numbas_finaliser_keyerror(monkeypatch):
    pytest.importorskip("ffcv")
    import types

    from fastbd.data.ffcv_loader import quiet_numba_finalizers

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    quiet_numba_finalizers()
    quiet_numba_finalizers()  # installed once

    def unraisable(exc, filename):
        code = compile("def finalizer():\n    raise exc\n", filename, "exec")
        ns = {"exc": exc}
        exec(code, ns)
        try:
            ns["finalizer"]()
        except BaseException as e:  # noqa: BLE001
            return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__, object=None)
    sys.unraisablehook(unraisable(KeyError("sig"), "/x/site-packages/numba/core/dispatcher.py"))
    assert seen == []
    for other in (unraisable(KeyError("sig"), "/x/mine.py"), unraisable(ValueError("v"), "/x/numba/core/dispatcher.py")):
        sys.unraisablehook(other)
    assert len(seen) == 2


@pytest.mark.ffcv
@pytest.mark.slow
def test_eval_with_the_ffcv_backend_prints_no_finaliser_noise(tiny_build, run, tmp_path):
    pytest.importorskip("ffcv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "fastbd.cli", "eval", "--run", str(run), f"data={tiny_build}",
                        f"out={tmp_path / 'e'}", "backend=ffcv", *EVAL[:2], "workers=1", *EVAL[3:]],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Exception ignored" not in r.stderr and "KeyError" not in r.stderr, r.stderr[-3000:]
    assert "patched top-1" in r.stdout
