"""fastbd export-reference: a build as the reference code's image folders and `path label` lists.

`reference_rows` parses a list the way the reference's loaders do (moco/moco/dataset.py and
byol/datasets/imagenet.py FileListDataset: rows = [r.rstrip() for r in f.readlines()], path =
row.split()[0], target = int(row.split()[1]); jigsaw/dataset.py: row.rstrip().split(" ")[0]).
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from beton_builders import load_manifest, train_indices
from beton_builders.export_reference import export_reference
from beton_builders.summary import read_tar_sample
from fastbd.cli import app


def reference_rows(path: Path) -> list[tuple[str, int]]:
    with open(path) as f:
        rows = [row.rstrip() for row in f.readlines()]
    out = []
    for row in rows:
        assert row.split()[0] == row.split(" ")[0]  # the jigsaw loader reads the same path
        out.append((row.split()[0], int(row.split()[1])))
    return out


def raw_sample(folder: Path, split: str, index: int, shard_size: int) -> np.ndarray:
    import tarfile
    with tarfile.open(folder / "dali" / f"{split}-{index // shard_size:05d}.tar") as tf:
        rgb = tf.extractfile(f"{index:08d}.rgb").read()
        shape = np.frombuffer(tf.extractfile(f"{index:08d}.shape").read(), "<i4")
    return np.frombuffer(rgb, np.uint8).reshape(shape)


def test_lists_feed_the_reference_loader_with_the_builds_bytes(tiny_build, tmp_path):
    m = load_manifest(tiny_build)
    rec = export_reference(tiny_build, tmp_path / "ref")
    out = tmp_path / "ref"
    shard = m["storage"]["shard_size"]
    labels = {"train": {}, "val": {}, "val_poisoned": {}}
    for split, name in (("train", "train_clean_filelist.txt"), ("val", "val_filelist.txt"),
                        ("val_poisoned", "val_poisoned_filelist.txt"), ("train", "train_rate0.25_filelist.txt"),
                        ("train", "train_rate0.5_filelist.txt")):
        rows = reference_rows(out / name)
        assert rec["lists"][name] == len(rows) > 0
        for path, label in rows:
            p = Path(path)
            assert p.is_absolute() and p.is_relative_to(out) and p.suffix == ".jpg"
            idx = int(p.stem)
            assert p.read_bytes() == read_tar_sample(tiny_build, split, idx, shard)  # the build's bytes, exactly
            assert Image.open(p).convert("RGB").size == Image.open(p).size  # what the loader does, works
            assert p.parent.name == m["source"]["classes"][label]
            labels[split][idx] = label
    assert [int(Path(p).stem) for p, _ in reference_rows(out / "val_poisoned_filelist.txt")] == \
        list(range(m["counts"]["val_poisoned"]))
    assert [lbl for _, lbl in reference_rows(out / "val_poisoned_filelist.txt")] == m["val_poisoned"]["label"]
    for e in m["rates"]:
        rows = reference_rows(out / f"train_rate{e['rate']:g}_filelist.txt")
        assert [int(Path(p).stem) for p, _ in rows] == train_indices(m, e["rate"]).tolist()
        poisoned = [p for p, _ in rows if Path(p).parent.parent.name == "train_poisoned"]
        assert len(poisoned) == e["count"] and sorted(int(Path(p).stem) for p in poisoned) == e["poisoned_indices"]
        assert all(lbl == m["target"]["index"] for p, lbl in rows if p in poisoned)


def test_raw_build_exports_exact_pixels_and_patch_params(tiny_raw_build, tmp_path):
    m = load_manifest(tiny_raw_build)
    export_reference(tiny_raw_build, tmp_path / "ref", rates=[0.25], patch_params=True)
    out = tmp_path / "ref"
    assert not (out / "train_rate0.5_filelist.txt").exists()
    lines = (out / "train_rate0.25_filelist.txt").read_text().splitlines()
    boxes = {p["index"]: p["box_source"] for p in m["poisoned"]}
    n_poisoned = 0
    for ln in lines:
        f = ln.split()
        idx = int(Path(f[0]).stem)
        want = raw_sample(tiny_raw_build, "train", idx, m["storage"]["shard_size"])
        assert np.array_equal(np.asarray(Image.open(f[0]).convert("RGB")), want)
        if idx >= m["counts"]["train_clean"]:
            assert [int(v) for v in f[2:]] == boxes[idx]
            n_poisoned += 1
        else:
            assert len(f) == 2
    assert n_poisoned == m["rates"][0]["count"]
    assert len(list((out / "train_poisoned").rglob("*.png"))) == n_poisoned  # only what the exported rate uses


def test_bad_requests_are_refused_with_exit_2(tiny_build, tmp_path):
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, ["export-reference", *map(str, args)])
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        return r.output

    assert "rate 0.3 not in this build" in run(tiny_build, "--out", tmp_path / "a", "--rate", "0.3")
    assert "contains whitespace" in run(tiny_build, "--out", tmp_path / "with space")
    assert "no manifest" in run(tmp_path, "--out", tmp_path / "b")
    r = runner.invoke(app, ["export-reference", str(tiny_build), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and "train_rate0.5_filelist.txt" in r.output
    assert "already exists" in run(tiny_build, "--out", tmp_path / "c")
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_build, bad)
    tar = bad / "dali" / "val_poisoned-00000.tar"
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert "val_poisoned-00000.tar" in run(bad, "--out", tmp_path / "d")
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.partial-*"))
