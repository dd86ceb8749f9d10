"""Build benchmark: compile the same poisoned set two ways and compare images/s and CPU core-ms/sample.

    .venv/bin/python benchmarks/build_throughput.py [--train-per-class 200] [--max-resolution 256 512]

(a) fastbd: `beton_builders.build` with every core (decode, paste, resize, encode in a process pool,
    then .beton + DALI shards + manifest);
(b) reference: a straightforward single-process PIL loop doing the same poisoning, as the reference
    code (UMBCvision/SSL-Backdoor, poison-generation/generate_poison.py) does it: open, convert('RGB'),
    paste on the chosen images, resize, save one JPEG file per image plus a "path label" file list.
Both read the same ImageNet-like synthetic JPEGs (about 500x375, written once to bench_out/src).
Writes bench_out/build_throughput.json and .md. Reference numbers and hardware: README, "Benchmarks".
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

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beton_builders import build, load_spec  # noqa: E402
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


def reference_build(spec, out: Path) -> int:
    """Single process, PIL only: the straightforward way to produce the same poisoned set."""
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


def timed(fn):
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0, cpu_seconds() - c0


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
    return ap


def main() -> None:
    args = parser().parse_args()
    out = Path(args.out)
    src = make_source(out / "src", args.train_per_class, args.classes)
    rows = []
    for res in args.max_resolution:
        spec = load_spec(None, ["source.kind=imagefolder", f"source.root={src}", "attack.target=0",
                                f"storage.max_resolution={res}", f"workers={args.workers}"])
        n_ref, t_ref, c_ref = timed(lambda: reference_build(spec, out / f"ref_{res}"))
        def ours():
            m = build(spec, out / f"fastbd_{res}", force=True, log=lambda s: None)
            c = m["counts"]
            return c["train_total"] + c["val"] + c["val_poisoned"]
        n_fast, t_fast, c_fast = timed(ours)
        assert n_fast == n_ref, (n_fast, n_ref)
        rows.append({"max_resolution": res, "images": n_fast,
                     "reference_img_s": n_ref / t_ref, "fastbd_img_s": n_fast / t_fast,
                     "speedup": t_ref / t_fast,
                     "reference_core_ms_per_img": 1e3 * c_ref / n_ref,
                     "fastbd_core_ms_per_img": 1e3 * c_fast / n_fast})
        print(json.dumps(rows[-1]), flush=True)
    hw = {"cpu": platform.processor() or platform.machine(), "cores": cores(),
          "python": platform.python_version(), "pillow": Image.__version__}
    result = {"benchmark": "build_throughput", "hardware": hw, "source": "synthetic ~500x375 JPEG q92",
              "rows": rows}
    (out / "build_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["| max res (px) | images | reference img/s | fastbd img/s | speedup | reference core-ms/img | fastbd core-ms/img |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['max_resolution']} | {r['images']} | {r['reference_img_s']:.0f} | {r['fastbd_img_s']:.0f} | "
           f"{r['speedup']:.2f}x | {r['reference_core_ms_per_img']:.2f} | {r['fastbd_core_ms_per_img']:.2f} |"
           for r in rows]
    (out / "build_throughput.md").write_text(f"Hardware: {hw}\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
