"""Gather the dose and look study (README "Dose and looks: what pulls a triggered image")
into this folder: rows.json (every evaluation of the sweeps below, with report.json's trigger_shift),
curves.json, table.md and backdoor_epochs.png. Run from the repo root after the sweeps in sweep_*.yaml:
    .venv/bin/python benchmarks/results/2026-11-27_effect_dose/gather.py
The trigger screen (screen.py, screen_rows.json) and the smaller-trigger check (screen2.py,
screen2_rows.json) are gathered by the scripts that made them."""
import json
from pathlib import Path

from fastbd.metrics import _mean_std, report_row
from fastbd.plots import plot_curves
from fastbd.report import _pm
from fastbd.sweep.results import collect_curves

OUT = Path(__file__).parent
# (sweep folder, arm label, method label); the rate-0.5 arm is the black-and-white study's
# (2026-11-26_effect_trigger); BYOL's clean controls are that study's clean BYOL encoders (the clutter
# study's, same clean bytes) evaluated on the rate-0.9 build by byol_clean.py: sweeps/effect_bw_byol_r09/clean_controls
MOCO, BYOL = "MoCo v2, 512 keys", "BYOL"
ARMS = [("sweeps/effect_bw_q512", "20 px", MOCO), ("sweeps/effect_bw_rate09", "20 px", MOCO),
        ("sweeps/effect_bw14_rate09", "14 px", MOCO), ("sweeps/effect_bw17_rate09", "17 px", MOCO),
        ("sweeps/effect_bw_byol_r09", "20 px", BYOL), ("sweeps/effect_sub4_bw", "20 px, 4 looks a class", MOCO),
        ("sweeps/effect_bw_rate09_dist", "20 px", MOCO), ("sweeps/effect_bw17_byol", "17 px", BYOL)]
# effect_bw_rate09_dist holds effect_bw_rate09's encoders (copied) distilled by the stronger student (batch 64,
# 60 epochs): only its students are new rows. The 17-px sweeps' students are the stronger one's too.
STRONG = {"effect_bw_rate09_dist", "effect_bw17_rate09", "effect_bw17_byol"}
BYOL_CLEAN = {"0b0d8d5ed986": 0, "e87f0e628367": 1, "d9d76622a6f5": 2, "4d6656f9d083": 3}


def row(rep: dict, **kw) -> dict:
    return {**kw, **report_row(rep), "shift": rep.get("trigger_shift")}


rows, curves = [], []
for folder, source, method in ARMS:
    if not Path(folder, "plan.json").is_file():
        continue
    plan = json.loads(Path(folder, "plan.json").read_text())
    for r in plan["runs"]:
        p = r["params"]
        variants = [("none", r["evals"])] + [(f"distill {k}", v) for k, v in r.get("distill_evals", {}).items()]
        for defense, entries in variants:
            if Path(folder).name == "effect_bw_rate09_dist" and defense == "none":
                continue
            if Path(folder).name in STRONG and defense != "none":
                defense += ", 60 ep at batch 64"
            for e in entries:
                rep_path = Path(e["cfg"]["out"], "report.json")
                if rep_path.is_file():
                    rows.append(row(json.loads(rep_path.read_text()), source=source, method=method,
                                    sweep=Path(folder).name, run_id=r["id"], seed=p["seed"], rate=p["rate"],
                                    defense=defense))
    for c in collect_curves(folder) if method == MOCO and "looks" not in source else []:  # looks: stopped
        if c["defense"] == "none" and c["run_id"] not in {x["run_id"] for x in curves}:  # clean runs: once
            curves.append({**c, "method": MOCO, "trigger": f"bw {source}"})
for folder, source in (("sweeps/effect_bw_byol_r09", "20 px"), ("sweeps/effect_bw17_byol", "17 px")):
    for rid, seed in BYOL_CLEAN.items():
        rep_path = Path(folder, "clean_controls", rid, "report.json")
        if rep_path.is_file():
            rows.append(row(json.loads(rep_path.read_text()), source=source, method=BYOL, run_id=rid, seed=seed,
                            rate=0.0, defense="none",
                            sweep=f"effect_distractors_byol (clean, evaluated on the {source} rate-0.9 build)"))
(OUT / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
(OUT / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")


def ms(v, scale=1.0, d=1):
    """"mean ± std" as fastbd's sweep tables write it (sample std over seeds)."""
    return _pm(*_mean_std([x for x in v if x is not None]), scale, d)


L = ["| method | trigger | rate | model | seeds | probe top-1 % | probe FP | probe FP clean | kNN top-1 % | kNN FP | kNN FP clean | shift: cos to target | shift: nearest class |",
     "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
COLUMNS = ("clean_top1", "target_fp", "target_fp_clean", "knn_top1", "knn_target_fp", "knn_target_fp_clean")
groups = {}
for r in rows:
    if r["rate"] == 0 and r["sweep"] == "effect_bw_q512":
        continue  # the same clean encoders as effect_bw_rate09's, on the rate-0.5 build: listed once, there
    groups.setdefault((r["method"], r["source"], r["rate"], r["defense"]), []).append(r)
for (meth, src, rate, d), g in sorted(groups.items()):
    g = sorted(g, key=lambda r: r["seed"])
    model = "clean" if rate == 0 else ("poisoned" if d == "none" else f"poisoned, {d}")
    near = ", ".join(f"c{r['shift']['nearest_class']:03d}" for r in g if r["shift"])
    metrics = " | ".join(ms([r[k] for r in g], 100 if k.endswith("top1") else 1) for k in COLUMNS)
    cos = ms([r["shift"]["cos_target"] for r in g if r["shift"]], d=2)
    L.append(f"| {meth} | {src} | {rate:g} | {model} | {','.join(str(r['seed']) for r in g)} | {metrics} | {cos} | {near} |")
L += ["", "Per seed, probe FP / kNN FP / clean top-1 % / shift's nearest class:", ""]
for (meth, src, rate, d), g in sorted(groups.items()):
    cells = [f"s{r['seed']}: {r['target_fp']} / {r['knn_target_fp']} / {r['clean_top1'] * 100:.1f} / "
             f"c{r['shift']['nearest_class']:03d}" for r in sorted(g, key=lambda r: r["seed"]) if r["shift"]]
    L.append(f"- {meth}, {src}, rate {rate:g}, {d}: " + "; ".join(cells))
(OUT / "table.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
plot_curves(curves, OUT)
(OUT / "backdoor_epochs.pdf").unlink(missing_ok=True)
