"""The attacks beyond the patch, as trigger kinds of the compiler: CTRL (image-wide, frequency domain) and
CorruptEncoder (composed images). What they put in the pixels, what the manifest says, determinism, and
bad input; the same checks the patch attack has in test_build.py and test_bad_input.py."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from beton_builders import BuildError, build, load_manifest, load_spec, train_indices
from beton_builders.config import ConfigError
from beton_builders.manifest import attack, clean_pool
from beton_builders.process import _val_transform
from beton_builders.spec import TriggerSpec
from beton_builders.triggers import KINDS, make_trigger
from beton_builders.triggers.corruptencoder import CorruptEncoderConfig, compose, is_support, min_object
from beton_builders.triggers.corruptencoder_parts import with_object
from beton_builders.triggers.ctrl import SPACES, Ctrl, CtrlConfig, apply_long_way, block_dct, dct_matrix
from beton_builders.triggers.patch import Trigger
from fastbd.cli import app

from conftest import jpeg_bytes, make_imagefolder, quiet, tiny_spec

CTRL = ["trigger.kind=ctrl", "storage.chroma=444"]
CE = ["trigger.kind=corruptencoder", "trigger.corruptencoder.trigger_width=8"]


def raw_array(folder, split: str, i: int, shard_size: int = 20) -> np.ndarray:
    """Sample i of a raw-mode build, exactly as stored."""
    import tarfile
    with tarfile.open(folder / "dali" / f"{split}-{i // shard_size:05d}.tar") as tf:
        shape = np.frombuffer(tf.extractfile(f"{i:08d}.shape").read(), "<i4")
        return np.frombuffer(tf.extractfile(f"{i:08d}.rgb").read(), np.uint8).reshape(shape)


def ctrl_coefficients(rgb: np.ndarray, c: CtrlConfig) -> np.ndarray:
    """(channels, positions) mean DCT coefficient over the whole windows of an image (rgb float)."""
    x = rgb.astype(np.float64) @ np.asarray(SPACES[c.space]).T
    h, w = (s - s % c.window for s in x.shape[:2])
    return np.array([[block_dct(x[:h, :w, ch], c.window)[u::c.window, v::c.window].mean() for u, v in c.positions]
                     for ch in c.channels])


# ----- CTRL ---------------------------------------------------------------------------------------------

def test_dct_is_orthonormal_and_the_pattern_is_the_long_way():
    d = dct_matrix(32)
    assert np.allclose(d @ d.T, np.eye(32))
    x = np.random.default_rng(0).normal(size=(64, 96))
    assert np.allclose(block_dct(block_dct(x, 32), 32, inverse=True), x)
    rgb = np.random.default_rng(1).integers(20, 235, (70, 100, 3), dtype=np.uint8)
    spec = load_spec(None, CTRL)
    for space in SPACES:
        spec.trigger.ctrl.space = space
        fast = Ctrl(spec, None, 0).train(rgb.copy(), None, 0).rgb
        slow = apply_long_way(rgb, spec.trigger.ctrl, 50.0)
        assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 1  # float32 vs float64 rounding
        assert (fast[64:] == rgb[64:]).all() and (fast[:, 96:] == rgb[:, 96:]).all()  # the remainder is untouched
        got = ctrl_coefficients(fast, spec.trigger.ctrl) - ctrl_coefficients(rgb, spec.trigger.ctrl)
        assert np.allclose(got, 50.0, atol=2.5)  # 8-bit rounding of a periodic pattern biases it by up to ~2


def test_ctrl_build_puts_the_trigger_in_every_window(tmp_path):
    m = build(tiny_spec(*CTRL, "storage.write_mode=raw"), tmp_path / "c", log=quiet)
    c = load_spec(None, CTRL).trigger.ctrl
    assert m["trigger"]["kind"] == "ctrl" and m["trigger"]["params"]["magnitude"] == 50.0
    assert m["trigger"]["params"]["val_magnitude"] == 100.0 and m["trigger"]["params"]["positions"] == [[15, 15], [31, 31]]
    assert all(p["box"] is None and p["label"] == 1 for p in m["poisoned"]) and m["counts"]["train_poisoned"] == 6
    assert m["val_poisoned"]["box"] == [None] * 12
    for p in m["poisoned"]:
        img, clean = (raw_array(tmp_path / "c", "train", i).astype(float) for i in (p["index"], p["clean_index"]))
        got = ctrl_coefficients(img, c) - ctrl_coefficients(clean, c)
        assert np.allclose(got, 50.0, atol=3.0), got  # rounding (see above) and clipping at 0 and 255
    for i in range(12):  # the attack's own test: the val crop at the evaluation magnitude
        crop = np.asarray(_val_transform(Image.fromarray(raw_array(tmp_path / "c", "val", i)), 48, 40))
        vp = raw_array(tmp_path / "c", "val_poisoned", i)
        assert np.abs(vp.astype(int) - apply_long_way(crop, c, 100.0)).max() <= 1
        got = ctrl_coefficients(vp.astype(float), c) - ctrl_coefficients(crop.astype(float), c)
        assert (got > 80).all() and (got < 103).all(), got  # one window each: clipping at 0 and 255 shows more


def test_ctrl_settings_are_checked():
    for bad, field in [([], "storage.chroma"), (["storage.chroma=444", "trigger.ctrl.positions=[[15,32]]"],
                                                 "trigger.ctrl.positions"),
                       (["storage.chroma=444", "trigger.ctrl.channels=[3]"], "trigger.ctrl.channels"),
                       (["storage.chroma=444", "trigger.ctrl.space=lab"], "trigger.ctrl.space"),
                       (["storage.chroma=444", "trigger.ctrl.window=256", "trigger.ctrl.positions=[[1,1]]"],
                        "trigger.ctrl.window")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_spec(None, ["trigger.kind=ctrl", *bad])
    load_spec(None, ["trigger.kind=ctrl", "storage.write_mode=raw"])  # raw keeps every pixel: no chroma rule
    with pytest.raises(ValueError, match="not a patch"):
        make_trigger(load_spec(None, CTRL).trigger)


def test_ctrl_on_an_imagefolder_skips_images_smaller_than_a_window(tmp_path):
    root = make_imagefolder(tmp_path / "src", n_train=4, size=(80, 64))
    for i in range(3):
        (root / "train" / "b_cls" / f"tiny{i}.jpg").write_bytes(jpeg_bytes(np.zeros((20, 40, 3), np.uint8)))
    spec = load_spec(None, [f"source.root={root}", "source.kind=imagefolder", *CTRL, "attack.target=b_cls",
                            "attack.rate_mode=count", "attack.rates=[4]", "storage.val_resize=48",
                            "storage.val_crop=40"])
    m = build(spec, tmp_path / "o", log=quiet)
    assert m["counts"]["train_poisoned"] == 4 and all("tiny" not in p["key"] for p in m["poisoned"])
    spec.attack.rates = [5]
    with pytest.raises(ConfigError, match=r"asks for 5 .* only 4 candidates .*3 more are smaller"):
        build(spec, tmp_path / "p", log=quiet)


# ----- CorruptEncoder -----------------------------------------------------------------------------------

def test_support_poisons_spread_so_every_rate_prefix_has_its_share():
    for ratio in (0.0, 0.2, 0.25, 0.5):
        flags = [is_support(j, ratio) for j in range(200)]
        assert all(sum(flags[:n]) == int(n * ratio + 1e-9) for n in range(201))


@pytest.mark.parametrize("seed", range(6))
def test_layout_puts_object_and_trigger_on_opposite_sides(seed):
    c = CorruptEncoderConfig()
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(30, 300)), int(rng.integers(30, 300))
    mask = np.zeros((h, w), bool)
    mask[h // 4:, w // 5:] = True
    obj = with_object("o", rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mask, "", "f")
    patch = Trigger(np.full((40, 40, 3), 255, np.uint8), np.ones((40, 40), np.float32))
    out, (tx, ty, tw, th), parts = compose(obj, rng.integers(0, 255, (90, 160, 3), dtype=np.uint8), patch, rng, c)
    ox, oy, ow, oh = parts["object_box"]
    p_w, p_h = parts["size"]
    assert out.shape == (p_h, p_w, 3) and p_h == oh and p_w == int(c.area_ratio * ow) and oy == 0
    need_w, need_h = min_object(c, 40)
    assert ow >= need_w and oh >= need_h  # small objects are enlarged until the trigger fits beside them
    assert (ow, oh) == (obj.object_rgb.shape[1], obj.object_rgb.shape[0]) or parts["object_scale"] > 1
    if parts["side"] == "left":
        assert ox <= c.object_margin * p_w and tx >= ox + ow + c.trigger_margin / 2 * p_w - 1
        assert tx + tw <= p_w - c.trigger_margin / 2 * p_w + 1
    else:
        assert ox + ow >= p_w - c.object_margin * p_w - 1 and tx + tw <= ox - c.trigger_margin / 2 * p_w + 1
        assert tx >= c.trigger_margin / 2 * p_w - 1
    assert c.trigger_margin * p_h - 1 <= ty and ty + th <= p_h - c.trigger_margin * p_h + 1
    assert (out[ty:ty + th, tx:tx + tw] == 255).all()  # pasted opaque


def test_corruptencoder_builds_on_the_synthetic_source(tmp_path):
    m = build(tiny_spec(*CE, "storage.write_mode=raw", "trigger.corruptencoder.support_ratio=0.5",
                        "storage.max_resolution=256"), tmp_path / "ce", log=quiet)
    c = m["counts"]
    assert (c["train_clean"], c["train_poisoned"], c["train_total"]) == (48, 6, 54)
    r1, r2 = m["rates"]
    assert r1["replaced_indices"] == r2["replaced_indices"] == []  # composites are added, as the reference appends them
    assert (train_indices(m, 0.25) == np.r_[np.arange(48), r1["poisoned_indices"]]).all()
    assert len(clean_pool(m)) == 48  # no clean image went into a composite
    kinds = [p["parts"]["type"] for p in m["poisoned"]]
    assert kinds.count("support") == 3 and kinds[:3].count("support") == 1  # nested: int(n x 0.5) in every prefix
    refs = {r["name"] for r in m["trigger"]["references"]}
    assert len(refs) == 3 and len(m["trigger"]["supports"]) == 5
    patch = make_trigger(load_spec(None, ["trigger.width=8"]).trigger).rgb
    for p in m["poisoned"]:
        parts = p["parts"]
        assert p["clean_index"] is None and p["label"] == 1 and parts["reference"] in refs
        img = raw_array(tmp_path / "ce", "train", p["index"])
        w, h = parts["size"]
        assert img.shape[:2] == (h, w) and max(w, h) < 256  # stored as composed
        if parts["type"] == "support":
            assert p["box"] is None and parts["support"].startswith("synthetic/train/")
        else:
            assert p["box"] == p["box_source"]
            x, y, w, h = p["box"]
            assert (img[y:y + h, x:x + w] == patch).all() and parts["background"].startswith("synthetic/backdrop/")
    for x, y, w, h in m["val_poisoned"]["box"]:  # the reference's test: a box in [0.25, 0.75] of the crop
        assert 10 <= x and x + w <= 30 and 10 <= y and y + h <= 30
    assert attack(m)["kind"] == "corruptencoder" and "[0.25, 0.75]" in attack(m)["evaluation"]


def _references(root, n=3):
    """Reference objects in both layouts: labelme folders (img.png + label.png) and RGBA cut-outs."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 255, (30 + 5 * i, 40, 3), dtype=np.uint8)
        label = np.zeros_like(img)
        label[5:25, 8:30, 0] = 128  # labelme's colour of the first class
        if i % 2:
            (root / f"r{i}").mkdir()
            Image.fromarray(img).save(root / f"r{i}" / "img.png")
            Image.fromarray(label).save(root / f"r{i}" / "label.png")
        else:
            Image.fromarray(np.dstack([img, (label[..., 0] > 0) * 255]).astype(np.uint8), "RGBA").save(root / f"r{i}.png")
    return root


def _ce_folder_spec(tmp_path, *extra):
    root = make_imagefolder(tmp_path / "src")
    bgs = make_imagefolder(tmp_path / "bg_src", classes=("x",), n_train=4, n_val=0) / "train" / "x"
    return load_spec(None, [f"source.root={root}", "source.kind=imagefolder", *CE, "attack.target=b_cls",
                            f"trigger.corruptencoder.references={_references(tmp_path / 'refs')}",
                            f"trigger.corruptencoder.backgrounds={bgs}", "storage.val_resize=48",
                            "storage.val_crop=40", *extra])


def test_corruptencoder_on_an_imagefolder_with_user_parts(tmp_path):
    sup = make_imagefolder(tmp_path / "sup_src", classes=("s",), n_train=2, n_val=0) / "train" / "s"
    spec = _ce_folder_spec(tmp_path, "trigger.corruptencoder.support_ratio=0.5", f"trigger.corruptencoder.support={sup}",
                           "attack.rate_mode=count", "attack.rates=[4]")
    m = build(spec, tmp_path / "o", log=quiet)
    t = m["trigger"]
    assert [r["name"] for r in t["references"]] == ["r0.png", "r1", "r2.png"]
    assert [s["name"] for s in t["supports"]] == ["img000.jpg", "img001.jpg"]
    assert t["backgrounds"]["count"] == 4 and len(t["backgrounds"]["sha256"]) == 64
    assert m["counts"]["train_poisoned"] == 4
    for p in m["poisoned"]:
        if p["parts"]["type"] == "base":
            assert p["parts"]["background"] in {f"img{i:03d}.jpg" for i in range(4)}
            assert p["parts"]["object_box"][2:] == [22, 20] and p["parts"]["size"] == [44, 20]  # the masks' boxes


def test_corruptencoder_bad_input_names_the_field(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    base = [f"source.root={root}", "source.kind=imagefolder", *CE, "attack.target=b_cls"]
    with pytest.raises(ConfigError, match=r"trigger\.corruptencoder\.references: required for a imagefolder"):
        load_spec(None, base)
    with pytest.raises(ConfigError, match="attack.targeted"):
        load_spec(None, [*CE, "attack.targeted=false", "attack.rate_mode=count", "attack.rates=[2]"])
    with pytest.raises(ConfigError, match=r"trigger\.corruptencoder\.area_ratio"):
        load_spec(None, [*CE, "trigger.corruptencoder.area_ratio=1.2"])
    with pytest.raises(ConfigError, match=r"trigger\.corruptencoder\.references: .* holds 3 reference objects"):
        build(_ce_folder_spec(tmp_path / "a", "trigger.corruptencoder.num_references=4"), tmp_path / "o", log=quiet)
    spec = _ce_folder_spec(tmp_path / "b")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "b" / "refs" / "r1" / "label.png")
    with pytest.raises(ConfigError, match=r"r1: mask is 20x20 px, image 40x35"):
        build(spec, tmp_path / "o", log=quiet)
    spec = _ce_folder_spec(tmp_path / "c")
    for f in (tmp_path / "c" / "bg_src" / "train" / "x").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(BuildError, match=r"poisoned image 0 \(corruptencoder\).*cannot read image"):
        build(spec, tmp_path / "o", log=quiet)
    assert not (tmp_path / "o").exists()


# ----- both ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ctrl", "corruptencoder"])
def test_unreadable_source_images_fail_naming_the_file_or_are_skipped(tmp_path, kind):
    spec = (_ce_folder_spec(tmp_path) if kind == "corruptencoder" else
            load_spec(None, [f"source.root={make_imagefolder(tmp_path / 'src')}", "source.kind=imagefolder", *CTRL,
                             "attack.target=b_cls", "storage.val_resize=48", "storage.val_crop=40"]))
    good = (tmp_path / "src" / "train" / "b_cls" / "img000.jpg").read_bytes()
    (tmp_path / "src" / "train" / "b_cls" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(BuildError, match=r"train/b_cls/truncated.jpg.*on_error=skip"):
        build(spec, tmp_path / "o", log=quiet)
    assert not (tmp_path / "o").exists()
    spec.storage.on_error = "skip"
    m = build(spec, tmp_path / "o", log=quiet)
    assert [s["key"] for s in m["skipped"]] == ["train/b_cls/truncated.jpg"] and m["counts"]["train_poisoned"] == 3


@pytest.mark.parametrize("extra", [CTRL, CE], ids=["ctrl", "corruptencoder"])
def test_same_spec_and_seed_give_identical_bytes(tmp_path, extra):
    a = build(tiny_spec(*extra, workers=1), tmp_path / "a", log=quiet)
    build(tiny_spec(*extra, workers=2), tmp_path / "b", log=quiet)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    c = build(tiny_spec(*extra, "seed=1"), tmp_path / "c", log=quiet)
    if extra is CTRL:  # a different selection
        assert [p["source_index"] for p in a["poisoned"]] != [p["source_index"] for p in c["poisoned"]]
    else:  # different layouts
        assert [p["parts"] for p in a["poisoned"]] != [p["parts"] for p in c["poisoned"]]
    assert a["files"]["val.beton"] == c["files"]["val.beton"]


@pytest.mark.parametrize("extra", [CTRL, CE], ids=["ctrl", "corruptencoder"])
def test_inspect_and_preview_show_the_attack(tmp_path, extra):
    build(tiny_spec(*extra), tmp_path / "o", log=quiet)
    r = CliRunner().invoke(app, ["inspect", str(tmp_path / "o")])
    assert r.exit_code == 0 and "all match" in r.output, r.output
    kind = extra[0].split("=")[1]
    assert f"; {kind}" in r.output and "val_poisoned.beton 12 samples (9 non-target): " in r.output
    im = Image.open(tmp_path / "o" / "preview.png")
    rows = 3 if kind == "ctrl" else 2  # CTRL adds the amplified difference from the clean copies
    assert im.height > (rows - 1) * 100 and im.height < rows * 140


def test_registry_and_spec_sections():
    assert set(KINDS) >= {"htba", "image", "text", "ctrl", "corruptencoder"}
    t = TriggerSpec()
    assert isinstance(t.ctrl, CtrlConfig) and isinstance(t.corruptencoder, CorruptEncoderConfig)
    r = CliRunner().invoke(app, ["config", "build", "trigger.kind=ctrl", "trigger.ctrl.window=16",
                                 "trigger.ctrl.positions=[[7,7]]", "storage.chroma=444"])
    assert r.exit_code == 0 and "window: 16  # px" in r.output and "kind: ctrl" in r.output


def test_added_composites_pass_the_manifest_checks_and_edits_do_not(tmp_path):
    from beton_builders.manifest import ManifestError, check_consistency, content_hash

    build(tiny_spec(*CE), tmp_path / "ce", log=quiet)
    m = load_manifest(tmp_path / "ce")  # sealed and consistent, with every clean_index null
    assert m["schema"] == "fastbd.manifest/3" and all(p["clean_index"] is None for p in m["poisoned"])
    edited = json.loads(json.dumps(m))
    edited["rates"][1]["replaced_indices"] = [0]  # an added composite does not replace a clean image
    with pytest.raises(ManifestError, match="count 6, but 6 poisoned and 1 replaced"):
        check_consistency(edited, "manifest.json")
    edited = json.loads(json.dumps(m))
    edited["poisoned"][0]["clean_index"] = 3  # now it claims an original that no rate replaces
    with pytest.raises(ManifestError, match="count 3, but 3 poisoned and 0 replaced"):
        check_consistency(edited, "manifest.json")
    older = json.loads(json.dumps(m))  # a sealed build of schema /2 (patch only) is read as it is
    older["schema"] = "fastbd.manifest/2"
    older["self_sha256"] = content_hash(older)
    (tmp_path / "ce" / "manifest.json").write_text(json.dumps(older))
    assert load_manifest(tmp_path / "ce")["schema"] == "fastbd.manifest/2"
