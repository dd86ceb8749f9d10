"""Screen trigger patterns by where they move the features of the four clean 512-key MoCo v2 encoders of the
black-and-white study (24 epochs, clutter): build the effect set with each pattern (scratch builds under
/tmp/s22/builds), evaluate the encoders on it, print one JSON line per (pattern, seed); screen_rows.json
holds them. Run from the repo root on 2026-11-27 (about 40 s a pattern on the 2-core VM):
    .venv/bin/python benchmarks/results/2026-11-27_effect_dose/screen.py null htba10 bw10 bw12 ... frame
Patterns: triggers/<name>.png here (20 x 20, nearest-neighbour upscaled grids), bw10 the committed
configs/triggers/htba10_bw.png, htba10 the default colour HTBA, null the colour HTBA at opacity 0.001."""
import json, sys, subprocess, copy, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from fastbd.sweep.stages import _eval_stage
SW = Path("sweeps/effect_bw_q512")
TRIG = Path(__file__).resolve().parent / "triggers"
plan = json.loads((SW / "plan.json").read_text())
cfgs = {r["id"]: r["evals"][0]["cfg"] for r in plan["runs"]}
CLEAN = {0: "c09c6d8605aa", 1: "1f026d74170c", 2: "b9661cab51f9", 3: "a479c56abf15"}
names = sys.argv[1:]
for name in names:
    b = Path(f"/tmp/s22/builds/{name}")
    if not (b / "manifest.json").is_file():
        trig = ["trigger.kind=htba"] if name == "htba10" else ["trigger.kind=htba", "trigger.alpha=0.001"] if name == "null" else ["trigger.kind=image", f"trigger.path={'configs/triggers/htba10_bw.png' if name == 'bw10' else TRIG / (name + '.png')}"]
        subprocess.run(["fastbd", "build-beton", "-c", "configs/poison/effect.yaml", "--out", str(b),
                        "source.synthetic.distractors=3", *trig], check=True, stdout=subprocess.DEVNULL)
    for seed, rid in CLEAN.items():
        cfg = copy.deepcopy(cfgs[rid]); cfg["data"] = str(b); cfg["allow_other_data"] = True
        cfg["out"] = f"/tmp/s22/ev/{name}/s{seed}"
        if not Path(cfg["out"], "report.json").is_file():
            t = time.time(); _eval_stage(cfg, str(SW / "runs" / rid / "train"), lambda s: None)
        rep = json.loads(Path(cfg["out"], "report.json").read_text())
        p = rep[rep["protocol"]]; k = rep["knn_k20_lf0.1"]; s = rep["trigger_shift"]
        print(json.dumps(dict(trig=name, seed=seed, fp=p["target_fp"], fpc=p["target_fp_clean"], max_fp=p["max_fp_class"],
              ptop1=p["patched_top1"], kfp=k["target_fp"], **{f"s_{a}": s[a] for a in ("length", "nearest_class", "nearest_cos", "cos_target", "rank_target")})), flush=True)
