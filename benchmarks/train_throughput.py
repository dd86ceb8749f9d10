"""Training throughput: the GPU-resident ceiling vs end-to-end img/s with each loader backend.

    .venv/bin/python benchmarks/train_throughput.py                         # CPU defaults: small and short
    python benchmarks/train_throughput.py --res 224 112 --batch 256 --steps 50 --images 16000 --compile off on

For each method (MoCo v2, BYOL; ResNet-18, configs/ssl/<method>_resnet18.yaml), resolution and compile
setting it measures, in one process:
  ceiling   the trainer's own step on synthetic views already on the device (no data loading);
  loader    each backend alone (ffcv, dali, torch): batches/s, with the device augmentation for ffcv/dali;
  e2e       each backend feeding the trainer's step: img/s, ratio to the ceiling and to `torch`.
Every measurement reports img/s and CPU core-ms per image (the process's and its workers' CPU time over
the images), and its warm-up seconds (where torch.compile's compilation shows). `--compile on` sets
compile=true and data.compile_aug=true (the method and the device augmentation compiled); the `torch`
backend's PIL augmentation has nothing to compile. `--aug-impl` passes data.aug_impl through (exact:
torchvision's jitter, HSV hue; linear: one colour matrix per image; auto: exact on GPUs, linear on CPUs).
The data is an ImageNet-like synthetic build (about 500x375 JPEGs, stored at --max-resolution) in
--data-dir, reused when it is there. Without FFCV installed the build still runs (its .beton files are
then left empty and the ffcv backend is reported as n/a), so the dali and torch rows never depend on it.
Writes OUT/train_throughput.{json,md}, the JSON after every measurement (a killed run keeps what it
measured). `--barrier DIR N` makes N concurrent processes start timing together (benchmarks/gpu_check.py
packs two runs on one GPU with it). Reference (H100, from the project brief, not measured here): ResNet-18
train step 12.0k img/s at 224 px (bf16, channels_last), DALI two-view full aug 11.5k img/s, the reference
MoCo v2 pipeline 1.0k img/s. Figures measured by this script: README, "Benchmarks".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastbd  # noqa: E402,F401 - first: it sets OMP_WAIT_POLICY=PASSIVE, which only works before torch loads
import torch  # noqa: E402
from beton_builders import build, load_spec  # noqa: E402
from beton_builders.files import write_json  # noqa: E402
from beton_builders.host import cores  # noqa: E402
from fastbd.config import load_config  # noqa: E402
from fastbd.train import Trainer, TrainConfig  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput_table import table  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and all its children, live ones included (DataLoader workers and
    DALI threads are still running when we read it; RUSAGE_CHILDREN alone counts only reaped ones)."""
    import psutil

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for ch in psutil.Process().children(recursive=True):
        try:
            t = ch.cpu_times()
            live += t.user + t.system
        except psutil.Error:
            pass
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + live


def make_data(folder: Path, images: int, max_res: int, log=print) -> Path:
    """The synthetic build, made once per (images, max_res) under `folder`."""
    folder = folder / f"data_{images}_{max_res}"
    has_ffcv = importlib.util.find_spec("ffcv") is not None
    if (folder / "manifest.json").is_file() and (has_ffcv <= (folder / "with_ffcv").is_file()):
        return folder  # reused, unless it was built without FFCV and FFCV is here now
    per_class = max(1, images // 10)
    spec = load_spec(None, ["source.synthetic.width=500", "source.synthetic.height=375",
                            "source.synthetic.size_jitter=0.15", "source.synthetic.num_classes=10",
                            f"source.synthetic.train_per_class={per_class}", "source.synthetic.val_per_class=1",
                            f"storage.max_resolution={max_res}"])
    t = time.perf_counter()
    if not has_ffcv:
        _build_without_ffcv(spec, folder)
        log(f"no FFCV here: {folder} has empty .beton files; the ffcv backend is n/a")
    else:
        build(spec, folder, force=True, log=lambda s: None)
        (folder / "with_ffcv").touch()
    log(f"built {folder} ({images} images, {max_res} px) in {time.perf_counter() - t:.1f} s")
    return folder


def _build_without_ffcv(spec, folder: Path) -> None:
    """The build with its .beton writer replaced by an empty file, for a machine without FFCV: the dali
    and torch backends read only the tar shards and the manifest. A benchmark-only stand-in."""
    import importlib
    import types

    # import_module, not `import beton_builders.build as b`: the package re-exports the function build(),
    # which shadows the submodule of that name (the first H100 run failed here, 2026-11-26)
    b = importlib.import_module("beton_builders.build")

    stub = types.ModuleType("ffcv.writer")  # the build imports it in the background; nothing uses it then
    sys.modules.setdefault("ffcv", types.ModuleType("ffcv"))
    sys.modules.setdefault("ffcv.writer", stub)
    real = b.write_beton
    b.write_beton = lambda path, *a, **k: Path(path).write_bytes(b"")
    try:
        build(spec, folder, force=True, log=lambda s: None)
    finally:
        b.write_beton = real
        for name in ("ffcv.writer", "ffcv"):
            if sys.modules.get(name) is not None and not hasattr(sys.modules[name], "__file__"):
                del sys.modules[name]


def trainer(data: Path, out: Path, method: str, backend: str, res: int, batch: int, workers: int,
            compiled: bool, aug_impl: str, compile_mode: str) -> Trainer:
    over = [f"data.path={data}", f"out={out}", f"data.backend={backend}", f"data.res={res}",
            f"data.batch_size={batch}", f"data.workers={workers}", "epochs=1000", "data.verify_files=false",
            "log_every=1000000", f"data.aug_impl={aug_impl}"]
    if compiled:
        over += ["compile=true", f"compile_mode={compile_mode}", "data.compile_aug=true"]
    shutil.rmtree(out, ignore_errors=True)  # a benchmark run folder is scratch
    cfg = ROOT / "configs" / "ssl" / f"{method}_resnet18.yaml"  # the paper's settings: optimiser, heads
    return Trainer(load_config(TrainConfig, cfg if cfg.is_file() else None, [f"method.name={method}", *over]),
                   log=lambda s: None)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def barrier(folder: str | None, n: int, timeout: float = 300.0) -> None:
    """Wait until `n` processes have reached this point (files in `folder`), so packed runs time together."""
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"ready.{os.getpid()}").touch()
    end = time.time() + timeout
    while len(list(Path(folder).glob("ready.*"))) < n:
        if time.time() > end:
            raise TimeoutError(f"barrier {folder}: fewer than {n} processes arrived in {timeout:.0f} s")
        time.sleep(0.05)


def time_steps(fn, steps: int, warmup: int, dev: torch.device, gate=None) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(dev)
    warm = time.perf_counter() - t0
    if gate:
        gate()
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        fn()
    sync(dev)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "warmup_s": warm}


def bench_one(t: Trainer, steps: int, warmup: int, mode: str, gate=None) -> dict:
    dev, batch = t.device, t.cfg.data.batch_size
    if mode == "ceiling":
        n_views = len(t._views())
        views = [torch.randn(batch, 3, t.cfg.data.res, t.cfg.data.res, device=dev)
                 .contiguous(memory_format=torch.channels_last) for _ in range(n_views)]
        r = time_steps(lambda: t._train_step(views), steps, warmup, dev, gate)
    else:
        it = _forever(t.loader)
        step = (lambda: next(it)) if mode == "loader" else (lambda: t._train_step(next(it).views))
        r = time_steps(step, steps, warmup, dev, gate)
    n = steps * batch
    return {"img_per_s": n / r["wall_s"], "core_ms_per_img": 1e3 * r["cpu_s"] / n, "images": n,
            "seconds": round(r["wall_s"], 3), "warmup_s": round(r["warmup_s"], 2), "t_end": time.time()}


def _forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def hardware() -> dict:
    gpu = torch.cuda.is_available()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    hw = {"device": torch.cuda.get_device_name(0) if gpu else f"CPU ({cpu})", "cpu": cpu, "cores": cores(),
          "torch": torch.__version__, "python": platform.python_version()}
    if gpu:
        p = torch.cuda.get_device_properties(0)
        hw.update(gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                  multiprocessors=p.multi_processor_count)
    return hw


def parser() -> argparse.ArgumentParser:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="bench_out", help="folder for scratch runs and the results")
    ap.add_argument("--data-dir", default=None, help="folder holding (or to hold) the synthetic build; default --out")
    ap.add_argument("--methods", nargs="+", default=["moco", "byol"], help="SSL methods (method.name) to time")
    ap.add_argument("--backends", nargs="+", default=["ffcv", "dali", "torch"],
                    help="loader backends (data.backend); one that is not installed is reported as n/a")
    ap.add_argument("--measure", nargs="+", default=["ceiling", "loader", "e2e"], choices=["ceiling", "loader", "e2e"],
                    help="what to time per row")
    ap.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                    help="rows eager (off) and/or with compile=true + data.compile_aug=true (on)")
    ap.add_argument("--compile-mode", default="default", help="train.compile_mode for --compile on")
    ap.add_argument("--aug-impl", default="auto", choices=["auto", "exact", "linear"],
                    help="data.aug_impl: the ffcv/dali colour jitter")
    ap.add_argument("--res", type=int, nargs="+", default=[224, 112] if gpu else [64],
                    help="px, side of the training views; one row per method and value")
    ap.add_argument("--batch", type=int, default=256 if gpu else 32, help="images per step")
    ap.add_argument("--steps", type=int, default=50 if gpu else 4, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=10 if gpu else 1, help="untimed steps before each measurement")
    ap.add_argument("--images", type=int, default=16000 if gpu else 600,
                    help="training images in the synthetic build (about 500x375 px sources)")
    ap.add_argument("--max-resolution", type=int, default=256, help="px, longest stored side of the build")
    ap.add_argument("--workers", type=int, default=cores(), help="decoding threads/processes (data.workers)")
    ap.add_argument("--only-data", action="store_true", help="make the synthetic build and stop")
    ap.add_argument("--barrier", nargs=2, metavar=("DIR", "N"), default=None,
                    help="wait for N processes in DIR after the warm-up, before timing (packed runs)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(Path(args.data_dir or out), args.images, args.max_resolution)
    if args.only_data:
        return
    gate = (lambda: barrier(args.barrier[0], int(args.barrier[1]))) if args.barrier else None
    hw, rows = hardware(), []

    def save() -> None:
        write_json(out / "train_throughput.json", {"hardware": hw, "args": vars(args), "rows": rows})

    for method in args.methods:
        for res in args.res:
            for comp in args.compile:
                row = {"method": method, "res": res, "batch": args.batch, "compile": comp, "aug_impl": args.aug_impl}
                rows.append(row)
                for backend in ["ceiling", *args.backends]:
                    modes = ["ceiling"] if backend == "ceiling" else [m for m in ("loader", "e2e") if m in args.measure]
                    if backend == "ceiling" and "ceiling" not in args.measure or not modes:
                        continue
                    try:
                        t = trainer(data, out / "runs" / f"{method}_{res}_{comp}" / backend, method,
                                    "torch" if backend == "ceiling" else backend, res, args.batch, args.workers,
                                    comp == "on", args.aug_impl, args.compile_mode)
                        for mode in modes:
                            row[backend if mode == "ceiling" else f"{backend}_{mode}"] = bench_one(
                                t, args.steps, args.warmup, mode, gate)
                        del t
                    except Exception as e:  # noqa: BLE001 - a benchmark records a failed backend and goes on
                        row[f"{backend}_error"] = f"{type(e).__name__}: {e}"[:300]
                    print(json.dumps(row), flush=True)
                    save()
    md = table(rows, args.backends)
    (out / "train_throughput.md").write_text(f"Hardware: {json.dumps(hw)}\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()
