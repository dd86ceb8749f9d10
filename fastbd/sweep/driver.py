"""`fastbd sweep`: plan the grid, then run it here or submit it to SLURM, and report what finished.

The plan is fastbd/sweep/plan.py, one run's stages fastbd/sweep/stages.py, the executors
fastbd/sweep/executors.py, the report's rows fastbd/sweep/results.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from beton_builders.files import atomic_write_bytes, write_json
from beton_builders.manifest import built
from fastbd.config import to_yaml
from fastbd.runs import environment
from fastbd.sweep.plan import SweepConfig, make_plan
from fastbd.sweep.results import report_sweep
from fastbd.sweep.stages import run_state


def _plan_lines(plan: dict, states: dict[str, str], builds_todo: list[str]) -> list[str]:
    lines = [f"sweep {plan['name']} in {plan['root']}",
             f"builds: {len(plan['builds'])} ({len(builds_todo)} to build)"]
    for bid, b in plan["builds"].items():
        lines.append(f"  {'todo' if bid in builds_todo else 'done'}  {Path(b['dir']).name}")
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "failed", "pending")}
    lines.append(f"runs: {len(plan['runs'])} ({counts['done']} done, {counts['failed']} failed, "
                 f"{counts['pending']} pending)")
    for r in plan["runs"]:
        p, b = r["params"], plan["builds"][r["build"]]
        on = f"{b['trigger']} -> {b['target']}" if len(r["attacks"]) == 1 else f"clean, on {len(r['attacks'])} pairs"
        extra = f" +{len(r['distills'])} distill" if r["distills"] else ""
        extra += " +patchsearch" if r.get("patchsearch") else ""
        lines.append(f"  {states[r['id']]:<8}{r['id']}  {p['method']:<8} rate {p['rate']:<6g} seed {p['seed']:<3} "
                     f"{on}{extra}")
    return lines


def sweep(cfg: SweepConfig, executor: str = "local", dry_run: bool = False, limit: int = 0,
          log: Callable[[str], None] = print, slurm_executor=None) -> dict:
    """Plan the sweep, then run (local) or submit (slurm) every run that is not done, and (local) report.
    Failed runs are retried. `limit` > 0 runs at most that many this time. Returns {plan, states, ...}."""
    from fastbd.sweep import executors as ex

    if executor not in ("local", "slurm"):
        raise ValueError(f"--executor: {executor!r} is not local or slurm")
    plan = make_plan(cfg)
    root = Path(plan["root"])
    states = {r["id"]: run_state(r) for r in plan["runs"]}
    builds_todo = [b for b, v in plan["builds"].items() if not built(v["dir"])]
    for line in _plan_lines(plan, states, builds_todo):
        log(line)
    todo = [r["id"] for r in plan["runs"] if states[r["id"]] != "done"]
    if limit > 0:
        todo = todo[:limit]
    log(f"{'would run' if dry_run else 'running'} {len(todo)} runs with the {executor} executor")
    if dry_run:
        return {"plan": plan, "states": states, "todo": todo}
    root.mkdir(parents=True, exist_ok=True)
    held = ex.lock(root)
    try:
        atomic_write_bytes(root / "sweep.yaml", to_yaml(cfg).encode())
        write_json(root / "plan.json", plan)
        with open(root / "invocations.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "argv": sys.argv, "executor": executor, "todo": todo,
                                "env": environment()}) + "\n")
        needed = {b for r in plan["runs"] if r["id"] in todo for b in (r["build"], *r["attacks"])}
        builds = [b for b in builds_todo if b in needed]
        if executor == "local":
            states.update(ex.run_local(root, builds, todo, cfg.local, log))
            report_sweep(root, log)
            return {"plan": plan, "states": states, "todo": todo}
        sub = ex.submit_arrays(slurm_executor or ex.slurm_executor(root, cfg.slurm), root, builds, todo,
                               cfg.slurm, cfg.name)
        log(f"submitted {len(sub['build_jobs'])} build and {len(sub['run_jobs'])} run tasks "
            f"(ids in {root / 'slurm' / 'submitted.json'}); when they finish: fastbd report {root}")
        return {"plan": plan, "states": states, "todo": todo, **sub}
    finally:
        held.close()
