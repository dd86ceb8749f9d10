"""One run of a sweep, stage by stage, and the state of every run on disk.

A stage (train, distill, defend, eval) is complete when its folder holds `.fastbd_stage.json` with the hash of
the config it ran; a train or distill stage with a checkpoint of the same config resumes from it
(interrupted or preempted runs), anything else in its folder is cleared and the stage starts over.
A run that raises is recorded in RUN/status.json (and the traceback in RUN/error.txt); the sweep goes on.

    python -m fastbd.sweep SWEEP_DIR RUN_ID [--nproc N]     (what the executors call for one run)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from beton_builders.files import atomic_write_bytes, write_json
from beton_builders.manifest import built
from fastbd.config import from_dict, load_config, to_dict, to_yaml
from fastbd.sweep.plan import digest, train_identity, without

MARKER = ".fastbd_stage.json"


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def load_plan(sweep_dir: str | Path) -> dict:
    p = Path(sweep_dir) / "plan.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not a sweep folder (run `fastbd sweep --config ...` first)")
    return json.loads(p.read_text())


def find_run(plan: dict, run_id: str) -> dict:
    for r in plan["runs"]:
        if r["id"] == run_id:
            return r
    raise KeyError(f"run {run_id} is not in {plan['root']}/plan.json")


# ----- stage identity -------------------------------------------------------------------------------------

def _train_hash(cfg: dict) -> str:
    # folders are not part of a stage's identity (the sweep folder may move); the teacher is the run's own;
    # allow_other_data only lets a stage meet a build, it changes no number; an unset data.indices is left
    # out (plan.train_identity), so stages finished before it existed stay done
    return digest(without(train_identity(cfg), "method.compress.teacher"))


def _defend_hash(cfg: dict) -> str:
    # a defense's identity: its settings, not its folders or the checks that change no number
    return digest(without(cfg, "out", "data", "allow_other_data", "verify_files"))


def _retrain_hash(ps: dict) -> str:
    # retraining on a defense's index list: the training config (the list's path is the defense's folder) and
    # the defense that wrote the list
    return digest([_train_hash(without(ps["train"], "data.indices")), _defend_hash(ps["defend"])])


def _eval_hash(entry: dict) -> str:
    # the build: which trigger/target; the checks (file hashes, the same-data rule) change no number
    return digest([without(entry["cfg"], "out", "data", "allow_other_data", "verify_files"), entry["build"]])


def stage_done(folder: Path, h: str) -> bool:
    m = read_json(Path(folder) / MARKER)
    return bool(m) and m.get("hash") == h


def stages(run: dict) -> list[tuple[str, str, dict, str, Optional[str]]]:
    """(kind, name, config, hash, upstream) in the order they run: train, its evals, then each distillation
    and its evals, then PatchSearch (defend, retrain, evals). `upstream` is the folder a stage reads (an
    eval's encoder, a teacher, the run a defense defends, the defense whose index list a retraining reads)."""
    train_dir = run["train"]["out"]

    def evals(entries, parent):
        return [("eval", str(Path(e["cfg"]["out"]).relative_to(run["dir"])), e["cfg"], _eval_hash(e), parent)
                for e in entries]
    out = [("train", "train", run["train"], _train_hash(run["train"]), None), *evals(run["evals"], train_dir)]
    for k, c in run["distills"].items():
        out.append(("train", f"distill_{k}", c, _train_hash(c), train_dir))
        out += evals(run["distill_evals"][k], c["out"])
    ps = run.get("patchsearch")
    if ps:  # defend (reads the train folder), retrain on the filtered list (reads the defense folder), evals
        out.append(("defend", "patchsearch", ps["defend"], _defend_hash(ps["defend"]), train_dir))
        out.append(("train", "patchsearch_train", ps["train"], _retrain_hash(ps), ps["defend"]["out"]))
        out += evals(run["patchsearch_evals"], ps["train"]["out"])
    return out


def pending_stages(run: dict) -> list[str]:
    return [name for _, name, cfg, h, _ in stages(run) if not stage_done(Path(cfg["out"]), h)]


def run_state(run: dict) -> str:
    """done (every stage complete) | failed (the last attempt raised) | pending."""
    if not pending_stages(run):
        return "done"
    st = read_json(Path(run["dir"]) / "status.json", {})
    return "failed" if st.get("state") == "failed" else "pending"


# ----- running stages -------------------------------------------------------------------------------------

def _same_config(folder: Path, cfg: dict) -> bool:
    from fastbd.train import TrainConfig

    try:
        stored = to_dict(load_config(TrainConfig, folder / "config.yaml"))
    except Exception:  # noqa: BLE001 - unreadable or older config: not the same
        return False
    return _train_hash(stored) == _train_hash(cfg)


def _train_stage(cfg: dict, fresh: bool, nproc: int, log: Callable[[str], None]) -> None:
    from fastbd.train import TrainConfig, train

    folder = Path(cfg["out"])
    resume = not fresh and (folder / "ckpt" / "last.pt").is_file() and _same_config(folder, cfg)
    if folder.exists() and not resume:
        shutil.rmtree(folder)  # died before its first checkpoint, ran another config, or its teacher changed
    shutil.rmtree(folder / "eval", ignore_errors=True)  # evaluations of an encoder about to change
    log(f"  {'resuming' if resume else 'starting'} {folder.name}")
    if nproc > 1:
        _torchrun(cfg, folder, resume, nproc)
    else:
        train(from_dict(TrainConfig, cfg, f"{folder}/config"), resume=resume)


def _torchrun(cfg: dict, folder: Path, resume: bool, nproc: int) -> None:
    """Multi-GPU training: torchrun + DDP on `nproc` local GPUs, through the same CLI a user would call."""
    from fastbd.train import TrainConfig

    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "fastbd.cli", "train"]
    if resume:
        cmd = [*base, "--resume", str(folder)]
    else:
        spec = folder.parent / f"{folder.name}.yaml"
        atomic_write_bytes(spec, to_yaml(from_dict(TrainConfig, cfg)).encode())
        cmd = [*base, "--config", str(spec)]
    subprocess.run(cmd, check=True)


def _defend_stage(cfg: dict, run_dir: str, log: Callable[[str], None]) -> None:
    from fastbd.defenses.patchsearch import PatchSearchConfig, patchsearch

    patchsearch(from_dict(PatchSearchConfig, cfg, f"{cfg['out']}/config"), Path(run_dir), log=lambda s: log("  " + s))


def _eval_stage(cfg: dict, encoder_run: str, log: Callable[[str], None]) -> None:
    from fastbd.evaluate import EvalConfig, evaluate

    evaluate(from_dict(EvalConfig, cfg, f"{cfg['out']}/config"), run=Path(encoder_run), log=lambda s: log("  " + s))


def run_one(sweep_dir: str | Path, run_id: str, nproc: int = 1, log: Callable[[str], None] = print) -> dict:
    """Run every pending stage of one run; returns (and writes) RUN/status.json. Never raises for a
    failing run: the error is recorded and the sweep goes on."""
    plan = load_plan(sweep_dir)
    run = find_run(plan, run_id)
    run_dir = Path(run["dir"])
    status = {"state": "running", "host": platform.node(), "pid": os.getpid(), "started": time.time(),
              "slurm_job": os.environ.get("SLURM_JOB_ID")}
    write_json(run_dir / "status.json", status)
    stage = None
    try:
        for bid in dict.fromkeys([run["build"], *run["attacks"]]):
            d = Path(plan["builds"][bid]["dir"])
            if not built(d):
                err = d.with_suffix(".error.txt")
                raise FileNotFoundError(f"dataset {d} was not built" + (f"; see {err}" if err.exists() else ""))
        redone: set[str] = set()  # train/distill folders (re)trained in this call: what reads them reruns
        for kind, stage, cfg, h, up in stages(run):
            folder = Path(cfg["out"])
            if stage_done(folder, h) and up not in redone:
                continue
            t0 = time.perf_counter()
            log(f"[{run_id}] {stage}")
            if kind == "train":
                _train_stage(cfg, up in redone, nproc, log)
                redone.add(str(folder))
            elif kind == "defend":
                _defend_stage(cfg, up, log)
                redone.add(str(folder))  # a new index list: the retraining on it starts over
            else:
                _eval_stage(cfg, up, log)
            write_json(folder / MARKER, {"stage": stage, "hash": h, "seconds": time.perf_counter() - t0,
                                         "finished": time.time()})
        status.update(state="done", stage=None, error=None)
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, not fatal to the sweep
        (run_dir / "error.txt").write_text(traceback.format_exc())
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        status.update(state="failed", stage=stage, error=f"{type(e).__name__}: {first}"[:500])
        log(f"[{run_id}] FAILED in {stage}: {status['error']}")
    status["finished"] = time.time()
    write_json(run_dir / "status.json", status)
    return status


def build_one(sweep_dir: str | Path, build_id: str, log: Callable[[str], None] = print) -> bool:
    """Compile one dataset of the sweep unless it exists; a failure is written next to it (BUILD.error.txt)."""
    from beton_builders import build
    from beton_builders.spec import PoisonSpec, validate

    b = load_plan(sweep_dir)["builds"][build_id]
    out = Path(b["dir"])
    err = out.with_suffix(".error.txt")
    if built(out):
        return True
    try:
        spec = validate(from_dict(PoisonSpec, b["spec"], f"build {build_id}"))
        log(f"[build {out.name}]")
        build(spec, out, force=out.exists(), log=lambda s: log("  " + s))
        err.unlink(missing_ok=True)
        return True
    except Exception:  # noqa: BLE001 - the runs that need it fail with a pointer to this file
        err.parent.mkdir(parents=True, exist_ok=True)
        err.write_text(traceback.format_exc())
        log(f"[build {out.name}] FAILED; see {err}")
        return False


def parser():
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fastbd.sweep",
                                 description="Run every pending stage of one run of a sweep (what the local "
                                             "executor spawns); the result is in SWEEP_DIR/runs/RUN_ID/status.json.")
    ap.add_argument("sweep_dir", help="a `fastbd sweep` folder (holds plan.json)")
    ap.add_argument("run_id", help="the run's id, as listed by `fastbd sweep --dry-run` and in plan.json")
    ap.add_argument("--nproc", type=int, default=1, help="GPUs for this run's training (torchrun when > 1)")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    a = parser().parse_args(argv)
    log = lambda s: print(s, flush=True)
    return 0 if run_one(a.sweep_dir, a.run_id, a.nproc, log)["state"] == "done" else 1
