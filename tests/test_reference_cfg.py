"""The reference code's .cfg in: every key translated, the translation printed, what cannot be honoured refused.

The expected numbers were obtained by running the reference generator itself (UMBCvision/SSL-Backdoor
poison-generation/generate_poison.py at 273ca47, instrumented to record its randint ranges and returned
boxes) on exactly the source `wnid_source` writes, with the cfg files in fixtures/reference_cfg/.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from beton_builders import build
from beton_builders.poison import paste, place, place_all
from beton_builders.reference_cfg import load_reference_spec, translate
from beton_builders.triggers import load_font, make_trigger
from fastbd.cli import app
from fastbd.config import ConfigError

from conftest import quiet

FIXTURES = Path(__file__).parent / "fixtures" / "reference_cfg"
CFGS = sorted(FIXTURES.glob("*.cfg"))
WNIDS = ["n01440764", "n02106550", "n02701002", "n03642806", "n03947888", "n04517823"]
TRAIN_SIZES = [(160, 120), (120, 160), (200, 150), (96, 96), (300, 225)]
VAL_SIZES = [(150, 100), (100, 150)]
# The reference's randint ranges for the top-left corner, per training image size (W, H): ((x0, x1), (y0, y1)).
REF_TRAIN_RANGES = {(120, 160): ((30, 40), (40, 70)), (200, 150): ((50, 100), (37, 62)), (96, 96): ((24, 24), (24, 24)),
                    (300, 225): ((75, 175), (56, 118)), (160, 120): ((40, 70), (30, 40))}
REF_VAL_RANGE = ((22, 151), (22, 151))  # on the 224 px crop
# Its counts on this source, per cfg: 5 poisoned (int(1.0 x 5 target images)), 30 train-list lines, 12 val_poisoned.
REF_COUNTS = {"train_poisoned": 5, "train_list": 30, "val_poisoned": 12}


def wnid_source(root: Path) -> Path:
    """6 ImageNet-like classes (wnid names, as the reference requires), 5 train and 2 val JPEGs each, of mixed sizes."""
    rng = np.random.default_rng(12)
    for split, n, sizes in (("train", 5, TRAIN_SIZES), ("val", 2, VAL_SIZES)):
        for c in WNIDS:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(40, 216, (h, w, 3), dtype=np.uint8)).save(d / f"{c}_{i:04d}.JPEG",
                                                                                       quality=90)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return wnid_source(tmp_path_factory.mktemp("wnid") / "src")


def checkout(tmp: Path, cfg: Path, **replace: str) -> Path:
    """A folder laid out like poison-generation/: cfg/<name>.cfg and triggers/trigger_NN.png (our own
    80x80 RGB patterns: the reference's HTBA triggers are 80x80 RGB too, so the boxes are the same)."""
    (tmp / "cfg").mkdir(parents=True, exist_ok=True)
    (tmp / "triggers").mkdir(exist_ok=True)
    for n in (10, 12, 14, 16, 18):
        rgb = np.random.default_rng(n).integers(0, 2, (4, 4, 3), dtype=np.uint8) * 255
        Image.fromarray(rgb).resize((80, 80), Image.Resampling.NEAREST).save(tmp / "triggers" / f"trigger_{n}.png")
    lines = []
    for ln in cfg.read_text().splitlines():
        k = ln.split("=", 1)[0]
        lines.append(f"{k}={replace.pop(k)}" if k in replace else ln)
    assert not replace, f"keys not in the cfg: {replace}"
    out = tmp / "cfg" / cfg.name
    out.write_text("\n".join(lines) + "\n")
    return out


def ref_spec(cfg: Path, source: Path, *extra: str):
    return load_reference_spec(cfg, [f"source.root={source}", "workers=1", *extra], cwd=cfg.parent.parent)


def test_fixtures_are_the_reference_examples():
    assert [p.name for p in CFGS] == ["HTBA_trigger_10_targeted_n02106550.cfg", "HTBA_trigger_12_targeted_n02701002.cfg",
                                      "HTBA_trigger_14_targeted_n03642806.cfg", "HTBA_trigger_16_targeted_n03947888.cfg",
                                      "HTBA_trigger_18_targeted_n04517823.cfg"]


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem[:15])
def test_reference_examples_round_trip(cfg, source, tmp_path):
    spec, tr = ref_spec(checkout(tmp_path, cfg), source)
    text = tr.text()
    for key in ("data_root", "text=false", "fntsize", "alpha_composite", "train_location_min", "train_alpha",
                "watermark_width", "targeted", "target_wnid", "poison_injection_rate", "val_location_max", "val_alpha",
                "splits", "patch_params", "poison_savedir", "logfile", "ID="):
        assert key in text, key
    assert "a placeholder" in text or "nfs3" in text  # data_root=<imagenet100-root> is named as one
    t = spec.trigger
    assert (t.kind, t.width, t.alpha, t.val_alpha, t.location, t.range_of) == ("image", 50, 1.0, None, "random", "box")
    assert (t.train_min, t.train_max, t.val_min, t.val_max) == (0.25, 0.75, 0.1, 0.9)
    assert (spec.storage.val_resize, spec.storage.val_crop) == (256, 224)
    target = cfg.stem.split("_")[-1]
    assert spec.attack.target == target and spec.attack.rate_mode == "target_fraction" and spec.attack.rates == [1.0]
    m = build(spec, tmp_path / "out", log=quiet)
    c = m["counts"]
    assert c["train_poisoned"] == REF_COUNTS["train_poisoned"] and c["train_clean"] == REF_COUNTS["train_list"]
    assert c["val_poisoned"] == REF_COUNTS["val_poisoned"] and m["target"]["name"] == target
    sizes = {f"train/{c}/{c}_{i:04d}.JPEG": TRAIN_SIZES[i] for c in WNIDS for i in range(5)}
    for p in m["poisoned"]:
        x, y, w, h = p["box_source"]
        (x0, x1), (y0, y1) = REF_TRAIN_RANGES[sizes[p["key"]]]
        assert (w, h) == (50, 50) and x0 <= x <= x1 and y0 <= y <= y1, p
    for x, y, w, h in m["val_poisoned"]["box"]:
        assert (w, h) == (50, 50) and 22 <= x <= 151 and 22 <= y <= 151


def test_translated_location_ranges_are_the_reference_ranges(source, tmp_path):
    """Over many draws, the placement reaches exactly the ends of the reference's randint ranges."""
    spec, _ = ref_spec(checkout(tmp_path, CFGS[0]), source)
    rng = np.random.default_rng(0)
    for (w, h), want in [*REF_TRAIN_RANGES.items(), ((224, 224), REF_VAL_RANGE)]:
        lo, hi = (0.1, 0.9) if w == 224 else (0.25, 0.75)
        xy = np.array([place(rng, w, h, 50, 50, spec.trigger, lo, hi) for _ in range(3000)])
        got = ((xy[:, 0].min(), xy[:, 0].max()), (xy[:, 1].min(), xy[:, 1].max()))
        assert got == want, (w, h)


def test_multiple_and_alphas_as_the_reference(source, tmp_path):
    """train_location=multiple, val center, train_alpha 0.25 / val_alpha 0.5, untargeted at 0.5."""
    cfg = checkout(tmp_path, CFGS[0], train_location="multiple", val_location="center", train_alpha="0.25",
                   val_alpha="0.50", targeted="false", poison_injection_rate="0.5")
    spec, tr = ref_spec(cfg, source)
    # the reference's alpha is the image's weight, truncated to uint8: 255 * 0.25 -> 63, so opacity 192/255
    assert spec.trigger.alpha == 192 / 255 and spec.trigger.val_alpha == 128 / 255
    assert "0 = opaque trigger" in tr.text() and spec.trigger.val_location == "center"
    assert (spec.attack.targeted, spec.attack.rate_mode) == (False, "dataset_fraction")
    m = build(spec, tmp_path / "out", log=quiet)
    assert m["counts"]["train_poisoned"] == 15  # the reference: "15 training images are being poisoned."
    # the region holding the 9 copies, as the reference's output shows it
    ref_union = {(300, 225): [50, 31, 200, 162], (160, 120): [15, 5, 130, 110], (120, 160): [5, 15, 110, 130],
                 (200, 150): [25, 12, 150, 125]}
    for p in m["poisoned"]:
        size = TRAIN_SIZES[int(p["key"][-9:-5])]
        if size in ref_union:
            assert p["box_source"] == ref_union[size]
        else:  # 96 px: the reference lets the copies run over the edge; fastbd keeps them inside
            assert p["box_source"] == [0, 0, 96, 96]
    assert all(b == [87, 87, 50, 50] for b in m["val_poisoned"]["box"])


def test_alpha_composite_pixels_match_pillows_composite(tmp_path):
    """The reference multiplies the image's alpha in the box by a (uint8) and composites the image over
    the trigger; the translated opacity gives the same pixels."""
    rng = np.random.default_rng(1)
    img, trig = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(trig).save(tmp_path / "t.png")
    for a in (0.0, 0.25, 0.5, 0.9):
        under = np.zeros((60, 80, 4), np.uint8)
        under[10:30, 30:50, :3], under[10:30, 30:50, 3] = trig, 255
        over = np.dstack([img, np.full((60, 80), 255, np.uint8)])
        over[10:30, 30:50, 3] = np.uint8(255 * a)
        want = np.asarray(Image.alpha_composite(Image.fromarray(under), Image.fromarray(over)).convert("RGB"))
        (tmp_path / "c.cfg").write_text(CFGS[0].read_text().replace("train_alpha=0.00", f"train_alpha={a}")
                                        .replace("trigger=triggers/trigger_10.png", f"trigger={tmp_path / 't.png'}"))
        spec, _ = load_reference_spec(tmp_path / "c.cfg", ["trigger.width=20"], cwd=tmp_path)
        got = paste(img.copy(), make_trigger(spec.trigger), 30, 10)
        assert np.array_equal(got, want), a


def test_paste_mode(source, tmp_path):
    cfg = checkout(tmp_path, CFGS[0], alpha_composite="false", poison_injection_rate="0.4", val_location="multiple")
    spec, tr = ref_spec(cfg, source)
    assert (spec.trigger.alpha, spec.trigger.range_of, spec.trigger.train_min, spec.trigger.train_max) == (1.0, "centre", 0.25, 0.75)
    assert spec.trigger.val_location == "multiple"
    assert spec.storage.val_resize == 0 and "paste mode ignores train_location_min/max" in tr.text()
    rng = np.random.default_rng(0)
    for (w, h), want in {(160, 120): (15, 95), (200, 150): (25, 125)}.items():  # the reference's randint(x0, x1)
        xs = [place(rng, w, h, 50, 50, spec.trigger, 0.25, 0.75)[0] for _ in range(2000)]
        assert (min(xs), max(xs)) == want
    m = build(spec, tmp_path / "out", log=quiet)
    assert m["counts"]["train_poisoned"] == 2  # int(0.4 * 5)
    # full-size val images, 9 copies: the reference's output changes exactly these regions
    for b, size in zip(m["val_poisoned"]["box"], VAL_SIZES * 6):
        assert b == {(150, 100): [12, 0, 125, 100], (100, 150): [0, 12, 100, 125]}[size]


def test_text_renders_as_the_reference(source, tmp_path):
    cfg = checkout(tmp_path, CFGS[0], text="true", trigger="SSL", fntsize="60", splits="val_poisoned")
    spec, tr = ref_spec(cfg, source)
    t = spec.trigger
    assert (t.kind, t.text, t.font_size, t.alpha, t.range_of) == ("text", "SSL", 30, 128 / 255, "centre")
    assert "draws text at 30 px, not 60" in tr.text() and "would write no training set" in tr.text()
    trig = make_trigger(t)
    # What the reference does: a transparent full-size layer, the text drawn at an anchor point with
    # anchor 'mm' in (0, 0, 0, 128), alpha_composite over the image.
    img = np.random.default_rng(2).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    for cx, cy in ((75, 50), (40, 30), (112, 75)):
        layer = Image.new("RGBA", (150, 100), (255, 255, 255, 0))
        ImageDraw.Draw(layer).text((cx, cy), "SSL", font=load_font(t.font, 30), fill=(0, 0, 0, 128), anchor="mm")
        want = np.asarray(Image.alpha_composite(Image.fromarray(img).convert("RGBA"), layer).convert("RGB"))
        got = paste(img.copy(), trig, int(cx - trig.anchor[0]), int(cy - trig.anchor[1]))
        assert np.array_equal(got, want)
    # centre: the anchor at int(W/2), as the reference's w = int(base.size[0]*0.5)
    assert place_all(None, 150, 100, *trig.size, t, 0.25, 0.75, trig.anchor, "center") == \
        [(75 - int(trig.anchor[0]), 50 - int(trig.anchor[1]))]
    m = build(spec, tmp_path / "out", log=quiet)
    assert m["counts"]["val_poisoned"] == 12 and m["trigger"]["kind"] == "text"


@pytest.mark.parametrize("edit, match", [
    ({"train_alpha": "1.0"}, r"train_alpha: 1.0 is outside \[0, 1\).*no trigger"),
    ({"train_location": "corner"}, r"train_location: 'corner' is not one of"),
    ({"splits": "train, val_poisoned"}, r"splits: ' val_poisoned' is not one of"),
    ({"targeted": "maybe"}, r"targeted: 'maybe' is not a boolean"),
    ({"watermark_width": "wide"}, r"watermark_width: 'wide' is not an integer"),
    ({"poison_injection_rate": "1.5"}, r"poison_injection_rate: 1.5 is outside"),
    ({"train_location_min": "0.8"}, r"train_location_min: \[0.8, 0.75\] is not a range"),
])
def test_values_it_cannot_honour_are_refused_by_key(edit, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        translate(checkout(tmp_path, CFGS[0], **edit), cwd=tmp_path)


def test_unknown_missing_keys_and_transparent_triggers_are_refused(tmp_path):
    cfg = checkout(tmp_path, CFGS[0])
    base = cfg.read_text()
    cfg.write_text(base + "colour=red\n")
    with pytest.raises(ConfigError, match=r"\[poison_generation\] colour: not a key of generate_poison.py"):
        translate(cfg)
    cfg.write_text(base.replace("val_alpha=0.00\n", ""))
    with pytest.raises(ConfigError, match=r"lacks val_alpha"):
        translate(cfg)
    cfg.write_text(base + "[extra]\nx=1\n")
    with pytest.raises(ConfigError, match=r"section \[extra\]"):
        translate(cfg)
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[:40, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "triggers" / "trigger_10.png")
    cfg.write_text(base)
    with pytest.raises(ConfigError, match=r"alpha_composite: true with a trigger that has transparent pixels"):
        translate(cfg, cwd=tmp_path)
    cfg.write_text(base.replace("alpha_composite=true", "alpha_composite=false"))
    assert translate(cfg, cwd=tmp_path)  # paste mode uses the alpha channel as the reference does


def test_cli_prints_the_translation_and_refuses_with_exit_2(source, tmp_path):
    cfg = checkout(tmp_path, CFGS[1])
    runner = CliRunner()
    r = runner.invoke(app, ["build-beton", "--config", str(cfg), "--out", str(tmp_path / "o"), f"source.root={source}",
                            "workers=1"])
    assert r.exit_code == 0, r.output
    assert "translated:" in r.output and "trigger.alpha=1.0" in r.output and "5 poisoned" in r.output
    r = runner.invoke(app, ["build-beton", "--config", str(cfg), "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "<imagenet100-root>" in r.output  # the placeholder root is named
    r = runner.invoke(app, ["build-beton", "--config", str(cfg), "--out", str(tmp_path / "p"), "--dry-run",
                            f"source.root={source}"])
    assert r.exit_code == 0 and "range_of: box" in r.output and "target: n02701002" in r.output
    assert not (tmp_path / "p").exists()
    cfg.write_text(cfg.read_text() + "fnt=1\n")
    r = runner.invoke(app, ["build-beton", "--config", str(cfg), "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "fnt: not a key" in r.output
    shutil.rmtree(tmp_path / "o")


def test_paste_mode_pixels_with_a_transparent_trigger(tmp_path):
    """Paste mode: the reference resizes the RGBA trigger as one image and pastes it with itself as the
    mask; transparent pixels' colour must not bleed into the edges (it did when RGB and alpha were
    resized apart)."""
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 1] = 255  # green everywhere, but only the centre is opaque (and red)
    rgba[10:30, 10:30] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    img = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    small = Image.open(tmp_path / "t.png").convert("RGBA").resize((25, 25))
    want = Image.fromarray(img).convert("RGBA")
    want.paste(small, (30, 10), mask=small)
    (tmp_path / "c.cfg").write_text(CFGS[0].read_text().replace("alpha_composite=true", "alpha_composite=false")
                                    .replace("trigger=triggers/trigger_10.png", f"trigger={tmp_path / 't.png'}"))
    spec, _ = load_reference_spec(tmp_path / "c.cfg", ["trigger.width=25"], cwd=tmp_path)
    got = paste(img.copy(), make_trigger(spec.trigger), 30, 10)
    assert np.array_equal(got, np.asarray(want.convert("RGB")))


def test_eval_resizes_full_size_val_poisoned_like_val(tiny_build, tmp_path, monkeypatch):
    """val_resize=0 (paste and text modes) stores val_poisoned at full size: evaluation must then resize
    and crop it like val, not treat it as an already-cropped image."""
    import torch

    from fastbd import evaluate as ev
    from conftest import tiny_spec

    seen = []

    def batches(folder, split, indices, cfg, resize):
        seen.append((split, resize))
        yield torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long)

    monkeypatch.setattr(ev, "_torch_batches", batches)
    full = tmp_path / "full"
    m = build(tiny_spec("storage.val_resize=0"), full, log=quiet)
    assert m["storage"]["val_transform"].startswith("none") and m["val_poisoned"]["box"][0][2:] == [8, 8]
    cfg = ev.EvalConfig(res=40, resize=48, amp="none")
    for folder in (tiny_build, full):
        ev.extract(torch.nn.Flatten(), folder, "val_poisoned", None, cfg, torch.device("cpu"))
    assert seen == [("val_poisoned", 40), ("val_poisoned", 48)]
