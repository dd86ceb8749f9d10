"""Decoding integrity: skipped files recorded reproducibly, 16-bit images scaled, EXIF orientation on request."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageOps

from beton_builders import BuildError, build, load_spec
from beton_builders.pixels import to_rgb
from beton_builders.triggers import make_trigger

from conftest import make_imagefolder, quiet

FOLDER = ["source.kind=imagefolder", "trigger.width=12", "attack.target=b_cls", "attack.rates=[0.5]",
          "storage.val_resize=48", "storage.val_crop=40", "workers=2"]


def spec_for(root, *extra):
    return load_spec(None, [f"source.root={root}", *FOLDER, *extra])


def stored(folder, split: str, index: int) -> np.ndarray:
    with tarfile.open(folder / "dali" / f"{split}-00000.tar") as tf:
        data = tf.extractfile(f"{index:08d}.rgb").read()
        shape = np.frombuffer(tf.extractfile(f"{index:08d}.shape").read(), "<i4")
    return np.frombuffer(data, np.uint8).reshape(shape)


def test_skipped_files_leave_a_byte_identical_manifest(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    (root / "train" / "c_cls" / "notanimage.jpg").write_bytes(b"hello")
    (root / "val" / "a_cls" / "empty.png").write_bytes(b"")
    m1 = build(spec_for(root, "storage.on_error=skip"), tmp_path / "o1", log=quiet)
    m2 = build(spec_for(root, "storage.on_error=skip", "workers=1"), tmp_path / "o2", log=quiet)
    errors = [s["error"] for s in m1["skipped"]]
    assert errors == ["UnidentifiedImageError: cannot identify image file"] * 2
    assert all("0x" not in e and "BytesIO" not in e for e in errors)  # was "<_io.BytesIO object at 0x7f...>"
    assert (tmp_path / "o1" / "manifest.json").read_bytes() == (tmp_path / "o2" / "manifest.json").read_bytes()
    assert m2["skipped"] == m1["skipped"]


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))  # black to white, left to right
    Image.fromarray(ramp).save(root / "train" / "a_cls" / "zz_grey16.png")
    assert Image.open(root / "train" / "a_cls" / "zz_grey16.png").mode == "I;16"
    m = build(spec_for(root, "storage.write_mode=raw"), tmp_path / "o", log=quiet)
    # a_cls sorts first: its images are indices 0..6, and zz_grey16.png is the last of them
    px = stored(tmp_path / "o", "train", 6)
    want = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(px[..., 0], want) and np.array_equal(px[..., 0], px[..., 2])
    assert (px == 255).mean() < 0.05  # Pillow's convert('RGB') clipped ~98% of it to white
    assert m["counts"]["train_clean"] == 19


def test_unscalable_modes_are_refused_naming_the_file(tmp_path):
    assert np.asarray(to_rgb(Image.fromarray(np.full((4, 4), 300, np.int32), "I")))[0, 0, 0] == 1  # 300/257
    with pytest.raises(ValueError, match=r"floating-point image with values in \[0, 1000\]"):
        to_rgb(Image.fromarray(np.linspace(0, 1000, 16, dtype=np.float32).reshape(4, 4), "F"))
    with pytest.raises(ValueError, match="32-bit integer image"):
        to_rgb(Image.fromarray(np.full((4, 4), -5, np.int32), "I"))
    root = make_imagefolder(tmp_path / "src")
    Image.fromarray(np.full((48, 64), 7e4, np.float32), "F").save(root / "train" / "c_cls" / "float.tif")
    with pytest.raises(BuildError, match=r"train/c_cls/float.tif: ValueError: floating-point image"):
        build(spec_for(root), tmp_path / "o", log=quiet)


def test_16_bit_trigger_is_scaled(tmp_path):
    Image.fromarray(np.full((10, 20), 65535, np.uint16)).save(tmp_path / "t16.png")
    t = make_trigger(load_spec(None, ["trigger.kind=image", f"trigger.path={tmp_path / 't16.png'}",
                                      "trigger.width=20"]).trigger)
    assert t.rgb.min() == 255
    Image.fromarray(np.full((10, 20), 4096, np.uint16)).save(tmp_path / "t16.png")
    t = make_trigger(load_spec(None, ["trigger.kind=image", f"trigger.path={tmp_path / 't16.png'}",
                                      "trigger.width=20"]).trigger)
    assert t.rgb.max() == 16  # 4096 * 255 / 65535, not 255


def test_exif_orientation_ignored_by_default_applied_on_request(tmp_path):
    root = make_imagefolder(tmp_path / "src")
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:, :32] = (250, 10, 10)  # left half red: after a 90-degree turn it is the top or bottom half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif)
    (root / "train" / "a_cls" / "zz_rotated.jpg").write_bytes(buf.getvalue())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    assert upright.shape == (64, 48, 3)
    for on, want_shape in ((False, (48, 64, 3)), (True, (64, 48, 3))):
        for reencode in ("always", "if_needed"):
            out = tmp_path / f"o_{on}_{reencode}"
            extra = ["storage.write_mode=raw"] if reencode == "always" else [f"storage.reencode={reencode}"]
            m = build(spec_for(root, f"storage.exif_transpose={str(on).lower()}", *extra), out, log=quiet)
            if reencode == "always":
                px = stored(out, "train", 6)
                assert px.shape == want_shape
                if on:
                    assert np.abs(px.astype(int) - upright.astype(int)).max() <= 2
            else:
                with tarfile.open(out / "dali" / "train-00000.tar") as tf:
                    im = Image.open(io.BytesIO(tf.extractfile("00000006.jpg").read()))
                    assert im.size == want_shape[1::-1]
                # a rotated source is never copied byte for byte when the rotation is to be applied
                assert m["counts"]["passthrough"] == (19 if not on else 18)
