"""Sweeps: a grid of poisoned-SSL experiments as one command that can be stopped, rerun and moved to SLURM.

    fastbd sweep --config configs/sweeps/demo.yaml [--executor local|slurm] [--dry-run] [--limit N]
    fastbd report SWEEP_DIR

The grid (poison rates x triggers x targets x methods x seeds, label fractions and the distillation defense
as stages of each run) expands into a plan (fastbd/sweep/plan.py); builds run once per trigger/target pair
with every rate nested in one file; each run is train -> eval per label fraction -> distill per clean
fraction -> eval, and with grid.patchsearch -> PatchSearch -> retrain on its filtered set -> eval
(fastbd/sweep/stages.py); executors run the queue (fastbd/sweep/executors.py); driver.py
ties them together and results.py collects the report's rows. The sweep folder describes itself:

    SWEEP/sweep.yaml        the resolved sweep config         SWEEP/plan.json     every build and run, resolved
    SWEEP/invocations.jsonl each call: argv, executor, env    SWEEP/builds/       the compiled datasets
    SWEEP/runs/<id>/        status.json, log.txt, train/, distill_cf*/ (run folders; eval/<trigger>-<target>/lf*/)
    SWEEP/summary.csv, summary.md, plots/rate_lf*.{png,pdf}    (fastbd report)

Reference: the CPU demo sweep (configs/sweeps/demo.yaml: 2 rates x 2 seeds, MoCo v2 for 2 epochs, the
defense on the poisoned runs) took 4.5-5 min on a 2-core VM; README "Reproducing the paper" estimates
the paper's sweep on one H100.
"""

from fastbd.sweep.driver import sweep
from fastbd.sweep.plan import SweepConfig, load_sweep, make_plan
from fastbd.sweep.results import collect_rows, report_sweep
from fastbd.sweep.stages import build_one, run_one

__all__ = ["SweepConfig", "load_sweep", "make_plan", "sweep", "collect_rows", "report_sweep", "run_one", "build_one"]
