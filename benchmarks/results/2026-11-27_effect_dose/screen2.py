"""Evaluate the black-and-white study's 512-key MoCo v2 encoders (clean and poisoned, seeds 0-3) on a variant
of its build; one JSON line per encoder (screen2_rows.json). Run from the repo root on 2026-11-27:
    .venv/bin/python .../screen2.py v100 "trigger.kind=image trigger.path=configs/triggers/htba10_bw.png storage.val_resize=112 storage.val_crop=100"
    .venv/bin/python .../screen2.py v64ref "trigger.kind=image trigger.path=configs/triggers/htba10_bw.png"
(v64ref is the study's own build again: it reproduced the committed reports' numbers.)"""
import json, sys, subprocess, copy
from pathlib import Path
import torch
torch.set_num_threads(1)
from fastbd.sweep.stages import _eval_stage
SW = Path(sys.argv[1]) if len(sys.argv) > 3 else Path("sweeps/effect_bw_q512")
name, overrides = sys.argv[-2], sys.argv[-1].split()
plan = json.loads((SW / "plan.json").read_text())
b = Path(f"/tmp/s22/builds/{name}")
if not (b / "manifest.json").is_file():
    subprocess.run(["fastbd", "build-beton", "-c", "configs/poison/effect.yaml", "--out", str(b),
                    "source.synthetic.distractors=3", *overrides], check=True, stdout=subprocess.DEVNULL)
for r in plan["runs"]:
    if not Path(r["dir"], "train", "encoder.safetensors").is_file():
        continue
    tc = __import__("yaml").safe_load(open(Path(r["dir"], "train", "config.yaml")))
    cfg = copy.deepcopy(r["evals"][0]["cfg"]); cfg["data"] = str(b); cfg["allow_other_data"] = True
    cfg["out"] = f"/tmp/s22/ev/{name}/{SW.name}/{r['id']}"
    if not Path(cfg["out"], "report.json").is_file():
        _eval_stage(cfg, str(Path(r["dir"], "train")), lambda s: None)
    rep = json.loads(Path(cfg["out"], "report.json").read_text())
    p = rep[rep["protocol"]]; k = rep["knn_k20_lf0.1"]; s = rep["trigger_shift"]
    print(json.dumps(dict(v=name, sw=SW.name, rate=tc["data"]["rate"], seed=tc["seed"], top1=p["clean_top1"], fp=p["target_fp"], fpc=p["target_fp_clean"],
          ptop1=p["patched_top1"], kfp=k["target_fp"], kfpc=k["target_fp_clean"], **{f"s_{a}": s[a] for a in ("length", "nearest_class", "cos_target", "rank_target")})), flush=True)
