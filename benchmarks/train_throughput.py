"""Training throughput: the GPU-resident ceiling vs end-to-end img/s with each loader backend.

    .venv/bin/python benchmarks/train_throughput.py                         # CPU defaults: small and short
    python benchmarks/train_throughput.py --res 224 112 --batch 256 --steps 50 --images 20000   # a GPU

For each method (MoCo v2, BYOL; ResNet-18) and resolution it measures, in one process:
  ceiling   the trainer's own step on synthetic views already on the device (no data loading);
  loader    each backend alone (ffcv, dali, torch): batches/s and CPU core-ms per sample;
  e2e       each backend feeding the trainer's step: img/s, ratio to the ceiling and to `torch`.
The data is an ImageNet-like synthetic build (about 500x375 JPEGs, stored at --max-resolution).
Writes bench_out/train_throughput.{json,md}. Reference (H100, from the project brief, not measured here):
ResNet-18 train step 12.0k img/s at 224 px (bf16, channels_last), DALI two-view full aug 11.5k img/s,
the reference MoCo v2 pipeline 1.0k img/s. Figures measured by this script: README, "Benchmarks".
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beton_builders import build, load_spec  # noqa: E402
from beton_builders.host import cores  # noqa: E402
from fastbd.config import load_config  # noqa: E402
from fastbd.train import Trainer, TrainConfig  # noqa: E402


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


def make_data(out: Path, images: int, max_res: int) -> Path:
    folder = out / f"data_{images}_{max_res}"
    if (folder / "manifest.json").is_file():
        return folder
    per_class = max(1, images // 10)
    spec = load_spec(None, ["source.synthetic.width=500", "source.synthetic.height=375",
                            "source.synthetic.size_jitter=0.15", "source.synthetic.num_classes=10",
                            f"source.synthetic.train_per_class={per_class}", "source.synthetic.val_per_class=1",
                            f"storage.max_resolution={max_res}"])
    build(spec, folder, force=True, log=lambda s: None)
    return folder


def trainer(data: Path, out: Path, method: str, backend: str, res: int, batch: int, workers: int) -> Trainer:
    over = [f"data.path={data}", f"out={out}", f"data.backend={backend}", f"data.res={res}",
            f"data.batch_size={batch}", f"data.workers={workers}", f"method.name={method}", "epochs=1000",
            "data.verify_files=false", "log_every=1000000"]
    if method == "moco":
        over += ["method.moco.hidden=512"]
    shutil.rmtree(out, ignore_errors=True)  # a benchmark run folder is scratch
    return Trainer(load_config(TrainConfig, None, over), log=lambda s: None)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(fn, steps: int, warmup: int, dev: torch.device) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    sync(dev)
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        fn()
    sync(dev)
    return time.perf_counter() - t0, cpu_seconds() - c0


def bench_one(t: Trainer, steps: int, warmup: int, mode: str) -> dict:
    dev, batch = t.device, t.cfg.data.batch_size
    if mode == "ceiling":
        n_views = len(t._views())
        views = [torch.randn(batch, 3, t.cfg.data.res, t.cfg.data.res, device=dev)
                 .contiguous(memory_format=torch.channels_last) for _ in range(n_views)]
        wall, cpu = time_steps(lambda: t._train_step(views), steps, warmup, dev)
    else:
        it = _forever(t.loader)
        step = (lambda: next(it)) if mode == "loader" else (lambda: t._train_step(next(it).views))
        wall, cpu = time_steps(step, steps, warmup, dev)
    n = steps * batch
    return {"img_per_s": n / wall, "core_ms_per_img": 1e3 * cpu / n}


def _forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def parser() -> argparse.ArgumentParser:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="bench_out", help="folder for the synthetic build, scratch runs and results")
    ap.add_argument("--methods", nargs="+", default=["moco", "byol"], help="SSL methods (method.name) to time")
    ap.add_argument("--backends", nargs="+", default=["ffcv", "dali", "torch"],
                    help="loader backends (data.backend); one that is not installed is reported as n/a")
    ap.add_argument("--res", type=int, nargs="+", default=[224, 112] if gpu else [64],
                    help="px, side of the training views; one row per method and value")
    ap.add_argument("--batch", type=int, default=256 if gpu else 32, help="images per step")
    ap.add_argument("--steps", type=int, default=50 if gpu else 4, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=10 if gpu else 1, help="untimed steps before each measurement")
    ap.add_argument("--images", type=int, default=20000 if gpu else 600,
                    help="training images in the synthetic build (about 500x375 px sources)")
    ap.add_argument("--max-resolution", type=int, default=256, help="px, longest stored side of the build")
    ap.add_argument("--workers", type=int, default=cores(), help="decoding threads/processes (data.workers)")
    return ap


def main() -> None:
    gpu = torch.cuda.is_available()
    args = parser().parse_args()
    out = Path(args.out)
    data = make_data(out, args.images, args.max_resolution)
    rows = []
    for method in args.methods:
        for res in args.res:
            run = out / "runs" / f"{method}_{res}"
            row = {"method": method, "res": res, "batch": args.batch}
            for backend in ["ceiling", *args.backends]:
                try:
                    t = trainer(data, run / backend, method, "torch" if backend == "ceiling" else backend,
                                res, args.batch, args.workers)
                    if backend == "ceiling":
                        row["ceiling"] = bench_one(t, args.steps, args.warmup, "ceiling")
                    else:
                        row[f"{backend}_loader"] = bench_one(t, args.steps, args.warmup, "loader")
                        row[f"{backend}_e2e"] = bench_one(t, args.steps, args.warmup, "e2e")
                except ImportError as e:
                    row[f"{backend}_e2e"] = {"error": str(e)}
                print(json.dumps(row), flush=True)
            rows.append(row)
    hw = {"device": torch.cuda.get_device_name(0) if gpu else f"CPU ({platform.processor() or platform.machine()})",
          "cores": cores(), "torch": torch.__version__}
    (out / "train_throughput.json").write_text(json.dumps({"hardware": hw, "args": vars(args), "rows": rows},
                                                          indent=1) + "\n")
    md = _table(rows, args.backends)
    (out / "train_throughput.md").write_text(f"Hardware: {hw}\n\n{md}\n")
    print(md)


def _table(rows: list[dict], backends: list[str]) -> str:
    lines = ["| method | res | ceiling img/s | backend | loader img/s | loader core-ms/img | e2e img/s | "
             "e2e / ceiling | e2e / torch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ceil = r["ceiling"]["img_per_s"]
        base = r.get("torch_e2e", {}).get("img_per_s")
        for b in backends:
            e, ld = r.get(f"{b}_e2e", {}), r.get(f"{b}_loader", {})
            if "img_per_s" not in e:
                lines.append(f"| {r['method']} | {r['res']} | {ceil:.0f} | {b} | - | - | n/a ({e.get('error', '')[:40]}) | - | - |")
                continue
            vs_torch = f"{e['img_per_s'] / base:.2f}x" if base else "-"
            lines.append(f"| {r['method']} | {r['res']} | {ceil:.0f} | {b} | {ld['img_per_s']:.0f} | "
                         f"{ld['core_ms_per_img']:.1f} | {e['img_per_s']:.0f} | {e['img_per_s'] / ceil:.2f} | {vs_torch} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
