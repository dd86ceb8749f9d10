"""Where a sweep's runs execute: `local` (this machine's GPUs, or its CPU) or `slurm` (a submitit job array).

local: builds first, in this process (each build is parallel inside); then a queue of runs, each in its own
  process (`python -m fastbd.sweep SWEEP RUN`) pinned to its GPU(s) with CUDA_VISIBLE_DEVICES: one run per
  GPU, `runs_per_gpu` small runs sharing one, or `gpus_per_run` GPUs per run under torchrun. A crash in one
  run cannot take the others down, and Ctrl-C stops them all; the next `fastbd sweep` resumes.
slurm: one job array for the builds, and one for the runs that starts after it (afterany: a failed build fails
  only its own runs, with a pointer to its error file). Run tasks are submitit Checkpointables, so a
  preempted or timed-out task is requeued (up to slurm.max_requeue) and resumes from its last checkpoint.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

from beton_builders.host import cores
from fastbd.config import UserError
from fastbd.sweep.plan import LocalConfig, SlurmConfig
from fastbd.sweep.stages import build_one, read_json, run_one, write_json


class SweepLocked(UserError, RuntimeError):
    """Another `fastbd sweep` is running on the same folder."""


def lock(sweep_dir: Path):
    """An exclusive lock on the sweep folder for this process's lifetime (returns the open file)."""
    f = open(sweep_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SweepLocked(f"{sweep_dir}: another `fastbd sweep` is running on this folder") from None
    return f


def slots(cfg: LocalConfig) -> list[str | None]:
    """One entry per concurrent run: the CUDA_VISIBLE_DEVICES it gets, or None (CPU)."""
    import torch

    gpus = cfg.gpus if cfg.gpus is not None else list(range(torch.cuda.device_count()))
    if not gpus:
        return [None] * max(1, cfg.cpu_parallel)
    if cfg.gpus_per_run > len(gpus):
        raise ValueError(f"local.gpus_per_run={cfg.gpus_per_run} but only {len(gpus)} GPUs: {gpus}")
    groups = [gpus[i:i + cfg.gpus_per_run] for i in range(0, len(gpus) - cfg.gpus_per_run + 1, cfg.gpus_per_run)]
    return [",".join(map(str, g)) for g in groups for _ in range(max(1, cfg.runs_per_gpu))]


def _env(slot: str | None, n_slots: int) -> dict:
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    else:  # CPU runs side by side share the cores instead of each taking them all
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // n_slots)))
    return env


def run_local(sweep_dir: Path, builds: list[str], runs: list[str], cfg: LocalConfig,
              log: Callable[[str], None] = print) -> dict[str, str]:
    """Build, then run the queue; returns {run_id: final state}."""
    for b in builds:
        build_one(sweep_dir, b, log)
    free = slots(cfg)
    n_slots, nproc = len(free), cfg.gpus_per_run if free[0] is not None else 1
    queue, running, states = deque(runs), {}, {}
    # `kill PID` (SIGTERM, as a scheduler or a shell sends it) must stop the runs too, as Ctrl-C does: left
    # alone, a run would go on writing its folder while the next `fastbd sweep` starts it again
    old_term = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        while queue or running:
            while queue and free:
                rid, slot = queue.popleft(), free.pop(0)
                running[rid] = (_start(sweep_dir, rid, slot, n_slots, nproc), slot)
                log(f"[{rid}] started" + (f" on GPU {slot}" if slot else ""))
            time.sleep(0.2)
            for rid, (proc, slot) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[rid]
                free.append(slot)
                st = read_json(sweep_dir / "runs" / rid / "status.json", {})
                states[rid] = st.get("state") or "failed"
                if states[rid] == "running" or (proc.returncode and states[rid] == "done"):
                    states[rid] = "failed"  # killed before it could record anything
                    write_json(sweep_dir / "runs" / rid / "status.json",
                               {**st, "state": "failed", "error": f"worker exited with code {proc.returncode}"})
                log(f"[{rid}] {states[rid]}" + (f": {st.get('error')}" if states[rid] == "failed" else ""))
    except BaseException:
        for proc, _ in running.values():  # Ctrl-C: stop every run; their checkpoints let the next sweep resume
            proc.send_signal(signal.SIGTERM)
        for proc, _ in running.values():
            proc.wait()
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return states


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _start(sweep_dir: Path, rid: str, slot: str | None, n_slots: int, nproc: int) -> subprocess.Popen:
    run_dir = sweep_dir / "runs" / rid
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fastbd.sweep", str(sweep_dir), rid, "--nproc", str(nproc)]
    with open(run_dir / "log.txt", "a") as logf:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=_env(slot, n_slots))


# ----- SLURM through submitit -----------------------------------------------------------------------------

class BuildTask:
    """One dataset build (a picklable callable for submitit)."""

    def __call__(self, sweep_dir: str, build_id: str) -> bool:
        return build_one(sweep_dir, build_id)


def _run_task_class():
    from submitit.helpers import Checkpointable

    class RunTask(Checkpointable):
        """One run. As a Checkpointable it is requeued with the same arguments on preemption or timeout,
        and run_one resumes it from its checkpoint."""

        def __call__(self, sweep_dir: str, run_id: str, nproc: int) -> dict:
            return run_one(sweep_dir, run_id, nproc)

    return RunTask


def slurm_executor(sweep_dir: Path, cfg: SlurmConfig):
    try:
        import submitit
    except ImportError:
        raise ImportError("--executor slurm needs submitit: pip install -e '.[slurm]'") from None
    if shutil.which("srun") is None:
        raise ValueError("--executor slurm: no `srun` on PATH; submit from a SLURM login node")
    return submitit.SlurmExecutor(folder=sweep_dir / "slurm" / "%j", max_num_timeout=cfg.max_requeue)


def _common(cfg: SlurmConfig) -> dict:
    p = {k: getattr(cfg, k) for k in ("partition", "account", "qos") if getattr(cfg, k)}
    return {**p, "setup": list(cfg.setup), "array_parallelism": cfg.array_parallelism}


def submit_arrays(executor, sweep_dir: Path, builds: list[str], runs: list[str], cfg: SlurmConfig,
                  name: str) -> dict:
    """Submit the build array, then the run array after it; returns the job ids (also in slurm/submitted.json).
    `executor` is a submitit SlurmExecutor, or a local/debug one in tests (which take no SLURM options)."""
    is_slurm = type(executor).__name__ == "SlurmExecutor"
    build_jobs, run_jobs = [], []
    if builds:
        if is_slurm:
            executor.update_parameters(**_common(cfg), job_name=f"{name}-build", time=cfg.build_time,
                                       cpus_per_task=cfg.build_cpus, mem=f"{cfg.build_mem_gb}GB",
                                       additional_parameters=dict(cfg.additional))
        build_jobs = executor.map_array(BuildTask(), [str(sweep_dir)] * len(builds), builds)
        if not is_slurm:  # submitit's local/debug executors know no job dependencies: wait here instead
            [j.result() for j in build_jobs]
    if runs:
        if is_slurm:
            extra = dict(cfg.additional)
            if build_jobs:
                extra["dependency"] = f"afterany:{str(build_jobs[0].job_id).split('_')[0]}"
            g = cfg.gpus_per_run
            executor.update_parameters(**_common(cfg), job_name=f"{name}-run", time=cfg.time, gpus_per_node=g,
                                       cpus_per_task=cfg.cpus_per_gpu * g, mem=f"{cfg.mem_gb}GB",
                                       additional_parameters=extra)
        n = len(runs)
        run_jobs = executor.map_array(_run_task_class()(), [str(sweep_dir)] * n, runs, [cfg.gpus_per_run] * n)
    out = {"builds": {b: str(j.job_id) for b, j in zip(builds, build_jobs)},
           "runs": {r: str(j.job_id) for r, j in zip(runs, run_jobs)}, "submitted": time.time()}
    write_json(sweep_dir / "slurm" / "submitted.json", out)
    return {"jobs": out, "build_jobs": build_jobs, "run_jobs": run_jobs}
