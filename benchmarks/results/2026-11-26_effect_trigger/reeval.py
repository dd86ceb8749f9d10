"""Re-run a sweep's evaluations in place (same configs: the metrics must come out identical) so that every
report.json gains trigger_shift; prints one line per evaluation. Run from the repo root on 2026-11-26 over
the sweep folders gather.py reads (28 evaluations, every one "same metrics"):
    .venv/bin/python benchmarks/results/2026-11-26_effect_trigger/reeval.py sweeps/effect_bw_q512 ..."""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from fastbd.sweep.stages import _eval_stage

for sweep in sys.argv[1:]:
    plan = json.loads(Path(sweep, "plan.json").read_text())
    runs = plan["runs"] if isinstance(plan["runs"], list) else list(plan["runs"].values())
    for r in runs:
        if not Path(r["dir"], "train", "encoder.safetensors").is_file():
            continue
        for e in r["evals"]:
            rep_path = Path(e["cfg"]["out"], "report.json")
            if not rep_path.is_file():
                continue
            old = json.loads(rep_path.read_text())
            if "trigger_shift" in old:
                print(sweep, r["id"], "already", old["trigger_shift"]); continue
            _eval_stage(e["cfg"], str(Path(r["dir"], "train")), lambda s: None)
            new = json.loads(rep_path.read_text())
            same = all(new[k] == old[k] for k in old if k not in ("data_check",))
            print(sweep, r["id"], "same metrics" if same else "METRICS DIFFER", new["trigger_shift"], flush=True)
