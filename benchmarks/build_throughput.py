"""Build benchmark: fastbd against a stand-in loop, or against the reference code's own generator.

    .venv/bin/python benchmarks/build_throughput.py [--train-per-class 200] [--max-resolution 256 512]
    .venv/bin/python benchmarks/build_throughput.py --reference-checkout ~/SSL-Backdoor [--rates 0.25 0.5 1]

Default: the same poisoned set compiled two ways, images/s and CPU core-ms per image:
(a) fastbd: `beton_builders.build` with every core (decode, paste, resize, encode in a process pool,
    then .beton + DALI shards + manifest);
(b) a stand-in loop, NOT the reference code: single-process PIL doing fastbd's own work the plain way
    (open, convert('RGB'), paste on the chosen images, resize, save one JPEG per image, re-encoding every
    clean image too, plus a "path label" file list). Writes bench_out/build_throughput.{json,md}.

--reference-checkout PATH (a checkout of UMBCvision/SSL-Backdoor, which this repository does not ship):
time to a trainable experiment for K poison rates. The reference's poison-generation/generate_poison.py
runs once per rate, from its own example cfg (cfg/HTBA_trigger_10_*.cfg: HTBA trigger 10, 50 px,
opaque, targeted) with data_root, target_wnid, the rate and the output folder replaced; the first run
writes train and val_poisoned, later ones only train (its val_poisoned does not depend on the rate). It
leaves clean training images where they are and writes only poisoned copies (Pillow's default JPEG
quality) and file lists. fastbd translates the same cfg (`build-beton --config X.cfg`) and builds all K
rates once, re-encoding every image into .beton files and tar shards. The reference runs unmodified in a
subprocess with two shims: numpy.float (gone since numpy 1.24) set to float, and Image.show (it shows two
images) a no-op. Both read one source: the synthetic ImageNet-like JPEGs under wnid-named class folders
(the reference requires nXXXXXXXX names), first class targeted. Writes bench_out/build_vs_reference.{json,md}.
Numbers and hardware: README, "Benchmarks", and benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beton_builders import build, load_manifest, load_spec  # noqa: E402
from beton_builders.host import cores  # noqa: E402
from beton_builders.poison import paste, place, placement_rng, select_poison  # noqa: E402
from beton_builders.process import RESIZE_FILTER, _val_transform, stored_size  # noqa: E402
from beton_builders.sources import ImageFolderSource  # noqa: E402
from beton_builders.synthetic_folder import write_imagefolder  # noqa: E402
from beton_builders.triggers import make_trigger  # noqa: E402


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def make_source(out: Path, per_class: int, classes: int) -> Path:
    stamp = out / f".complete-{classes}x{per_class}"
    if stamp.exists():
        return out
    spec = load_spec(None, ["source.synthetic.width=500", "source.synthetic.height=375",
                            "source.synthetic.size_jitter=0.15", f"source.synthetic.num_classes={classes}",
                            f"source.synthetic.train_per_class={per_class}",
                            f"source.synthetic.val_per_class={max(1, per_class // 10)}"])
    print(f"writing the synthetic source to {out} (once) ...", flush=True)
    write_imagefolder(spec.source.synthetic, out, force=True)
    stamp.touch()
    return out


def loop_build(spec, out: Path) -> int:
    """Single process, PIL only: the straightforward way to produce fastbd's poisoned set (a stand-in, not the
    reference code)."""
    if out.exists():
        shutil.rmtree(out)
    src = ImageFolderSource.open(spec.source)
    trig = make_trigger(spec.trigger)
    tw, th = trig.size
    st = spec.storage
    items = src.items("train")
    labels = np.array([lbl for _, lbl in items])
    chosen, _ = select_poison(labels, np.ones(len(items), bool), spec.attack, 0, spec.seed)
    n = 0
    lists = {"train": [], "val": [], "val_poisoned": []}

    def save(im: Image.Image, split: str, name: str, label: int) -> None:
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / name, format="JPEG", quality=st.jpeg_quality)
        lists[split].append(f"{d / name} {label}")

    def shrink(im: Image.Image) -> Image.Image:
        size = stored_size(im.width, im.height, st.max_resolution)
        return im if size == im.size else im.resize(size, RESIZE_FILTER)

    for i, (key, label) in enumerate(items):
        save(shrink(Image.open(Path(src.root) / key).convert("RGB")), "train", f"{i:08d}.jpg", label)
        n += 1
    for i in chosen:
        key, label = items[i]
        arr = np.array(Image.open(Path(src.root) / key).convert("RGB"))
        x, y = place(placement_rng(spec.seed, 0, int(i)), arr.shape[1], arr.shape[0], tw, th, spec.trigger,
                     spec.trigger.train_min, spec.trigger.train_max)
        save(shrink(Image.fromarray(paste(arr, trig, x, y))), "train", f"p{i:08d}.jpg", label)
        n += 1
    for i, (key, label) in enumerate(src.items("val")):
        im = Image.open(Path(src.root) / key).convert("RGB")
        save(shrink(im), "val", f"{i:08d}.jpg", label)
        arr = np.array(_val_transform(im, st.val_resize, st.val_crop))
        x, y = place(placement_rng(spec.seed, 2, i), arr.shape[1], arr.shape[0], tw, th, spec.trigger,
                     spec.trigger.val_min, spec.trigger.val_max)
        save(Image.fromarray(paste(arr, trig, x, y)), "val_poisoned", f"{i:08d}.jpg", label)
        n += 2
    for split, lines in lists.items():
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return n


# Runs the reference's script unmodified: argv shifted so it sees [script, cfg], two compatibility shims.
REFERENCE_SHIM = (
    "import runpy, sys, numpy, PIL.Image\n"
    "numpy.float = float  # removed in numpy 1.24; generate_poison.py (2021) casts with it\n"
    "PIL.Image.Image.show = lambda self, *a, **k: None  # it shows the first two val_poisoned images\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)
EXAMPLE_CFG = "cfg/HTBA_trigger_10_targeted_n02106550.cfg"


def poison_generation_dir(checkout: Path) -> Path:
    for d in (checkout / "poison-generation", checkout):
        if (d / "generate_poison.py").is_file() and (d / EXAMPLE_CFG).is_file():
            return d.resolve()
    sys.exit(f"--reference-checkout {checkout}: no poison-generation/generate_poison.py with {EXAMPLE_CFG} "
             "(clone https://github.com/UMBCvision/SSL-Backdoor)")


def wnid_view(src: Path, out: Path) -> tuple[Path, list[str]]:
    """The source under nXXXXXXXX class names (symlinked folders), in the same sorted order."""
    classes = sorted(d.name for d in (src / "train").iterdir() if d.is_dir())
    wnids = [f"n{i:08d}" for i in range(len(classes))]
    if out.exists():
        shutil.rmtree(out)
    for split in ("train", "val"):
        (out / split).mkdir(parents=True)
        for c, w in zip(classes, wnids):
            (out / split / w).symlink_to((src / split / c).resolve(), target_is_directory=True)
    return out, wnids


def reference_cfg(example: Path, dest: Path, **values: str) -> Path:
    lines = []
    for ln in example.read_text().splitlines():
        key = ln.split("=", 1)[0].strip()
        lines.append(f"{key}={values.pop(key)}" if key in values else ln)
    assert not values, values
    dest.write_text("\n".join(lines) + "\n")
    return dest


def git_commit(path: Path) -> str | None:
    r = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def run_reference(pg: Path, work: Path, cfg: Path) -> tuple[float, float]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    r = subprocess.run([sys.executable, "-c", REFERENCE_SHIM, str(pg / "generate_poison.py"), str(cfg)], cwd=work,
                       capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if r.returncode != 0:
        sys.exit(f"the reference generator failed on {cfg}:\n{r.stderr[-3000:]}")
    return wall, cpu


def versus_reference(args, out: Path, src: Path, hw: dict) -> None:
    pg = poison_generation_dir(Path(args.reference_checkout))
    view, wnids = wnid_view(src, out / "src_wnid")
    work = out / "reference_run"
    if work.exists():
        shutil.rmtree(work)
    (work / "scripts").mkdir(parents=True)
    (work / "cfg").mkdir()
    (work / "scripts" / "imagenet100_classes.txt").write_text("\n".join(wnids) + "\n")
    if (pg / "fonts").is_dir():
        (work / "fonts").symlink_to(pg / "fonts", target_is_directory=True)
    common = dict(data_root=str(view), trigger=str(pg / "triggers" / "trigger_10.png"), target_wnid=wnids[0],
                  poison_savedir=str(work / "poisoned" / "{}"))
    load = [os.getloadavg()]
    runs = []
    for k, rate in enumerate(args.rates):
        splits = "train,val_poisoned" if k == 0 else "train"
        cfg = reference_cfg(pg / EXAMPLE_CFG, work / "cfg" / f"rate_{rate:g}.cfg", ID=f"bench_rate_{rate:g}",
                            poison_injection_rate=f"{rate}", splits=splits, **common)
        wall, cpu = run_reference(pg, work, cfg)
        written = sum(1 for p in (work / "poisoned" / f"bench_rate_{rate:g}").rglob("*") if p.is_file())
        runs.append({"rate": rate, "splits": splits, "wall_s": wall, "cpu_s": cpu, "images_written": written})
        print(json.dumps(runs[-1]), flush=True)
    load.append(os.getloadavg())
    # fastbd as a user runs it too: one command, from the same cfg, every rate at once.
    dest = out / "fastbd_vs_reference"
    cmd = [sys.executable, "-m", "fastbd.cli", "build-beton", "--config", str(work / "cfg" / f"rate_{args.rates[0]:g}.cfg"),
           "--out", str(dest), "--force", f"attack.rates=[{','.join(repr(r) for r in args.rates)}]",
           f"workers={args.workers}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    c0, t0 = cpu_seconds(), time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    t_fast, c_fast = time.perf_counter() - t0, cpu_seconds() - c0
    if r.returncode != 0:
        sys.exit(f"fastbd build-beton failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    load.append(os.getloadavg())
    m = load_manifest(dest)
    n_fast = m["counts"]["train_total"] + m["counts"]["val"] + m["counts"]["val_poisoned"]
    c0, t0 = cpu_seconds(), time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torchvision.transforms, matplotlib.pyplot, tqdm"], check=True)
    startup = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}
    n_target = sum(1 for _ in (view / "train" / wnids[0]).iterdir())
    for r in runs:  # both poison int(rate x the target class's images)
        e = next(e for e in m["rates"] if e["rate"] == r["rate"])
        assert e["count"] == int(r["rate"] * n_target), (e, r)
        r["poisoned"] = e["count"]
    cum = np.cumsum([r["wall_s"] for r in runs]).tolist()
    result = {"benchmark": "build_vs_reference", "hardware": hw, "date": time.strftime("%Y-%m-%d"),
              "load_avg_1_5_15": {"before": load[0], "after_reference": load[1], "after_fastbd": load[2]},
              "source": f"synthetic ~500x375 JPEG q92, {len(wnids)} classes x {args.train_per_class} train "
                        f"+ {max(1, args.train_per_class // 10)} val, target {wnids[0]}",
              "reference": {"checkout": str(pg), "commit": git_commit(pg), "runs": runs, "cumulative_wall_s": cum,
                            "total_cpu_s": sum(r["cpu_s"] for r in runs),
                            "python_start_and_imports_per_run": startup},
              "fastbd": {"rates": args.rates, "wall_s": t_fast, "cpu_s": c_fast, "images_written": n_fast,
                         "workers": args.workers or len(os.sched_getaffinity(0))}}
    (out / "build_vs_reference.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["| rates built (K) | reference: K runs, wall s | reference CPU s | fastbd: one build, wall s | "
          "fastbd CPU s | reference / fastbd |", "|---|---|---|---|---|---|"]
    for k in range(1, len(runs) + 1):
        cpu_ref = sum(r["cpu_s"] for r in runs[:k])
        md.append(f"| {k} ({', '.join(f'{r:g}' for r in args.rates[:k])}) | {cum[k - 1]:.1f} | {cpu_ref:.1f} | "
                  f"{t_fast:.1f} | {c_fast:.1f} | {cum[k - 1] / t_fast:.2f}x |")
    note = (f"fastbd built all {len(runs)} rates in one build (nested sets: fewer rates cost the same) and wrote "
            f"{n_fast} images; the reference wrote {sum(r['images_written'] for r in runs)} files in {len(runs)} runs, "
            f"each paying {startup['wall_s']:.1f} s ({startup['cpu_s']:.1f} CPU s) to start Python and import torch, "
            "torchvision and matplotlib. Both times are whole commands, interpreter start included. "
            f"Load average (1/5/15 min) before, after the reference, after fastbd: {load}.")
    (out / "build_vs_reference.md").write_text(f"Hardware: {hw}\n\n" + "\n".join(md) + f"\n\n{note}\n")
    print("\n".join(md) + "\n" + note)


def timed(fn):
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0, cpu_seconds() - c0


def hardware() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": cores(),
            "python": platform.python_version(), "pillow": Image.__version__, "numpy": np.__version__}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="bench_out", help="folder for the source images, both builds and the results")
    ap.add_argument("--classes", type=int, default=10, help="classes of the synthetic source")
    ap.add_argument("--train-per-class", type=int, default=200,
                    help="training images per class (validation: a tenth of it)")
    ap.add_argument("--max-resolution", type=int, nargs="+", default=[256, 512],
                    help="px, longest stored side; one row of results per value")
    ap.add_argument("--workers", type=int, default=0, help="fastbd processes (0: every core)")
    ap.add_argument("--reference-checkout", help="a checkout of UMBCvision/SSL-Backdoor: time its generator instead "
                                                 "of the stand-in loop (time to a trainable experiment for --rates)")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                    help="with --reference-checkout: poison rates, fractions of the target class")
    return ap


def main() -> None:
    args = parser().parse_args()
    out = Path(args.out)
    src = make_source(out / "src", args.train_per_class, args.classes)
    if args.reference_checkout:
        versus_reference(args, out, src, hardware())
        return
    rows = []
    for res in args.max_resolution:
        spec = load_spec(None, ["source.kind=imagefolder", f"source.root={src}", "attack.target=0",
                                f"storage.max_resolution={res}", f"workers={args.workers}"])
        n_ref, t_ref, c_ref = timed(lambda: loop_build(spec, out / f"loop_{res}"))
        def ours():
            m = build(spec, out / f"fastbd_{res}", force=True, log=lambda s: None)
            c = m["counts"]
            return c["train_total"] + c["val"] + c["val_poisoned"]
        n_fast, t_fast, c_fast = timed(ours)
        assert n_fast == n_ref, (n_fast, n_ref)
        rows.append({"max_resolution": res, "images": n_fast,
                     "loop_img_s": n_ref / t_ref, "fastbd_img_s": n_fast / t_fast,
                     "speedup": t_ref / t_fast,
                     "loop_core_ms_per_img": 1e3 * c_ref / n_ref,
                     "fastbd_core_ms_per_img": 1e3 * c_fast / n_fast})
        print(json.dumps(rows[-1]), flush=True)
    hw = hardware()
    result = {"benchmark": "build_throughput", "hardware": hw, "source": "synthetic ~500x375 JPEG q92",
              "rows": rows}
    (out / "build_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["| max res (px) | images | stand-in loop img/s | fastbd img/s | speedup | loop core-ms/img | fastbd core-ms/img |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['max_resolution']} | {r['images']} | {r['loop_img_s']:.0f} | {r['fastbd_img_s']:.0f} | "
           f"{r['speedup']:.2f}x | {r['loop_core_ms_per_img']:.2f} | {r['fastbd_core_ms_per_img']:.2f} |"
           for r in rows]
    (out / "build_throughput.md").write_text(f"Hardware: {hw}\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
