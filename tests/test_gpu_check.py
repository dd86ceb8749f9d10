"""benchmarks/gpu_check.sh: the one-call GPU check, rehearsed on the CPU so that a lent GPU's minutes go to
measuring; its step selection, budget and target verdicts."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(out: Path, work: Path, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, FASTBD_GPU_CHECK_CPU="1", FASTBD_GPU_CHECK_WORK=str(work), PYTHON=sys.executable,
             FASTBD_GPU_CHECK_BUNDLE=str(work / "no-bundle"), PYTHONPATH=str(ROOT), **env)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], env=e, capture_output=True,
                          text=True, timeout=1500)


def load_module(name: str = "gpu_check"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unknown_steps_are_refused_and_an_empty_budget_skips_everything(tmp_path):
    r = gpu_check(tmp_path / "out", tmp_path / "work", FASTBD_GPU_CHECK_STEPS="env,moco999")
    assert r.returncode == 2 and "unknown step(s) ['moco999']" in r.stderr
    r = gpu_check(tmp_path / "out", tmp_path / "work", FASTBD_GPU_CHECK_BUDGET="0")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [s["step"] for s in report["steps"]] == load_module().DEFAULT_STEPS  # every step but `effect`
    assert [s["status"] for s in report["steps"]] == ["skipped"] * len(load_module().DEFAULT_STEPS)
    assert all(s["error"].startswith("budget") for s in report["steps"])
    assert "| P3 MoCo v2 R18 224 px >= 10.5k img/s end to end | not measured |" in (
        tmp_path / "out" / "gpu_check.md").read_text()


def test_target_verdicts_come_from_the_rows():
    m = load_module()

    def row(compile_, ceiling, dali, torch_=None):
        r = {"method": "moco", "res": 224, "compile": compile_, "aug_impl": "exact",
             "ceiling": {"img_per_s": ceiling}, "dali_e2e": {"img_per_s": dali}}
        if torch_:
            r["torch_e2e"] = {"img_per_s": torch_}
        return r

    report = {"cpu_rehearsal": False, "steps": [
        {"step": "moco224", "rows": [row("off", 9000, 8000, 1100)]},
        {"step": "moco224c", "rows": [row("on", 11500, 11000)]},
        {"step": "p5", "p5": {"backend": "dali", "packed_over_single": 1.6, "packed_img_per_s": 16000,
                              "single_img_per_s": 10000}}]}
    got = {t.split()[0]: (measured, verdict) for t, measured, verdict in m.targets(report)}
    assert got["P1"][1] == "reached" and "0.96x (compile on" in got["P1"][0]  # 11000 / 11500
    assert got["P2"] == ("10.0x (11000 vs 1100 img/s)", "reached")
    assert got["P3"][1] == "reached" and got["P3"][0].startswith("11000 img/s (compile on")
    assert got["P5"] == ("1.6x (16000 vs 10000 img/s, dali)", "not reached")
    report["steps"] = report["steps"][:1]
    got = {t.split()[0]: v for t, _, v in m.targets(report)}
    assert got == {"P1": "not reached", "P2": "not reached", "P3": "not reached", "P5": "not measured"}


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_end_to_end(tmp_path):
    """The GPU check's own steps at the smallest size on the CPU (no bundle here, so DALI/FFCV installs are
    skipped and the installed packages are used): every output file, every backend's figures, P5's pair."""
    out = tmp_path / "out"
    r = gpu_check(out, tmp_path / "work", FASTBD_GPU_CHECK_STEPS="env,deps,dali,data,moco224,p5")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status == {"env": "ok", "deps": "ok", "dali": "skipped", "data": "ok", "moco224": "ok", "p5": "ok"}
    assert report["hardware"]["device"] == "CPU" and report["hardware"]["torch"]
    assert all(s["seconds"] >= 0 for s in report["steps"] if s["status"] != "skipped")
    [row] = next(s for s in report["steps"] if s["step"] == "moco224")["rows"]
    measured = ["ceiling", "torch_loader", "torch_e2e"]
    measured += [f"{b}_{k}" for b, mod in (("dali", "nvidia.dali"), ("ffcv", "ffcv"))
                 if importlib.util.find_spec(mod.split(".")[0]) for k in ("loader", "e2e")]
    for k in measured:
        assert row[k]["img_per_s"] > 0 and row[k]["core_ms_per_img"] > 0, (k, row)
    p5 = next(s for s in report["steps"] if s["step"] == "p5")["p5"]
    assert p5["backend"] in ("dali", "ffcv", "torch") and len(p5["packed"]) == 2 and p5["packed_over_single"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "CPU REHEARSAL" in md and "rehearsal on the CPU: not a GPU figure" in md
    assert "| moco | 32 | off | auto |" in md and "core-ms/img" in md
    assert "===== moco224: ok =====" in (out / "gpu_check.log").read_text()


@pytest.mark.slow
def test_the_effect_step_runs_a_sweep_and_brings_back_at_most_eight_files(tmp_path):
    """The `effect` step on the CPU: a one-method sweep (FASTBD_GPU_CHECK_EFFECT) on the rehearsal's small
    build, one epoch, poisoned and clean; its rows, in-training checks and timings come back in OUT/effect,
    within a `run` call's limit of 8 files. The sweep's own poison overrides (here its trigger) are kept."""
    pytest.importorskip("ffcv")
    cfg = tmp_path / "effect_tiny.yaml"
    cfg.write_text(f"name: tiny\npoison: {ROOT}/configs/poison/effect.yaml\n"
                   "poison_overrides: [trigger.kind=image, trigger.path=../triggers/htba10_bw.png]\n"
                   f"grid:\n  methods:\n    moco: {{config: {ROOT}/configs/ssl/effect_moco.yaml}}\n"
                   "  label_fractions: [0.1]\n")
    out = tmp_path / "out"
    r = gpu_check(out, tmp_path / "work", FASTBD_GPU_CHECK_STEPS="effect", FASTBD_GPU_CHECK_EFFECT=str(cfg))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [step] = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert step["status"] == "ok" and step["effect"]["rows_done"] == step["effect"]["rows"] == 2, step
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and {p.name for p in (out / "effect").iterdir()} == {
        "summary.md", "rows.json", "curves.json", "timing.json", "backdoor_epochs.png"}
    timing = json.loads((out / "effect" / "timing.json").read_text())
    assert sorted(t["rate"] for t in timing) == [0.0, 0.5] and all(t["epochs_done"] == 1 for t in timing)
    curves = json.loads((out / "effect" / "curves.json").read_text())
    assert all(len(c["checks"]) == 2 for c in curves)  # before training and after its one epoch
    assert "The backdoor study (effect step)" in (out / "gpu_check.md").read_text()
    assert (tmp_path / "work" / "effect_tiny" / "plan.json").is_file()  # the sweep folder a second call resumes
    [build] = json.loads((tmp_path / "work" / "effect_tiny" / "plan.json").read_text())["builds"].values()
    assert build["spec"]["trigger"]["kind"] == "image" and build["spec"]["source"]["synthetic"]["train_per_class"] == 40


def test_the_build_without_ffcv_writes_empty_betons_and_the_shards(tmp_path):
    """The GPU check's build on a machine without FFCV (the first H100 run failed here: the package's build()
    function shadowed the submodule the stand-in patched)."""
    import beton_builders.ffcv_writer as fw
    from beton_builders.spec import load_spec

    tt = load_module("train_throughput")
    before = fw.write_beton
    s = load_spec(None, ["source.synthetic.num_classes=2", "source.synthetic.train_per_class=3",
                         "source.synthetic.val_per_class=1", "storage.max_resolution=32"])
    tt._build_without_ffcv(s, tmp_path / "d")
    assert (tmp_path / "d" / "manifest.json").is_file()
    assert (tmp_path / "d" / "train.beton").stat().st_size == 0
    assert any((tmp_path / "d" / "dali").iterdir())
    assert sys.modules["beton_builders.build"].write_beton is fw.write_beton is before  # restored
