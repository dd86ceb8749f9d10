"""A sweep's results: one row per evaluated encoder, collected from the run folders, and the report.

    fastbd report SWEEP_DIR        (report_sweep: SWEEP/summary.csv, summary.md, plots/ via fastbd.report)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from beton_builders.manifest import built, load_manifest, poisoned_count
from beton_builders.spec import RATE_UNITS
from fastbd.metrics import report_row
from fastbd.report import METRIC_KEYS, write_report
from fastbd.runs import read_metrics
from fastbd.sweep.stages import load_plan, read_json


def _variants(run: dict) -> list[tuple[str, Optional[float], list[dict]]]:
    """(defense, clean_fraction, eval entries) of a run: the attacked encoder, then each student, then the
    model retrained on PatchSearch's filtered set."""
    out = [("none", None, run["evals"])]
    for k, d in run["distills"].items():
        out.append(("distill", float(d["data"]["clean_fraction"]), run["distill_evals"][k]))
    if run.get("patchsearch"):
        out.append(("patchsearch", None, run["patchsearch_evals"]))
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
        m = report_row(rep)
        row.update({k: m.get(k) for k in METRIC_KEYS}, state="done")
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


def collect_curves(sweep_dir: str | Path) -> list[dict]:
    """The training-time backdoor checks (`monitor.every`, kind "backdoor" in metrics.jsonl) of every run
    and student: one entry per encoder with its parameters and its list of checks, for the curve plots."""
    plan = load_plan(sweep_dir)
    out = []
    for run in plan["runs"]:
        p = run["params"]
        folders = [("none", None, run["train"]["out"])]
        folders += [("distill", float(d["data"]["clean_fraction"]), d["out"]) for d in run["distills"].values()]
        if run.get("patchsearch"):
            folders.append(("patchsearch", None, run["patchsearch"]["train"]["out"]))
        for defense, cf, folder in folders:
            checks = [r for r in read_metrics(folder) if r.get("kind") == "backdoor"]
            if checks:
                out.append({"run_id": run["id"], "method": p["method"], "rate": p["rate"], "seed": p["seed"],
                            "trigger": plan["builds"][run["build"]]["trigger"],
                            "defense": defense, "clean_fraction": cf, "checks": checks})
    return out


def collect_defenses(sweep_dir: str | Path) -> list[dict]:
    """One row per finished PatchSearch defense: its detection scored against the manifest and its cost."""
    plan = load_plan(sweep_dir)
    out = []
    for run in plan["runs"]:
        ps = run.get("patchsearch")
        rep = read_json(Path(ps["defend"]["out"]) / "report.json") if ps else None
        if rep is None:
            continue
        s, b, p = rep["scored_against_manifest"], plan["builds"][run["build"]], run["params"]
        out.append({"run_id": run["id"], "method": p["method"], "trigger": b["trigger"], "target": b["target"],
                    "rate": p["rate"], "seed": p["seed"], "training_images": s["training_images"],
                    "poisoned": s["poisoned_images"], **{k: s["removed"][k] for k in
                                                         ("count", "precision", "recall", "poisoned_left")},
                    "ap_search": s["average_precision"]["search"], "ap_classifier": s["average_precision"]["classifier"],
                    "iou_mean": s["boxes"]["iou"]["mean"], "defense_s": rep["cost"]["defense"]["wall_s"],
                    "train_s": rep["cost"]["training"]["wall_s"]})
    return out


def report_sweep(sweep_dir: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Write SWEEP/summary.csv, summary.md and plots/ from whatever has finished so far."""
    sweep_dir = Path(sweep_dir)
    plan = load_plan(sweep_dir)
    rows = collect_rows(sweep_dir)
    modes = {b["spec"]["attack"]["rate_mode"] for b in plan["builds"].values()}
    unit = RATE_UNITS.get(modes.pop()) if len(modes) == 1 else None
    paths = write_report(sweep_dir, rows, title=f"Sweep {plan['name']}",
                         rate_label="poison rate" + (f" ({unit})" if unit else ""), curves=collect_curves(sweep_dir),
                         defenses=collect_defenses(sweep_dir))
    log(f"report: {sweep_dir / 'summary.md'} ({len(rows)} rows, {len(paths)} files)")
    return paths
