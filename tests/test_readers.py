"""Read the compiled files back with the stock FFCV Loader and a stock DALI reader (CPU)."""

import glob

import numpy as np
import pytest

from beton_builders import load_manifest
from beton_builders.summary import read_tar_sample, to_array

ffcv = pytest.importorskip("ffcv")


def beton_payload(path, i):
    """The encoded bytes FFCV stored for sample i (read through ffcv's own Reader)."""
    from ffcv.reader import Reader

    r = Reader(str(path))
    ptr = r.metadata[i]["f0"]["data_ptr"]
    table = r.alloc_table
    size = int(table["size"][table["ptr"] == ptr][0])
    with open(path, "rb") as f:
        f.seek(int(ptr))
        return f.read(size)


def assert_same_picture(a, b):
    """Same JPEG bytes through two libjpeg-turbo builds: IDCT/upsampling choices differ by a few levels."""
    d = np.abs(a.astype(int) - b.astype(int))
    assert d.mean() < 1.5 and d.max() <= 8, (d.mean(), d.max())


def load_all(path, fields):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    from ffcv.reader import Reader

    # Fields not asked for are switched off (None); FFCV would otherwise decode them all, in file order.
    pipes = {f: ([IntDecoder()] if f in fields else None) for f in Reader(str(path)).field_names}
    pipes["image"] = [SimpleRGBImageDecoder()]
    loader = Loader(str(path), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL, pipelines=pipes,
                    drop_last=False)
    cols = [[] for _ in range(len(fields) + 1)]
    for batch in loader:
        for c, b in zip(cols, batch):
            c.append(np.array(b))
    return [np.concatenate(c) for c in cols]


@pytest.mark.ffcv
def test_ffcv_loader_reads_train_with_manifest_labels_and_flags(tiny_build):
    m = load_manifest(tiny_build)
    imgs, labels, src, poisoned = load_all(tiny_build / "train.beton", ["label", "source_index", "poisoned"])
    assert imgs.shape == (54, 48, 48, 3) and imgs.dtype == np.uint8
    assert poisoned[:, 0].tolist() == [0] * 48 + [1] * 6
    assert src[48:, 0].tolist() == [p["source_index"] for p in m["poisoned"]]
    assert (labels[48:, 0] == 1).all()
    for p in m["poisoned"]:
        # identical encoded bytes in both formats, and the same picture after FFCV's decode
        payload = read_tar_sample(tiny_build, "train", p["index"], 20)
        assert beton_payload(tiny_build / "train.beton", p["index"]) == payload
        assert_same_picture(imgs[p["index"]], to_array(payload))


@pytest.mark.ffcv
def test_ffcv_loader_reads_val_poisoned_with_target_marks(tiny_build):
    m = load_manifest(tiny_build)
    imgs, labels, is_target = load_all(tiny_build / "val_poisoned.beton", ["label", "is_target"])
    assert imgs.shape == (12, 40, 40, 3)
    assert labels[:, 0].tolist() == m["val_poisoned"]["label"]
    assert is_target[:, 0].tolist() == m["val_poisoned"]["is_target"] and is_target.sum() == 3


@pytest.mark.ffcv
def test_ffcv_loader_with_a_rate_index_list(tiny_build):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    from beton_builders import train_indices

    m = load_manifest(tiny_build)
    idx = train_indices(m, 0.25)
    loader = Loader(str(tiny_build / "train.beton"), batch_size=64, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    indices=idx, pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()],
                                            "source_index": None, "poisoned": [IntDecoder()]})
    (_, labels, poisoned), = list(loader)
    assert len(labels) == 48 and int(poisoned.sum()) == 3


@pytest.mark.dali
def test_dali_webdataset_reader_cpu_sees_the_same_pixels(tiny_build):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    m = load_manifest(tiny_build)
    paths = sorted(glob.glob(str(tiny_build / "dali" / "train-*.tar")))

    @pipeline_def(batch_size=54, num_threads=1, device_id=None)
    def pipe():
        jpg, cls, idx = fn.readers.webdataset(paths=paths, ext=["jpg", "cls", "idx"],
                                              dtypes=[types.UINT8, types.INT32, types.INT32],
                                              random_shuffle=False, name="r")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls, idx

    p = pipe()
    p.build()
    imgs, cls, idx = (o.as_array() if hasattr(o, "as_array") else np.stack([np.array(t) for t in o])
                      for o in p.run())
    assert idx[:, 0].tolist() == list(range(54))
    assert (cls[48:, 0] == 1).all()
    ffcv_imgs, = load_all(tiny_build / "train.beton", [])[:1]
    assert imgs.shape == ffcv_imgs.shape
    assert_same_picture(imgs, ffcv_imgs)
    for p_ in m["poisoned"]:
        assert p_["label"] == int(cls[p_["index"], 0])


@pytest.mark.dali
def test_dali_reads_raw_mode_exactly(tiny_raw_build):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    paths = sorted(glob.glob(str(tiny_raw_build / "dali" / "val_poisoned-*.tar")))

    @pipeline_def(batch_size=12, num_threads=1, device_id=None)
    def pipe():
        rgb, shape = fn.readers.webdataset(paths=paths, ext=["rgb", "shape"], dtypes=[types.UINT8, types.INT32])
        return fn.reshape(rgb, shape=shape)

    p = pipe()
    p.build()
    (out,) = p.run()
    dali_imgs = np.stack([np.array(t) for t in out])
    ffcv_imgs, = load_all(tiny_raw_build / "val_poisoned.beton", [])[:1]
    assert (dali_imgs == ffcv_imgs).all()
