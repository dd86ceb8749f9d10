"""Bad input gets a clear message naming the file or field; skip policy lists what was left out."""

import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from beton_builders import BuildError, build, load_manifest, load_spec
from fastbd.cli import app
from fastbd.config import ConfigError

from conftest import jpeg_bytes, make_imagefolder, quiet

FOLDER = ["source.kind=imagefolder", "trigger.width=12", "attack.target=b_cls", "attack.rates=[0.5]",
          "storage.val_resize=48", "storage.val_crop=40", "workers=2"]


def spec_for(root, *extra):
    return load_spec(None, [f"source.root={root}", *FOLDER, *extra])


def test_imagefolder_and_odd_image_modes(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    d = root / "train" / "b_cls"
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).convert("CMYK").save(d / "cmyk.jpg", quality=90)
    Image.fromarray(arr).convert("L").save(d / "grey.jpg")
    Image.fromarray(arr).convert("P").save(d / "palette.png")
    Image.fromarray(arr).convert("RGBA").save(d / "alpha.png")
    Image.fromarray(arr).save(d / "progressive.jpg", progressive=True)
    m = build(spec_for(root, "attack.rate_mode=count", "attack.rates=[11]"), tmp_path / "o", log=quiet)
    assert m["source"]["classes"] == ["a_cls", "b_cls", "c_cls"]
    assert m["counts"]["train_clean"] == 23 and m["counts"]["train_poisoned"] == 11
    # every stored image is a baseline RGB JPEG, whatever the source was
    import tarfile
    with tarfile.open(tmp_path / "o" / "dali" / "train-00000.tar") as tf:
        for mem in tf.getmembers():
            if mem.name.endswith(".jpg"):
                im = Image.open(io.BytesIO(tf.extractfile(mem).read()))
                assert im.format == "JPEG" and im.mode == "RGB" and not im.info.get("progressive")


def test_corrupt_image_fails_naming_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    good = (root / "train" / "a_cls" / "img000.jpg").read_bytes()
    (root / "train" / "a_cls" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "c_cls" / "notanimage.jpg").write_bytes(b"hello")
    with pytest.raises(BuildError, match=r"train/a_cls/truncated.jpg.*on_error=skip"):
        build(spec_for(root), tmp_path / "o", log=quiet)
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == [tmp_path / "src"]
    m = build(spec_for(root, "storage.on_error=skip"), tmp_path / "o", log=quiet)
    keys = sorted(s["key"] for s in m["skipped"])
    assert keys == ["train/a_cls/truncated.jpg", "train/c_cls/notanimage.jpg"]
    assert m["counts"]["train_clean"] == 18 and m["counts"]["skipped"] == 2


def test_images_smaller_than_the_trigger_are_not_candidates(tmp_path):
    root = make_imagefolder(tmp_path / "src", n_train=4)
    tiny = np.zeros((8, 8, 3), np.uint8)
    for i in range(4):
        (root / "train" / "b_cls" / f"tiny{i}.jpg").write_bytes(jpeg_bytes(tiny))
    m = build(spec_for(root, "attack.rate_mode=count", "attack.rates=[4]"), tmp_path / "o", log=quiet)
    assert all("tiny" not in p["key"] for p in m["poisoned"])
    with pytest.raises(ConfigError, match=r"asks for 5 .* only 4 candidates .*4 more are smaller than the trigger"):
        build(spec_for(root, "attack.rate_mode=count", "attack.rates=[5]"), tmp_path / "p", log=quiet)


def test_unknown_target_and_missing_folders(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    with pytest.raises(ConfigError, match="unknown class 'b_clss'; did you mean b_cls"):
        build(spec_for(root, "attack.target=b_clss"), tmp_path / "o", log=quiet)
    with pytest.raises(ConfigError, match="has no train/ folder"):
        build(spec_for(tmp_path / "nowhere"), tmp_path / "o", log=quiet)
    (tmp_path / "classes.txt").write_text("a_cls\nz_cls\n")
    with pytest.raises(ConfigError, match="class_list.*z_cls"):
        build(spec_for(root, f"source.class_list={tmp_path / 'classes.txt'}"), tmp_path / "o", log=quiet)


def test_class_subset_keeps_lexical_indexing(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    (tmp_path / "classes.txt").write_text("c_cls\nb_cls\n")
    m = build(spec_for(root, f"source.class_list={tmp_path / 'classes.txt'}"), tmp_path / "o", log=quiet)
    assert m["source"]["classes"] == ["b_cls", "c_cls"] and m["target"]["index"] == 0
    assert m["counts"]["train_clean"] == 12


def test_reference_file_lists(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    for split in ("train", "val"):
        lines = [f"{p} {['a_cls', 'b_cls', 'c_cls'].index(p.parent.name)}"
                 for p in sorted((root / split).rglob("*.jpg"))]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    m = build(load_spec(None, ["source.kind=filelist", f"source.train_list={tmp_path / 'train.txt'}",
                               f"source.val_list={tmp_path / 'val.txt'}", "trigger.width=12", "attack.target=1",
                               "storage.val_resize=48", "storage.val_crop=40"]), tmp_path / "o", log=quiet)
    assert m["counts"]["train_poisoned"] == 3 and m["source"]["classes"] == ["0", "1", "2"]
    (tmp_path / "bad.txt").write_text("only_a_path.jpg\n")
    with pytest.raises(ConfigError, match=r"bad.txt:1: expected 'path label'"):
        build(load_spec(None, ["source.kind=filelist", f"source.train_list={tmp_path / 'bad.txt'}",
                               f"source.val_list={tmp_path / 'val.txt'}"]), tmp_path / "p", log=quiet)


def test_image_trigger_with_alpha(tmp_path):
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :20, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    from beton_builders.triggers import make_trigger
    t = make_trigger(load_spec(None, ["trigger.kind=image", f"trigger.path={tmp_path / 't.png'}",
                                      "trigger.width=20"]).trigger)
    assert t.size == (20, 10) and t.mask[:, :8].min() > 0.99 and t.mask[:, 12:].max() < 0.01
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(ConfigError, match="trigger.path: cannot read trigger image .*broken.png"):
        make_trigger(load_spec(None, ["trigger.kind=image", f"trigger.path={tmp_path / 'broken.png'}"]).trigger)


def test_cli_build_inspect_and_errors(tmp_path):
    runner = CliRunner()
    args = ["build-beton", "--config", "configs/poison/demo.yaml", "--out", str(tmp_path / "cli"),
            "source.synthetic.train_per_class=10", "source.synthetic.val_per_class=2", "workers=1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "train.beton 105 samples = 100 clean + 5 poisoned copies" in r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "cli")])
    assert r.exit_code == 0 and "all match" in r.output and (tmp_path / "cli" / "preview.png").is_file()
    r = runner.invoke(app, ["build-beton", "--out", str(tmp_path / "x"), "attack.rates=[2]"])
    assert r.exit_code == 2 and "attack.rates" in r.output
    assert load_manifest(tmp_path / "cli")["spec"]["source"]["synthetic"]["train_per_class"] == 10
