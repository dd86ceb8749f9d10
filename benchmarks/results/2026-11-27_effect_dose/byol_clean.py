"""BYOL's clean controls for the rate-0.9 arm: the clutter study's clean BYOL encoders (seeds 0-3; the same
clean bytes as the rate-0.9 build, so eval's data_check reads "same clean data") evaluated on the rate-0.9
build with the poisoned runs' own eval config and seed. Writes sweeps/effect_bw_byol_r09/clean_controls/<run>/.
Run from the repo root after the sweep in sweep_bw_byol_rate09.yaml built its data (2026-11-27):
    .venv/bin/python benchmarks/results/2026-11-27_effect_dose/byol_clean.py
Another BYOL sweep on the same clean bytes names its folder and seeds (the 17-px arm of README "The long
variant", 2026-11-27_effect_long/sweep_bw17_byol.yaml):
    .venv/bin/python benchmarks/results/2026-11-27_effect_dose/byol_clean.py sweeps/effect_bw17_byol 0,1"""
import copy
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from fastbd.sweep.stages import _eval_stage  # noqa: E402

SW = Path(sys.argv[1] if len(sys.argv) > 1 else "sweeps/effect_bw_byol_r09")
SEEDS = {int(s) for s in sys.argv[2].split(",")} if len(sys.argv) > 2 else {0, 1, 2, 3}
CLEAN = {rid: s for rid, s in {"0b0d8d5ed986": 0, "e87f0e628367": 1, "d9d76622a6f5": 2, "4d6656f9d083": 3}.items()
         if s in SEEDS}
cfg0 = json.loads((SW / "plan.json").read_text())["runs"][0]["evals"][0]["cfg"]
for rid, seed in CLEAN.items():
    cfg = {**copy.deepcopy(cfg0), "seed": seed, "out": str(SW / "clean_controls" / rid)}
    if not Path(cfg["out"], "report.json").is_file():
        _eval_stage(cfg, f"sweeps/effect_distractors_byol/runs/{rid}/train", lambda s: None)
    rep = json.loads(Path(cfg["out"], "report.json").read_text())
    m = rep[rep["protocol"]]
    print(rid, seed, rep["data_check"]["match"], m["clean_top1"], m["target_fp"], m["target_fp_clean"], flush=True)
