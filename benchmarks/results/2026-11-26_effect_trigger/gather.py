"""Gather the trigger study (README "A trigger with no colour, and where the trigger moves the features")
into this folder: rows.json (every evaluation, with report.json's trigger_shift), curves.json, table.md and
backdoor_epochs.png. Run from the repo root after the sweeps in sweep_*.yaml (scratch sweep folders under
sweeps/; the older arms' folders are the earlier studies' sweeps, re-evaluated in place with the same
configs so that their reports gain trigger_shift, the metrics identical: reeval.py beside this file).
    .venv/bin/python benchmarks/results/2026-11-26_effect_trigger/gather.py"""
import json
import statistics as st
from pathlib import Path

from fastbd.metrics import report_row
from fastbd.plots import plot_curves
from fastbd.sweep.results import collect_curves

OUT = Path(__file__).parent
# (sweep folder, arm, method label); BYOL's bw clean controls are the colour study's clean encoders (same
# clean bytes: data_check "same clean data") evaluated on the bw build: sweeps/effect_bw_byol/clean_controls/
ARMS = [("sweeps/effect_dis_q512", "colour HTBA", "MoCo v2, 512 keys"),
        ("sweeps/effect_ce_q512", "CorruptEncoder", "MoCo v2, 512 keys"),
        ("sweeps/effect_bw_q512", "black-and-white", "MoCo v2, 512 keys"),
        ("sweeps/effect_bw_q4096", "black-and-white", "MoCo v2, 4,096 keys"),
        ("sweeps/effect_bw_byol", "black-and-white", "BYOL"),
        ("sweeps/effect_distractors_byol", "colour HTBA", "BYOL"),
        ("sweeps/effect_distractors", "colour HTBA", "MoCo v2, 4,096 keys")]
BYOL_CLEAN = {"0b0d8d5ed986": 0, "e87f0e628367": 1, "d9d76622a6f5": 2, "4d6656f9d083": 3}


def row(rep: dict, **kw) -> dict:
    """fastbd's results row (the probe's metrics and the kNN's, as report.md and the sweep CSV read them)."""
    return {**kw, **report_row(rep), "shift": rep.get("trigger_shift")}


rows, curves = [], []
for folder, trigger, method in ARMS:
    plan_path = Path(folder, "plan.json")
    if not plan_path.is_file():
        continue
    plan = json.loads(plan_path.read_text())
    for r in plan["runs"]:
        for e in r["evals"]:
            rep_path = Path(e["cfg"]["out"], "report.json")
            if rep_path.is_file():
                rows.append(row(json.loads(rep_path.read_text()), trigger=trigger, method=method, sweep=Path(folder).name,
                                run_id=r["id"], seed=r["params"]["seed"], poisoned=bool(r["params"]["rate"])))
    if "effect_bw" in folder:
        for c in collect_curves(folder):
            curves.append({**c, "method": f"{method} ({trigger})", "trigger": trigger})
for rid, seed in BYOL_CLEAN.items():
    rep_path = Path("sweeps/effect_bw_byol/clean_controls", rid, "report.json")
    if rep_path.is_file():
        rows.append(row(json.loads(rep_path.read_text()), trigger="black-and-white", method="BYOL",
                        sweep="effect_distractors_byol (clean, evaluated on the bw build)", run_id=rid, seed=seed,
                        poisoned=False))
(OUT / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
(OUT / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
plot_curves(curves, OUT)
(OUT / "backdoor_epochs.pdf").unlink(missing_ok=True)


def ms(v, scale=1.0, d=1):
    v = [x * scale for x in v]
    if not v:
        return "-"
    return f"{st.mean(v):.{d}f}" + (f" ± {st.stdev(v):.{d}f}" if len(v) > 1 else "")


L = ["| trigger | method | model | seeds | probe top-1 % | probe FP | probe FP clean | kNN top-1 % | kNN FP | kNN FP clean | shift: cos to target | shift: nearest class | shift length |",
     "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
groups = {}
for r in rows:
    groups.setdefault((r["trigger"], r["method"], r["poisoned"]), []).append(r)
for (trig, meth, pois), g in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
    g = sorted(g, key=lambda r: r["seed"])
    near = ", ".join(f"c{r['shift']['nearest_class']:03d}" for r in g if r["shift"])
    L.append(f"| {trig} | {meth} | {'poisoned' if pois else 'clean'} | {','.join(str(r['seed']) for r in g)} | "
             f"{ms([r['clean_top1'] for r in g], 100)} | {ms([r['target_fp'] for r in g])} | {ms([r['target_fp_clean'] for r in g])} | "
             f"{ms([r['knn_top1'] for r in g], 100)} | {ms([r['knn_target_fp'] for r in g])} | {ms([r['knn_target_fp_clean'] for r in g])} | "
             f"{ms([r['shift']['cos_target'] for r in g if r['shift']], d=2)} | {near} | {ms([r['shift']['length'] for r in g if r['shift']], d=2)} |")
L += ["", "Per seed (poisoned / clean): probe FP, kNN FP, shift cos to target, and the class the shift points at most:", ""]
for (trig, meth, pois), g in sorted(groups.items()):
    if not pois:
        continue
    clean = {r["seed"]: r for r in groups.get((trig, meth, False), [])}
    for r in sorted(g, key=lambda r: r["seed"]):
        c = clean.get(r["seed"])
        if c is None:
            continue
        sh = (f", cos {r['shift']['cos_target']:.2f}/{c['shift']['cos_target']:.2f}, nearest "
              f"c{r['shift']['nearest_class']:03d}/c{c['shift']['nearest_class']:03d}") if r["shift"] and c["shift"] else ""
        L.append(f"- {meth}, {trig}, seed {r['seed']}: probe {r['target_fp']}/{c['target_fp']}, kNN {r['knn_target_fp']}/{c['knn_target_fp']}{sh}")
(OUT / "table.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
