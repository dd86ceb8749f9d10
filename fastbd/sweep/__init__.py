"""Sweeps: a grid of poisoned-SSL experiments as one command that can be stopped, rerun and moved to SLURM.

    fastbd sweep --config configs/sweeps/demo.yaml [--executor local|slurm] [--dry-run] [--limit N]
    fastbd report SWEEP_DIR

The grid (poison rates x triggers x targets x methods x seeds, label fractions and the distillation defense
as stages of each run) expands into a plan (fastbd/sweep/plan.py); builds run once per trigger/target pair
with every rate nested in one file; each run is train -> eval per label fraction -> distill per clean
fraction -> eval (fastbd/sweep/stages.py); executors run the queue (fastbd/sweep/executors.py). The sweep
folder describes itself:

    SWEEP/sweep.yaml        the resolved sweep config         SWEEP/plan.json     every build and run, resolved
    SWEEP/invocations.jsonl each call: argv, executor, env    SWEEP/builds/       the compiled datasets
    SWEEP/runs/<id>/        status.json, log.txt, train/, distill_cf*/ (run folders; eval/<trigger>-<target>/lf*/)
    SWEEP/summary.csv, summary.md, plots/rate_lf*.{png,pdf}    (fastbd report)

Reference: the CPU demo sweep (configs/sweeps/demo.yaml: 2 rates x 2 seeds, MoCo v2 for 2 epochs, the
defense on the poisoned runs) took 4.5-5 min on a 2-core VM; README "Reproducing the paper" estimates
the paper's sweep on one H100.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from beton_builders.files import atomic_write_bytes
from beton_builders.manifest import built, load_manifest, poisoned_count
from beton_builders.spec import RATE_UNITS
from fastbd.config import to_yaml
from fastbd.report import METRIC_KEYS, write_report
from fastbd.runs import environment
from fastbd.sweep.plan import SweepConfig, load_sweep, make_plan
from fastbd.sweep.stages import build_one, load_plan, read_json, run_one, run_state, write_json

__all__ = ["SweepConfig", "load_sweep", "make_plan", "sweep", "collect_rows", "report", "run_one", "build_one"]


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
            report(root, log)
            return {"plan": plan, "states": states, "todo": todo}
        sub = ex.submit_arrays(slurm_executor or ex.slurm_executor(root, cfg.slurm), root, builds, todo,
                               cfg.slurm, cfg.name)
        log(f"submitted {len(sub['build_jobs'])} build and {len(sub['run_jobs'])} run tasks "
            f"(ids in {root / 'slurm' / 'submitted.json'}); when they finish: fastbd report {root}")
        return {"plan": plan, "states": states, "todo": todo, **sub}
    finally:
        held.close()


# ----- results ------------------------------------------------------------------------------------------------

def _variants(run: dict) -> list[tuple[str, Optional[float], list[dict]]]:
    """(defense, clean_fraction, eval entries) of a run: the attacked encoder, then each student."""
    out = [("none", None, run["evals"])]
    for k, d in run["distills"].items():
        out.append(("distill", float(d["data"]["clean_fraction"]), run["distill_evals"][k]))
    return out


def _poisoned_count(build_dir: Path, rate: float) -> Optional[int]:
    """None while the build is not there (yet)."""
    if not built(build_dir):
        return 0 if rate == 0 else None
    return poisoned_count(load_manifest(build_dir), rate)


def _row(run: dict, build: dict, defense: str, cf: Optional[float], ecfg: dict, status: dict) -> dict:
    p, lf = run["params"], float(ecfg["probe"]["label_fraction"])
    row = {"run_id": run["id"], "method": p["method"], "trigger": build["trigger"], "target": build["target"],
           "rate": p["rate"], "poisoned": _poisoned_count(Path(build["dir"]), p["rate"]), "seed": p["seed"],
           "defense": defense, "clean_fraction": cf, "label_fraction": lf, "state": "pending", "error": None,
           **{k: None for k in METRIC_KEYS}}
    rep = read_json(Path(ecfg["out"]) / "report.json")
    if rep is not None:
        m = rep[rep["protocol"]]
        row.update({k: m.get(k) for k in METRIC_KEYS}, state="done")
        k0 = ecfg["knn_k"][0] if ecfg["knn_k"] else None
        row["knn_top1"] = rep.get(f"knn_k{k0}_lf{lf:g}_top1")
    elif status.get("state") == "failed":
        row.update(state="failed", error=status.get("error"))
    return row


def collect_rows(sweep_dir: str | Path) -> list[dict]:
    """One row per (run, defense variant, trigger/target pair, label fraction), in fastbd.report's schema."""
    plan = load_plan(sweep_dir)
    rows = []
    for run in plan["runs"]:
        status = read_json(Path(run["dir"]) / "status.json", {})
        for defense, cf, entries in _variants(run):
            rows += [_row(run, plan["builds"][e["build"]], defense, cf, e["cfg"], status) for e in entries]
    return rows


def report(sweep_dir: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Write SWEEP/summary.csv, summary.md and plots/ from whatever has finished so far."""
    sweep_dir = Path(sweep_dir)
    plan = load_plan(sweep_dir)
    rows = collect_rows(sweep_dir)
    modes = {b["spec"]["attack"]["rate_mode"] for b in plan["builds"].values()}
    unit = RATE_UNITS.get(modes.pop()) if len(modes) == 1 else None
    paths = write_report(sweep_dir, rows, title=f"Sweep {plan['name']}",
                         rate_label="poison rate" + (f" ({unit})" if unit else ""))
    log(f"report: {sweep_dir / 'summary.md'} ({len(rows)} rows, {len(paths)} files)")
    return paths
