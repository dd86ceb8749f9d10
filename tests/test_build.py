"""The compiler end to end on the tiny synthetic set: counts, nesting, boxes, determinism, atomicity."""

import json

import numpy as np
import pytest

from beton_builders import BuildError, build, load_manifest, train_indices, verify_files
from beton_builders.summary import read_tar_sample, to_array
from beton_builders.triggers import make_trigger

from conftest import quiet, tiny_spec


def test_manifest_counts_and_nested_rates(tiny_build):
    m = load_manifest(tiny_build)
    c = m["counts"]
    assert (c["train_clean"], c["train_poisoned"], c["train_total"]) == (48, 6, 54)
    assert (c["val"], c["val_poisoned"], c["val_poisoned_nontarget"]) == (12, 12, 9)
    r1, r2 = m["rates"]
    assert (r1["rate"], r1["count"], r2["rate"], r2["count"]) == (0.25, 3, 0.5, 6)  # int(rate * 12)
    assert r2["poisoned_indices"][:3] == r1["poisoned_indices"]  # nested
    assert r2["replaced_indices"][:3] == r1["replaced_indices"]
    assert all(p["label"] == 1 for p in m["poisoned"])
    assert m["target"] == {"index": 1, "name": m["source"]["classes"][1]}
    assert verify_files(tiny_build) == []


def test_per_rate_training_index_lists(tiny_build):
    m = load_manifest(tiny_build)
    for e in m["rates"]:
        idx = train_indices(m, e["rate"])
        assert len(idx) == 48 and len(set(idx.tolist())) == 48  # each image once: clean or poisoned
        assert set(e["poisoned_indices"]) <= set(idx.tolist())
        assert not set(e["replaced_indices"]) & set(idx.tolist())
    assert (train_indices(m, None) == np.arange(48)).all()


def test_boxes_follow_the_placement_policy(tiny_build):
    m = load_manifest(tiny_build)
    for p in m["poisoned"]:
        x, y, w, h = p["box_source"]
        assert (w, h) == (8, 8) and int(48 * 0.25) <= x and x + w <= 48 * 0.75 + 1e-9
        assert p["box"] == p["box_source"]  # 48 px source, 48 px storage: no rescale
    for x, y, w, h in m["val_poisoned"]["box"]:
        assert int(40 * 0.10) <= x and x + w <= 40 * 0.90 and int(40 * 0.10) <= y and y + h <= 40 * 0.90


def test_poisoned_pixels_carry_the_trigger(tiny_build):
    m = load_manifest(tiny_build)
    trig = make_trigger(tiny_spec().trigger).rgb.astype(float)
    for p in m["poisoned"]:
        img = to_array(read_tar_sample(tiny_build, "train", p["index"], 20)).astype(float)
        clean = to_array(read_tar_sample(tiny_build, "train", p["clean_index"], 20)).astype(float)
        x, y, w, h = p["box"]
        err_trig = np.abs(img[y:y + h, x:x + w] - trig).mean()
        err_clean = np.abs(clean[y:y + h, x:x + w] - trig).mean()
        assert err_trig < 0.5 * err_clean  # the trigger survives JPEG (4:2:0 blurs its colours), the clean copy differs
        outside = np.ones(img.shape[:2], bool)
        outside[max(0, y - 4):y + h + 4, max(0, x - 4):x + w + 4] = False
        assert np.abs(img - clean)[outside].mean() < 6  # the rest of the image is the same picture


def test_444_chroma_keeps_the_trigger_sharper(tiny_build, tmp_path):
    m444 = build(tiny_spec("storage.chroma=444"), tmp_path / "c444", log=quiet)
    trig = make_trigger(tiny_spec().trigger).rgb.astype(float)

    def err(folder, m):
        out = []
        for p in m["poisoned"]:
            img = to_array(read_tar_sample(folder, "train", p["index"], 20)).astype(float)
            x, y, w, h = p["box"]
            out.append(np.abs(img[y:y + h, x:x + w] - trig).mean())
        return np.mean(out)

    assert m444["storage"]["jpeg"].startswith("baseline, 4:4:4")
    assert err(tmp_path / "c444", m444) < 0.7 * err(tiny_build, load_manifest(tiny_build))


def test_raw_mode_is_exact(tiny_raw_build):
    m = load_manifest(tiny_raw_build)
    trig = make_trigger(tiny_spec().trigger).rgb
    import tarfile
    for p in m["poisoned"]:
        with tarfile.open(tiny_raw_build / "dali" / f"train-{p['index'] // 20:05d}.tar") as tf:
            raw = tf.extractfile(f"{p['index']:08d}.rgb").read()
            shape = np.frombuffer(tf.extractfile(f"{p['index']:08d}.shape").read(), "<i4")
        img = np.frombuffer(raw, np.uint8).reshape(shape)
        x, y, w, h = p["box"]
        assert (img[y:y + h, x:x + w] == trig).all()


def test_same_spec_and_seed_give_identical_bytes(tmp_path, tiny_build):
    build(tiny_spec(workers=1), tmp_path / "again", log=quiet)  # different worker count, same bytes
    a = (tiny_build / "manifest.json").read_bytes()
    b = (tmp_path / "again" / "manifest.json").read_bytes()
    assert a == b
    build(tiny_spec("seed=1"), tmp_path / "seed1", log=quiet)
    m0, m1 = load_manifest(tiny_build), load_manifest(tmp_path / "seed1")
    assert [p["source_index"] for p in m0["poisoned"]] != [p["source_index"] for p in m1["poisoned"]]
    assert m0["source"]["fingerprint"] == m1["source"]["fingerprint"]


def test_existing_output_is_refused_unless_forced(tmp_path):
    out = tmp_path / "o"
    build(tiny_spec(), out, log=quiet)
    with pytest.raises(BuildError, match="already exists.*--force"):
        build(tiny_spec(), out, log=quiet)
    build(tiny_spec("seed=5"), out, force=True, log=quiet)
    assert load_manifest(out)["seed"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temporary folders left


def test_interrupted_build_leaves_nothing_and_rerun_works(tmp_path, monkeypatch):
    import importlib

    b = importlib.import_module("beton_builders.build")  # the module, not the function of that name

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(b, "write_beton", boom)
    with pytest.raises(KeyboardInterrupt):
        build(tiny_spec(), tmp_path / "o", log=quiet)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # a stale partial folder from a killed process is cleaned up by the next build
    (tmp_path / ".o.partial-deadbeef").mkdir()
    build(tiny_spec(), tmp_path / "o", log=quiet)
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


def test_untargeted_and_count_modes(tmp_path):
    m = build(tiny_spec("attack.targeted=false", "attack.rate_mode=count", "attack.rates=[5]"),
              tmp_path / "u", log=quiet)
    assert m["target"] is None and m["counts"]["train_poisoned"] == 5
    assert len({p["label"] for p in m["poisoned"]}) >= 2
    assert m["counts"]["val_poisoned_nontarget"] == 12
    m = build(tiny_spec("attack.rate_mode=dataset_fraction", "attack.rates=[0.125]"), tmp_path / "d", log=quiet)
    assert m["counts"]["train_poisoned"] == 6  # int(0.125 * 48), all from the target class
    with pytest.raises(Exception, match="attack.rates.*asks for 24"):
        build(tiny_spec("attack.rate_mode=dataset_fraction", "attack.rates=[0.5]"), tmp_path / "x", log=quiet)


@pytest.mark.parametrize("kind,extra", [("text", ["trigger.text=HI", "trigger.width=16"]),
                                        ("htba", ["trigger.location=grid3x3"]),
                                        ("htba", ["trigger.location=center", "trigger.alpha=0.5"])])
def test_trigger_kinds_and_locations(tmp_path, kind, extra):
    m = build(tiny_spec(f"trigger.kind={kind}", *extra), tmp_path / "t", log=quiet)
    assert m["counts"]["train_poisoned"] == 6 and m["trigger"]["kind"] == kind
    if "trigger.location=center" in extra:
        assert all(p["box_source"][:2] == [20, 20] for p in m["poisoned"])


def test_manifest_is_plain_json_with_file_hashes(tiny_build):
    m = json.loads((tiny_build / "manifest.json").read_text())
    assert set(m["files"]) == {"train.beton", "val.beton", "val_poisoned.beton", "dali/train-00000.tar",
                               "dali/train-00001.tar", "dali/train-00002.tar", "dali/val-00000.tar",
                               "dali/val_poisoned-00000.tar"}
    assert m["storage"]["max_resolution"] == 48 and m["spec"]["seed"] == 0
