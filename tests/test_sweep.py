"""Sweeps on CPU: plan and dry run, a tiny sweep end to end (stopped and rerun), failures, resume, report,
and the SLURM job arrays (a stand-in `sbatch` for the script, submitit's local executor for the tasks)."""

import csv
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fastbd.cli import app
from fastbd.config import ConfigError
from fastbd.sweep import collect_rows, load_sweep, make_plan, run_one, sweep
from fastbd.sweep.stages import MARKER, load_plan, pending_stages

from conftest import TINY
from test_train import TINY_TRAIN

TINY_EVAL = ["res=32", "resize=36", "workers=0", "probe.epochs=3"]
TINY_DISTILL = ["epochs=1", "max_steps=2", "data.batch_size=16", "data.res=32", "data.workers=0",
                "data.backend=torch", "method.compress.hidden=64", "method.compress.dim=32", "method.compress.bank=64"]


def _dotlist_yaml(path: Path, items) -> Path:
    """A YAML file from key=value items (nested keys)."""
    tree: dict = {}
    for it in items:
        k, _, v = it.partition("=")
        *head, last = k.split(".")
        node = tree
        for h in head:
            node = node.setdefault(h, {})
        node[last] = yaml.safe_load(v)
    path.write_text(yaml.safe_dump(tree))
    return path


def write_sweep(tmp: Path, name="s", **grid) -> Path:
    _dotlist_yaml(tmp / "poison.yaml", [*TINY, "workers=2"])
    _dotlist_yaml(tmp / "ssl.yaml", [*TINY_TRAIN, "epochs=1", "max_steps=2"])
    cfg = {"name": name, "out": str(tmp / name), "poison": "poison.yaml",
           "eval_overrides": TINY_EVAL, "distill_overrides": TINY_DISTILL,
           "grid": {"rates": [0.0, 0.5], "seeds": [0, 1], "label_fractions": [0.5],
                    "methods": {"moco": {"config": "ssl.yaml"}}, **grid}}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_dry_run_plans_and_writes_nothing(tmp_path):
    path = write_sweep(tmp_path, clean_fractions=[0.5])
    cfg = load_sweep(path)
    res = sweep(cfg, dry_run=True, log=lambda s: None)
    plan = res["plan"]
    assert len(plan["builds"]) == 1 and len(plan["runs"]) == 4 and len(res["todo"]) == 4
    assert not Path(cfg.out).exists()
    # ids are a pure function of the resolved config; a training setting changes them, a label fraction does not
    assert [r["id"] for r in make_plan(load_sweep(path))["runs"]] == [r["id"] for r in plan["runs"]]
    other = make_plan(load_sweep(path, ["train_overrides=[optim.lr=0.1]"]))
    assert not {r["id"] for r in other["runs"]} & {r["id"] for r in plan["runs"]}
    more = make_plan(load_sweep(path, ["grid.label_fractions=[0.5,0.25]"]))
    assert [r["id"] for r in more["runs"]] == [r["id"] for r in plan["runs"]]
    # the clean controls get no distillation unless asked; the poisoned ones one per clean fraction
    assert sorted(len(r["distills"]) for r in plan["runs"]) == [0, 0, 1, 1]
    # two trigger/target pairs: one build each; the clean controls are trained once and evaluated on both
    two = make_plan(load_sweep(path, ["grid.triggers={a: [], b: [trigger.seed=3]}", "grid.targets=[1,2]",
                                      "grid.pair_triggers_targets=true"]))
    assert len(two["builds"]) == 2 and len(two["runs"]) == 2 + 4
    clean = [r for r in two["runs"] if r["params"]["rate"] == 0]
    assert [len(r["attacks"]) for r in clean] == [2, 2] and all(len(r["evals"]) == 2 for r in clean)
    apart = make_plan(load_sweep(path, ["grid.triggers={a: [], b: [trigger.seed=3]}", "grid.share_clean=false"]))
    assert len(apart["runs"]) == 8
    out = CliRunner().invoke(app, ["sweep", "-c", str(path), "--dry-run"])
    assert out.exit_code == 0 and "4 pending" in out.output and "would run 4 runs" in out.output


def test_a_knob_added_at_its_neutral_value_changes_no_id(tmp_path):
    """NEUTRAL_SPEC_FIELDS: a spec field whose default keeps every byte stays out of build and run ids at that
    value, so the ids (and run folders) of sweeps measured before the knob existed still hold."""
    path = write_sweep(tmp_path)
    ids = lambda plan: ([b["id"] for b in plan["builds"].values()], [r["id"] for r in plan["runs"]])
    base = ids(make_plan(load_sweep(path)))
    assert ids(make_plan(load_sweep(path, ["poison_overrides=[source.synthetic.subtypes=1]"]))) == base
    other = ids(make_plan(load_sweep(path, ["poison_overrides=[source.synthetic.subtypes=2]"])))
    assert not set(other[0]) & set(base[0]) and not set(other[1]) & set(base[1])
    # the clean controls of the committed black-and-white study keep the ids of the measured runs
    # (benchmarks/results/2026-11-26_effect_trigger): MoCo v2 with 512 keys, seed 0
    bw = make_plan(load_sweep(Path(__file__).parents[1] / "configs" / "sweeps" / "effect_bw.yaml",
                              [f"out={tmp_path / 'bw'}"]))
    assert "c09c6d8605aa" in {r["id"] for r in bw["runs"] if r["params"]["rate"] == 0}


def test_a_trigger_file_named_three_ways_is_one_build(tmp_path, monkeypatch):
    """A trigger path relative to the poison spec (configs/repro's "../triggers/...", resolved from
    configs/poison/), relative to the working folder or absolute is normalised, so naming the same file any
    of these ways gives the same spec, build and run ids: the long variant plans the ids of the scratch
    sweep that measured it with an absolute path."""
    root = Path(__file__).resolve().parents[1]
    path = root / "configs" / "repro" / "effect_long.yaml"
    ids = lambda plan: ([b["id"] for b in plan["builds"].values()], [r["id"] for r in plan["runs"]])
    rel = make_plan(load_sweep(path, [f"out={tmp_path / 'a'}"]))
    trigger = root / "configs" / "triggers" / "htba10_bw.png"
    assert [b["spec"]["trigger"]["path"] for b in rel["builds"].values()] == [str(trigger)]
    absolute = make_plan(load_sweep(path, [f"out={tmp_path / 'b'}", "poison_overrides=[source.synthetic.distractors=3,"
                                           f"trigger.kind=image,trigger.path={trigger},trigger.width=17]"]))
    assert ids(absolute) == ids(rel)
    monkeypatch.chdir(root)
    cwd = make_plan(load_sweep(path, [f"out={tmp_path / 'c'}", "poison_overrides=[source.synthetic.distractors=3,"
                                      "trigger.kind=image,trigger.path=configs/triggers/htba10_bw.png,trigger.width=17]"]))
    assert ids(cwd) == ids(rel)


@pytest.mark.parametrize("path", sorted(p for d in ("sweeps", "repro") for p in
                                        (Path(__file__).parents[1] / "configs" / d).glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_sweep_yaml_plans(path):
    """The sweeps a README section or GPU session names (configs/sweeps, configs/repro) resolve to a plan:
    their poison, method and distill configs load, and relative paths in overrides (a trigger file) resolve."""
    plan = make_plan(load_sweep(path))
    assert plan["runs"] and all(Path(b["spec"]["trigger"]["path"] or ".").exists() for b in plan["builds"].values())


def test_attacks_cross_methods_as_trigger_entries(tmp_path):
    """An attack is a grid.triggers entry (poison-spec overrides naming its kind): one build per attack, the
    clean control shared by every attack whose clean images are the same bytes (storage alike)."""
    path = write_sweep(tmp_path, rates=[0.0, 0.5], seeds=[0], methods={"moco": {"config": "ssl.yaml"},
                                                                         "byol": {"config": "ssl.yaml",
                                                                                  "overrides": ["method.name=byol"]}},
                       triggers={"patch": [], "ctrl": ["trigger.kind=ctrl"],
                                 "corruptencoder": ["trigger.kind=corruptencoder",
                                                    "trigger.corruptencoder.trigger_width=8"]})
    plan = make_plan(load_sweep(path, ["poison_overrides=[storage.chroma=444]"]))
    kinds = sorted(b["spec"]["trigger"]["kind"] for b in plan["builds"].values())
    assert kinds == ["corruptencoder", "ctrl", "htba"]
    clean = [r for r in plan["runs"] if r["params"]["rate"] == 0]
    poisoned = [r for r in plan["runs"] if r["params"]["rate"] > 0]
    assert len(clean) == 2 and all(len(r["attacks"]) == 3 for r in clean)  # one per method, evaluated on each attack
    assert sorted((r["params"]["method"], plan["builds"][r["build"]]["trigger"]) for r in poisoned) == sorted(
        (m, t) for m in ("moco", "byol") for t in ("patch", "ctrl", "corruptencoder"))
    with pytest.raises(ConfigError, match="storage.chroma"):  # CTRL's own checks run while planning
        make_plan(load_sweep(path))


def test_bad_sweep_configs_name_the_field(tmp_path):
    path = write_sweep(tmp_path)
    with pytest.raises(ConfigError, match="grid.methods.moco.config"):
        load_sweep(path, ["grid.methods.moco.config=nope.yaml"])
    with pytest.raises(ConfigError, match="poison: file not found"):
        load_sweep(path, ["poison=missing.yaml"])
    with pytest.raises(ConfigError, match="grid.rates"):
        load_sweep(path, ["grid.rates=[0.5,0.5]"])
    with pytest.raises(ConfigError, match="grid.colours"):
        load_sweep(path, ["grid.colours=[1]"])
    with pytest.raises(ConfigError, match="pair_triggers_targets"):
        load_sweep(path, ["grid.pair_triggers_targets=true", "grid.targets=[0,1]"])
    with pytest.raises(ConfigError, match="attack.rates"):  # the build spec is checked at plan time
        make_plan(load_sweep(path, ["grid.rates=[0.0,7.0]"]))


@pytest.fixture(scope="module")
def done_sweep(tmp_path_factory):
    """The tiny sweep stopped after two runs (--limit 2), then rerun to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp, clean_fractions=[0.5])
    logs = []
    first = sweep(load_sweep(path), limit=2, log=logs.append)
    ran_first = [r for r, s in first["states"].items() if s == "done"]
    marks = {r: (Path(first["plan"]["root"]) / "runs" / r / "train" / MARKER).stat().st_mtime_ns for r in ran_first}
    second = sweep(load_sweep(path), log=logs.append)
    return {"path": path, "first": first, "second": second, "marks": marks, "logs": logs}


@pytest.mark.slow
def test_stopped_sweep_reruns_only_what_is_left(done_sweep):
    first, second = done_sweep["first"], done_sweep["second"]
    assert sorted(first["states"].values()) == ["done", "done", "pending", "pending"]
    assert len(second["todo"]) == 2 and set(second["todo"]).isdisjoint(done_sweep["marks"])
    assert set(second["states"].values()) == {"done"}
    root = Path(second["plan"]["root"])
    for rid, mtime in done_sweep["marks"].items():  # finished runs were not touched
        assert (root / "runs" / rid / "train" / MARKER).stat().st_mtime_ns == mtime
    for name in ("sweep.yaml", "plan.json", "invocations.jsonl", "summary.csv", "summary.md"):
        assert (root / name).is_file(), name
    env = json.loads((root / "invocations.jsonl").read_text().splitlines()[-1])["env"]
    assert env["torch"] and "gpus" in env


@pytest.mark.slow
def test_report_rows_and_plots(done_sweep):
    root = Path(done_sweep["second"]["plan"]["root"])
    rows = list(csv.DictReader((root / "summary.csv").open()))
    # 2 clean controls (attacked encoder only) + 2 poisoned runs x (attacked, distilled)
    assert len(rows) == 6 and {r["state"] for r in rows} == {"done"}
    assert sorted((r["defense"], r["rate"]) for r in rows) == [("distill", "0.5")] * 2 + [("none", "0.0")] * 2 + [("none", "0.5")] * 2
    poisoned = {r["poisoned"] for r in rows if r["rate"] == "0.5"}
    assert poisoned == {"6"}  # 0.5 of the 12 target-class training images
    assert all(0 <= float(r["clean_top1"]) <= 1 and r["target_fp"] != "" for r in rows)
    md = (root / "summary.md").read_text()
    assert "## Mean over seeds" in md and "distill 50%" in md
    for ext in ("png", "pdf"):
        assert (root / "plots" / f"rate_lf0.5.{ext}").stat().st_size > 1000
    out = CliRunner().invoke(app, ["report", str(root)])
    assert out.exit_code == 0 and "6 rows" in out.output


@pytest.mark.slow
def test_ctrl_c_stops_every_run_and_the_rerun_finishes(tmp_path):
    """SIGINT to the whole `fastbd sweep` process group mid-sweep, as Ctrl-C in a terminal, then the same command."""
    import signal
    import subprocess
    import sys

    path = write_sweep(tmp_path, rates=[0.5], seeds=[0, 1])
    cmd = [sys.executable, "-m", "fastbd.cli", "sweep", "-c", str(path)]
    # the child gets SIGINT's default back: under a shell's background job (`make test &`, nohup) SIGINT is
    # ignored and that is inherited, so the sweep would never see the Ctrl-C and would finish with exit 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:  # stop as soon as the first run has finished and the second has started
        lines.append(line)
        if line.rstrip().endswith("] done"):
            break
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0, "".join(lines)
    root = tmp_path / "s"
    plan = load_plan(root)
    first = next(r for r in plan["runs"] if pending_stages(r) == [])
    mark = (Path(first["train"]["out"]) / MARKER).stat().st_mtime_ns
    res = sweep(load_sweep(path), log=lambda s: None)
    assert res["todo"] == [r["id"] for r in plan["runs"] if r["id"] != first["id"]]
    assert set(res["states"].values()) == {"done"}
    assert (Path(first["train"]["out"]) / MARKER).stat().st_mtime_ns == mark


@pytest.mark.slow
def test_sigterm_to_the_sweep_alone_stops_its_runs(tmp_path):
    """`kill PID` on `fastbd sweep` (SIGTERM to the parent only, as a scheduler or a shell sends it) stops the
    runs it started: an orphaned run would go on writing its folder while the next sweep starts it again."""
    import signal
    import subprocess
    import sys
    import time

    path = write_sweep(tmp_path, rates=[0.5], seeds=[0])
    cfg = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**cfg, "train_overrides": ["epochs=500", "max_steps=0"]}))  # long enough
    proc = subprocess.Popen([sys.executable, "-m", "fastbd.cli", "sweep", "-c", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.rstrip().endswith("] started"):
            break
    [run] = load_plan(tmp_path / "s")["runs"]
    status = Path(run["dir"]) / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline and '"running"' not in (status.read_text() if status.exists() else ""):
        time.sleep(0.2)
    pid = json.loads(status.read_text())["pid"]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # the parent waited for it, so it is gone, not a zombie
        os.kill(pid, 0)


def test_interrupted_stage_resumes_and_reruns_what_reads_it(done_sweep):
    plan = done_sweep["second"]["plan"]
    run = next(r for r in plan["runs"] if r["distills"])
    train = Path(run["train"]["out"])
    (train / MARKER).unlink()  # as if killed after the last checkpoint, before the export
    (train / "encoder.safetensors").unlink()
    assert pending_stages(run) == ["train"]
    logs = []
    st = run_one(plan["root"], run["id"], log=logs.append)
    assert st["state"] == "done" and any("resuming train" in s for s in logs)
    # the encoder changed, so its evals and the student distilled from it ran again
    assert any(s.endswith("train/eval/default-1/lf0.5") for s in logs)
    assert any("starting distill_cf0.5" in s for s in logs)
    assert pending_stages(run) == []


def test_one_sweep_process_per_folder(tmp_path):
    from fastbd.sweep.executors import SweepLocked, lock

    held = lock(tmp_path)
    with pytest.raises(SweepLocked, match="another `fastbd sweep`"):
        lock(tmp_path)
    held.close()
    lock(tmp_path).close()


def test_clean_parts_of_builds_are_the_same_bytes(tiny_build, tmp_path):
    """What grid.share_clean relies on: the trigger, target and poisoning seed change only the poisoned copies."""
    from beton_builders import build, load_manifest
    from fastbd.data.samples import TarSamples

    from conftest import quiet, tiny_spec

    other = tmp_path / "other"
    build(tiny_spec("trigger.seed=3", "trigger.width=12", "attack.target=2", "seed=5"), other, log=quiet)
    n = load_manifest(tiny_build)["counts"]["train_clean"]
    assert n == load_manifest(other)["counts"]["train_clean"]
    a, b = TarSamples(tiny_build, "train"), TarSamples(other, "train")
    assert all(a.read(i) == b.read(i) for i in range(n)) and (a.label[:n] == b.label[:n]).all()
    assert a.read(n) != b.read(n)  # the poisoned copies differ


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    # the clean control of two trigger/target pairs is one run evaluated on both builds; the other run fails
    path = write_sweep(tmp_path, rates=[0.0], seeds=[0], triggers={"a": [], "b": ["trigger.seed=3"]},
                       methods={"moco": {"config": "ssl.yaml"},
                                "big": {"config": "ssl.yaml", "overrides": ["data.batch_size=4096"]}})
    out = CliRunner().invoke(app, ["sweep", "-c", str(path)])
    assert out.exit_code == 1 and "1 runs failed" in out.output
    root = tmp_path / "s"
    rows = collect_rows(root)
    assert sorted((r["method"], r["trigger"], r["state"]) for r in rows) == [
        ("big", "a", "failed"), ("big", "b", "failed"), ("moco", "a", "done"), ("moco", "b", "done")]
    by = {r["method"]: r for r in rows}
    assert len({r["run_id"] for r in rows if r["method"] == "moco"}) == 1
    assert "batch_size=4096" in by["big"]["error"]
    assert "## Failed runs" in (root / "summary.md").read_text()
    failed = next(r for r in load_plan(root)["runs"] if r["params"]["method"] == "big")
    assert "Traceback" in (Path(failed["dir"]) / "error.txt").read_text()


@pytest.mark.slow
def test_a_multi_process_run_goes_through_torchrun(tmp_path):
    """gpus_per_run > 1 trains under torchrun + DDP (gloo on this CPU machine, NCCL on GPUs)."""
    from fastbd.sweep.stages import build_one, write_json

    cfg = load_sweep(write_sweep(tmp_path, rates=[0.5], seeds=[0], label_fractions=[0.5]))
    plan = make_plan(cfg)
    write_json(Path(cfg.out) / "plan.json", plan)
    assert build_one(cfg.out, plan["runs"][0]["build"], log=lambda s: None)
    run = plan["runs"][0]
    assert run_one(cfg.out, run["id"], nproc=2, log=lambda s: None)["state"] == "done"
    meta = json.loads((Path(run["train"]["out"]) / "meta.json").read_text())
    assert meta["world_size"] == 2 and pending_stages(run) == []


# ----- SLURM ---------------------------------------------------------------------------------------------

def _fake_sbatch(bin_dir: Path, log_dir: Path) -> None:
    """`sbatch FILE`: keep a copy of the script and answer as SLURM does (job ids 4242, 4243, ...)."""
    bin_dir.mkdir()
    log_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(f"""#!/bin/bash
n=$(ls {log_dir} | wc -l)
cp "$1" {log_dir}/$n.sh
echo "Submitted batch job $((4242 + n))"
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 1\n")  # submitit only checks that it exists
    (bin_dir / "srun").chmod(0o755)


def test_slurm_job_arrays(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from fastbd.sweep.executors import slurm_executor

    path = write_sweep(tmp_path, clean_fractions=[0.5])
    _fake_sbatch(tmp_path / "bin", tmp_path / "scripts")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cfg = load_sweep(path, ["slurm.partition=gpu", "slurm.gpus_per_run=2", "slurm.setup=[source venv/bin/activate]",
                            "slurm.additional={constraint: h100}"])
    res = sweep(cfg, executor="slurm", log=lambda s: None, slurm_executor=slurm_executor(Path(cfg.out), cfg.slurm))
    assert len(res["build_jobs"]) == 1 and len(res["run_jobs"]) == 4
    build_sh, run_sh = (tmp_path / "scripts" / "0.sh").read_text(), (tmp_path / "scripts" / "1.sh").read_text()
    assert "#SBATCH --job-name=s-build" in build_sh and "#SBATCH --cpus-per-task=32" in build_sh  # one build: no array
    assert "#SBATCH --array=0-3%4" in run_sh and "#SBATCH --gpus-per-node=2" in run_sh
    assert "#SBATCH --cpus-per-task=32" in run_sh and "#SBATCH --partition=gpu" in run_sh
    assert "#SBATCH --dependency=afterany:4242" in run_sh and "#SBATCH --constraint=h100" in run_sh
    assert "#SBATCH --signal=USR2@" in run_sh and "source venv/bin/activate" in run_sh
    sub = json.loads((Path(cfg.out) / "slurm" / "submitted.json").read_text())
    assert sorted(sub["runs"].values()) == [f"4243_{i}" for i in range(4)]
    # a preempted run task requeues itself with the same arguments (and resumes from its checkpoint)
    task = res["run_jobs"][0].submission().function
    again = task.checkpoint(str(cfg.out), res["todo"][0], 2)
    assert again.args == (str(cfg.out), res["todo"][0], 2)
    assert isinstance(task, submitit.helpers.Checkpointable)


@pytest.mark.slow
def test_job_arrays_run_under_submitits_local_executor(tmp_path):
    submitit = pytest.importorskip("submitit")
    path = write_sweep(tmp_path, rates=[0.5], seeds=[0])
    cfg = load_sweep(path)
    ex = submitit.LocalExecutor(folder=tmp_path / "jobs")
    ex.update_parameters(timeout_min=10)
    res = sweep(cfg, executor="slurm", log=lambda s: None, slurm_executor=ex)
    assert [j.result()["state"] for j in res["run_jobs"]] == ["done"]
    assert [r["state"] for r in collect_rows(cfg.out)] == ["done"]
