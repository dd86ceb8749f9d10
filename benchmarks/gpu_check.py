"""The one-call GPU check: install from the offline bundle, make the data, measure, and judge the targets.

    bash benchmarks/gpu_check.sh OUT                                   # on the GPU machine (GPU_CHECK.md)
    FASTBD_GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh /tmp/x          # the same steps rehearsed on a CPU

Steps run in order, each in its own process under a time cap, and a failed or timed-out step is recorded
(its error and the end of its output) while the next one starts. Before a step starts, the time left of
the budget must cover its expected duration, else it is skipped as "budget", so the whole check ends by
the budget and a `run` call with timeout_s = budget + 60 always returns its files. OUT receives three small
files, rewritten after every step: gpu_check.json (hardware, every step's status, seconds and rows),
gpu_check.md (the same as tables, and the targets P1, P2, P3 and P5 judged from the rows) and
gpu_check.log (the end of each step's output).

Environment (all optional):
  FASTBD_GPU_CHECK_CPU=1      rehearsal sizes on the CPU (tiny images, 2 steps); the steps are the same
  FASTBD_GPU_CHECK_STEPS      comma-separated step names to run (default: every speed step, in order; the
                              `effect` experiment runs only when named)
  FASTBD_GPU_CHECK_SKIP       comma-separated step names to leave out
  FASTBD_GPU_CHECK_BUDGET     seconds for the whole check (default 540 on a GPU, 1800 on the CPU)
  FASTBD_GPU_CHECK_BUNDLE     the bundle folder holding parts/ (default ~/bundle)
  FASTBD_GPU_CHECK_WHEELS     extra pure-Python wheels (default .gpu-bundle/wheels, see gpu_prepare.sh)
  FASTBD_GPU_CHECK_EFFECT     the effect step's sweep YAML (default configs/sweeps/effect_gpu.yaml)
  FASTBD_GPU_CHECK_WORK       scratch: installs, data, compile caches (default ~/fastbd_gpu_check; kept
                              while the machine stays warm, so a second call reuses them)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput_table import table  # noqa: E402

CPU = os.environ.get("FASTBD_GPU_CHECK_CPU") == "1"
BACKENDS = ["dali", "ffcv", "torch"]
# name: (cap s, expected s on an H100/H200, what). Expected: at or above what the 2026-11-26 H100 run
# measured (GPU_CHECK.md), so the budget skip stays conservative; the caps leave room for a slow first compile.
STEPS: dict[str, tuple[int, int, str]] = {
    "env": (30, 5, "nvidia-smi, python, torch, what imports"),
    "deps": (90, 10, "omegaconf from the carried wheels, if the image lacks it"),
    "dali": (240, 60, "DALI from the bundle"),
    "ffcv": (300, 60, "FFCV built from the bundle's sdist and .debs"),
    "data": (240, 40, "the synthetic ImageNet-like build"),
    "moco224": (300, 90, "MoCo v2 224 px eager: ceiling; dali, ffcv, torch alone and end to end"),
    "moco224c": (360, 150, "MoCo v2 224 px compiled: ceiling; dali, ffcv alone and end to end"),
    "p5": (240, 60, "MoCo v2 112 px end to end (dali, else ffcv, else torch): one run alone, then two packed"),
    "moco224lin": (240, 80, "MoCo v2 224 px, data.aug_impl=linear: dali alone and end to end, eager and compiled"),
    "byol224": (300, 90, "BYOL 224 px eager: ceiling; dali, ffcv, torch alone and end to end"),
    "byol224c": (360, 150, "BYOL 224 px compiled: ceiling; dali, ffcv alone and end to end"),
    "r112": (300, 120, "MoCo v2 and BYOL 112 px eager: ceiling; every backend"),
    "effect": (540, 240, "the backdoor study, a sweep (FASTBD_GPU_CHECK_EFFECT) through fastbd sweep; OUT/effect"),
}
DEFAULT_STEPS = [s for s in STEPS if s != "effect"]  # the speed check; the experiment only when named
# sizes: (res "224", res "112", batch, timed steps, warm-up steps, images, workers per packed run)
SIZES = dict(r224=32, r112=32, batch=8, steps=2, warmup=1, images=64, half=1) if CPU else \
    dict(r224=224, r112=112, batch=256, steps=30, warmup=5, images=12800, half=8)


def effect_cpu(sweep_cfg: str) -> list[str]:
    """The effect step on the CPU: the same sweep on a 10x smaller build (its own source and trigger
    overrides kept, the size ones after them), one epoch, one seed, students in batches of 32: plumbing only."""
    import yaml
    y = yaml.safe_load(Path(sweep_cfg).read_text())
    poison = [*(y.get("poison_overrides") or []), "source.synthetic.train_per_class=40", "source.synthetic.val_per_class=10"]
    distill = [*(y.get("distill_overrides") or []), "data.batch_size=32", "data.workers=1"]
    return [f"poison_overrides=[{','.join(poison)}]", "train_overrides=[epochs=1,monitor.every=1,data.workers=1]",
            f"distill_overrides=[{','.join(distill)}]", "grid.seeds=[0]", "local.cpu_parallel=2"]


def bench_args(step: str) -> list[str]:
    """train_throughput.py's arguments for a benchmark step."""
    s = SIZES
    common = ["--batch", str(s["batch"]), "--steps", str(s["steps"]), "--warmup", str(s["warmup"]),
              "--images", str(s["images"])]
    method = "byol" if step.startswith("byol") else "moco"
    if step in ("moco224", "byol224"):
        return [*common, "--methods", method, "--res", str(s["r224"]), "--compile", "off", "--backends", *BACKENDS]
    if step in ("moco224c", "byol224c"):
        return [*common, "--methods", method, "--res", str(s["r224"]), "--compile", "on", "--backends", "dali", "ffcv"]
    if step == "moco224lin":
        return [*common, "--methods", "moco", "--res", str(s["r224"]), "--compile", "off", "on", "--aug-impl",
                "linear", "--backends", "dali", "--measure", "loader", "e2e"]
    if step == "r112":
        return [*common, "--methods", "moco", "byol", "--res", str(s["r112"]), "--compile", "off",
                "--backends", *BACKENDS]
    raise KeyError(step)


class Check:
    def __init__(self, out: Path):
        self.out, self.t0 = out, time.time()
        self.budget = float(os.environ.get("FASTBD_GPU_CHECK_BUDGET", 1800 if CPU else 540))
        self.work = Path(os.environ.get("FASTBD_GPU_CHECK_WORK", Path.home() / "fastbd_gpu_check")).expanduser()
        self.bundle = os.environ.get("FASTBD_GPU_CHECK_BUNDLE", str(Path.home() / "bundle"))
        self.wheels = os.environ.get("FASTBD_GPU_CHECK_WHEELS", str(ROOT / ".gpu-bundle" / "wheels"))
        self.pythonpath, self.ld = [str(ROOT)], []
        self.report = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_rehearsal": CPU,
                       "budget_s": self.budget, "sizes": SIZES, "hardware": {}, "steps": []}
        self.log_tail: list[str] = []

    def env(self) -> dict:
        e = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(self.work / "inductor"))
        e["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])])
        e["LD_LIBRARY_PATH"] = os.pathsep.join([*self.ld, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])
        if CPU:
            e["CUDA_VISIBLE_DEVICES"] = ""
        return e

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def proc(self, name: str, cmd: list[str], cap: float) -> tuple[int | None, str]:
        """Run `cmd` in its own session with a time limit; (exit code or None on timeout, its output)."""
        logf = self.work / "logs" / f"{name}.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        with open(logf, "w") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env(), cwd=ROOT,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=cap)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc = None
        return rc, logf.read_text(errors="replace")

    def step(self, name: str) -> None:
        cap, expected, what = STEPS[name]
        cap *= 3 if CPU else 1  # a 2-core VM compiles a ResNet-18 step in minutes
        rec = {"step": name, "what": what, "cap_s": cap, "expected_s": expected}
        if self.left() < (expected if not CPU else 0) or self.left() <= 5:
            rec.update(status="skipped", error=f"budget: {self.left():.0f} s left, {expected} s expected")
            return self._record(rec, "")
        t, limit = time.time(), min(cap, self.left())
        print(f"[gpu_check] {name}: {what} (cap {limit:.0f} s, {self.left():.0f} s of budget left)", flush=True)
        try:
            rc, text, extra = getattr(self, f"_{name}", self._bench)(name, limit)
        except Exception as e:  # noqa: BLE001 - the check records a broken step and goes on
            rc, text, extra = 1, f"{type(e).__name__}: {e}", {}
        rec.update(seconds=round(time.time() - t, 1), **extra)
        if rc is None:
            rec.update(status="timeout", error=f"stopped at its cap of {limit:.0f} s")
        elif rc:
            last = text.strip().splitlines()[-1][-300:] if text.strip() else f"exit code {rc}"
            rec.update(status="failed", error=rec.get("error") or last)
        else:
            rec.setdefault("status", "ok")
        self._record(rec, text)

    def _record(self, rec: dict, text: str) -> None:
        self.report["steps"].append(rec)
        print(f"[gpu_check] {rec['step']}: {rec['status']}" + (f" in {rec['seconds']} s" if "seconds" in rec else "")
              + (f" ({rec['error']})" if rec.get("error") else ""), flush=True)
        self.log_tail.append(f"===== {rec['step']}: {rec['status']} =====\n{text[-6000:]}\n")
        self.write()

    # ----- the steps ------------------------------------------------------------------------------------

    def _env(self, name, cap):
        code = ("import json, platform, torch; p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() "
                "else None; print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, "
                "'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(0) if p else 'CPU', "
                "'gpu_memory_gib': round(p.total_memory / 2**30, 1) if p else None, 'cores': len(__import__('os')"
                ".sched_getaffinity(0)), 'host': platform.node()}))")
        rc, text = self.proc(name, [sys.executable, "-c", code], cap)
        if rc == 0:
            self.report["hardware"] = json.loads(text.strip().splitlines()[-1])
        if not CPU and shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
            self.report["hardware"]["nvidia_smi"] = (smi.stdout or smi.stderr).strip()
        return rc, text, {}

    def _install(self, name, cap):
        rc, text = self.proc(name, [sys.executable, str(ROOT / "benchmarks" / "gpu_bundle.py"), name, "--bundle",
                                    self.bundle, "--wheels", self.wheels], cap)
        try:
            res = json.loads(text.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return rc, text, {}
        if res["ok"]:  # only a verified install goes on the path of the later steps
            self.pythonpath += [p for p in res["pythonpath"] if p not in self.pythonpath]
            self.ld += [p for p in res["ld_library_path"] if p not in self.ld]
            return rc, text, {"detail": res["detail"]}
        if res.get("skipped"):
            return rc, text, {"status": "skipped", "error": res["detail"][-400:]}
        return rc, text, {"error": res["detail"][-400:]}

    _deps = _dali = _ffcv = _install

    def _tt(self, name, cap, args, out):
        return self.proc(name, [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--out", str(out),
                                "--data-dir", str(self.work), *args], cap)

    def _data(self, name, cap):
        s = SIZES
        rc, text = self._tt(name, cap, ["--only-data", "--images", str(s["images"])], self.work / "runs" / name)
        return rc, text, {}

    def _bench(self, name, cap):
        out = self.work / "runs" / name
        rc, text = self._tt(name, cap, bench_args(name), out)
        return rc, text, {"rows": _rows(out)}

    def imports(self, module: str) -> bool:
        return subprocess.run([sys.executable, "-c", f"import {module}"], env=self.env(), capture_output=True).returncode == 0

    def _p5(self, name, cap):
        """One run alone, then two at once on the same GPU (half the cores each, both), timed together; with
        DALI, else FFCV, else the torch backend (packing is the point, not the loader)."""
        s, base = SIZES, self.work / "runs" / name
        backend = next((b for b, m in (("dali", "nvidia.dali"), ("ffcv", "ffcv.libffcv")) if self.imports(m)), "torch")
        args = ["--methods", "moco", "--res", str(s["r112"]), "--backends", backend, "--measure", "e2e",
                "--batch", str(s["batch"]), "--steps", str(s["steps"]), "--warmup", str(s["warmup"]),
                "--images", str(s["images"]), "--workers", str(s["half"])]
        t0 = time.time()
        rc, text = self._tt(f"{name}_single", cap / 3, args, base / "single")
        single = _rows(base / "single")
        gate = base / "barrier"
        shutil.rmtree(gate, ignore_errors=True)
        cmds = [[sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--out", str(base / k),
                 "--data-dir", str(self.work), *args, "--barrier", str(gate), "2"] for k in ("a", "b")]
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=self.env(), cwd=ROOT,
                                  start_new_session=True) for c in cmds]
        rcs = []
        for p in procs:
            try:
                rcs.append(p.wait(timeout=max(1.0, cap - (time.time() - t0))))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                rcs.append(None)
        pair = [_rows(base / k) for k in ("a", "b")]
        res = {"backend": backend, "single": single, "packed": pair, "workers_per_run": s["half"]}
        one = single[0].get(f"{backend}_e2e") if single else None
        two = [r[0].get(f"{backend}_e2e") for r in pair if r]
        if one and len(two) == 2 and all(two):
            # the pair's throughput over the span from the first start to the last end of their timed windows
            start = min(d["t_end"] - d["seconds"] for d in two)
            agg = sum(d["images"] for d in two) / (max(d["t_end"] for d in two) - start)
            res.update(single_img_per_s=round(one["img_per_s"]), packed_img_per_s=round(agg),
                       packed_over_single=round(agg / one["img_per_s"], 2))
        bad = rc if rc else next((r for r in rcs if r != 0), 0)
        return bad, text, {"p5": res}

    def _effect(self, name, cap):
        """The backdoor study (FASTBD_GPU_CHECK_EFFECT, a sweep YAML; default configs/sweeps/effect_gpu.yaml)
        under what is left of the cap. Its sweep folder lives in WORK, so a second call while the machine is
        warm resumes it; what finished, and every run's in-training kNN checks (finished or not), go to
        OUT/effect as rows.json, curves.json, timing.json, summary.md and the FP-against-epochs plot."""
        sweep_cfg = os.environ.get("FASTBD_GPU_CHECK_EFFECT", "configs/sweeps/effect_gpu.yaml")
        sweep_dir, dest = self.work / Path(sweep_cfg).stem, self.out / "effect"
        args = ["sweep", "--config", sweep_cfg, f"out={sweep_dir}", *(effect_cpu(sweep_cfg) if CPU else [])]
        rc, text = self.proc(name, [sys.executable, "-c", "from fastbd.cli import app; app()", *args],
                             max(1.0, cap - 30))  # 30 s kept for the report below
        dest.mkdir(parents=True, exist_ok=True)
        code = "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; gpu_check.effect_report(*sys.argv[1:])"
        rc2, text2 = self.proc(f"{name}_report", [sys.executable, "-c", code, str(sweep_dir), str(dest)], 25)
        # a `run` call brings back at most 8 files: gpu_check's 3, these 4 and the FP-against-epochs plot
        for f in (sweep_dir / "summary.md", sweep_dir / "plots" / "backdoor_epochs.png"):
            if f.exists():
                shutil.copy(f, dest / f.name)
        rows = json.loads((dest / "rows.json").read_text()) if (dest / "rows.json").exists() else []
        extra = {"effect": {"rows_done": sum(r["state"] == "done" for r in rows), "rows": len(rows), "folder": "effect/"}}
        if (dest / "summary.md").exists():  # into the call's output tail too, in case the files do not come back
            print((dest / "summary.md").read_text()[:5000], flush=True)
        if rc2:
            extra["error"] = f"report: {text2.strip().splitlines()[-1][-300:] if text2.strip() else rc2}"
        return rc, text + text2, extra

    # ----- output ------------------------------------------------------------------------------------------

    def write(self) -> None:
        self.report["elapsed_s"] = round(time.time() - self.t0, 1)
        (self.out / "gpu_check.json.tmp").write_text(json.dumps(self.report, indent=1) + "\n")
        os.replace(self.out / "gpu_check.json.tmp", self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(self.report))
        (self.out / "gpu_check.log").write_text("".join(self.log_tail))


def _rows(out: Path) -> list[dict]:
    try:
        return json.loads((out / "train_throughput.json").read_text())["rows"]
    except (OSError, json.JSONDecodeError, KeyError):
        return []


def effect_report(sweep_dir: str, dest: str) -> None:
    """The effect step's results, from whatever the sweep finished: rows.json and curves.json (the sweep's
    rows and in-training kNN checks) and timing.json (each run's epochs done, training seconds and img/s)."""
    from fastbd.runs import read_metrics
    from fastbd.sweep.results import collect_curves, collect_rows, report_sweep
    from fastbd.sweep.stages import load_plan

    report_sweep(sweep_dir, log=lambda s: None)
    timing = []
    for run in load_plan(sweep_dir)["runs"]:
        epochs = [m for m in read_metrics(run["train"]["out"]) if m.get("kind") == "epoch"]
        timing.append({"run_id": run["id"], **run["params"], "epochs_done": len(epochs),
                       "train_s": round(sum(e["seconds"] for e in epochs), 1),
                       "img_per_s": round(sum(e["img_per_s"] for e in epochs) / len(epochs)) if epochs else None})
    for name, obj in (("rows", collect_rows(sweep_dir)), ("curves", collect_curves(sweep_dir)), ("timing", timing)):
        Path(dest, f"{name}.json").write_text(json.dumps(obj, indent=1) + "\n")


def targets(report: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for P1, P2, P3, P5 from the rows; 'not measured' where a row is missing."""
    rows = [r for s in report["steps"] for r in s.get("rows", []) if r["method"] == "moco" and r["res"] == 224]
    best = max((r for r in rows if "dali_e2e" in r), key=lambda r: r["dali_e2e"]["img_per_s"], default=None)
    torch_e2e = next((r["torch_e2e"]["img_per_s"] for r in rows if "torch_e2e" in r), None)
    out = []
    p1 = [(r["compile"], r["aug_impl"], r["dali_e2e"]["img_per_s"] / r["ceiling"]["img_per_s"])
          for r in rows if "dali_e2e" in r and "ceiling" in r]
    out.append(("P1 DALI e2e >= 0.95x ceiling (MoCo v2 R18 224 px)",
                ", ".join(f"{x:.2f}x (compile {c}, {a})" for c, a, x in p1) or "not measured",
                ("reached" if max(x for *_, x in p1) >= 0.95 else "not reached") if p1 else "not measured"))
    if best and torch_e2e:
        x = best["dali_e2e"]["img_per_s"] / torch_e2e
        out.append(("P2 DALI e2e >= 8x the torch backend", f"{x:.1f}x ({best['dali_e2e']['img_per_s']:.0f} vs "
                    f"{torch_e2e:.0f} img/s)", "reached" if x >= 8 else "not reached"))
    else:
        out.append(("P2 DALI e2e >= 8x the torch backend", "not measured", "not measured"))
    if best:
        v = best["dali_e2e"]["img_per_s"]
        out.append(("P3 MoCo v2 R18 224 px >= 10.5k img/s end to end", f"{v:.0f} img/s (compile {best['compile']}, "
                    f"{best['aug_impl']})", "reached" if v >= 10500 else "not reached"))
    else:
        out.append(("P3 MoCo v2 R18 224 px >= 10.5k img/s end to end", "not measured", "not measured"))
    p5 = next((s["p5"] for s in report["steps"] if s.get("p5", {}).get("packed_over_single")), None)
    out.append(("P5 two runs packed >= 2x one run (112 px)",
                f"{p5['packed_over_single']}x ({p5['packed_img_per_s']} vs {p5['single_img_per_s']} img/s, "
                f"{p5.get('backend', 'dali')})" if p5
                else "not measured", ("reached" if p5["packed_over_single"] >= 2 else "not reached") if p5
                else "not measured"))
    if report["cpu_rehearsal"]:
        out = [(t, m, "rehearsal on the CPU: not a GPU figure") for t, m, _ in out]
    return out


def markdown(report: dict) -> str:
    hw = report["hardware"]
    lines = [f"# fastbd GPU check, {report['started']}", "",
             f"Hardware: {hw.get('device', '?')} ({hw.get('gpu_memory_gib', '-')} GiB), {hw.get('cores', '?')} cores, "
             f"torch {hw.get('torch', '?')}, CUDA {hw.get('cuda', '-')}, Python {hw.get('python', '?')}"
             + (" -- CPU REHEARSAL, tiny sizes: no figure here is a GPU figure" if report["cpu_rehearsal"] else ""),
             f"Elapsed {report.get('elapsed_s', 0)} s of a {report['budget_s']:.0f} s budget; sizes {report['sizes']}", "",
             "| step | status | seconds | expected | note |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        note = s.get("error") or s.get("detail") or ""
        lines.append(f"| {s['step']} | {s['status']} | {s.get('seconds', '-')} | {s['expected_s']} | "
                     f"{' '.join(str(note).split()).replace('|', '/')[:160]} |")
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(report)]
    rows = [r for s in report["steps"] for r in s.get("rows", [])]
    if rows:
        lines += ["", "## Throughput", "", table(rows, BACKENDS)]
    p5 = next((s["p5"] for s in report["steps"] if "p5" in s), None)
    if p5:
        lines += ["", "## P5 packing", "", f"```\n{json.dumps(p5, indent=1)[:3000]}\n```"]
    eff = next((s for s in report["steps"] if "effect" in s), None)
    if eff:
        lines += ["", "## The backdoor study (effect step)", "",
                  f"{eff['effect']['rows_done']} of {eff['effect']['rows']} evaluations done; the sweep's "
                  "summary.md, rows.json, curves.json, timing.json and backdoor_epochs.png are in effect/."]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out)
    check.work.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in os.environ.get("FASTBD_GPU_CHECK_STEPS", ",".join(DEFAULT_STEPS)).split(",") if s]
    skip = set(filter(None, os.environ.get("FASTBD_GPU_CHECK_SKIP", "").split(",")))
    unknown = [s for s in [*chosen, *skip] if s not in STEPS]
    if unknown:
        print(f"FASTBD_GPU_CHECK_STEPS/SKIP: unknown step(s) {unknown}; known: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    print(f"[gpu_check] {platform.node()}: steps {[s for s in chosen if s not in skip]}, budget {check.budget:.0f} s, "
          f"work {check.work}, out {out}", flush=True)
    for name in chosen:
        if name not in skip:
            check.step(name)
    check.write()
    print((out / "gpu_check.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
