import io
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP, as importing fastbd does (README "CPU threads")
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from beton_builders import build, load_spec

# A tiny, fast set: 4 classes of 48-px images, an 8-px trigger, target class 1.
TINY = [
    "name=tiny",
    "source.synthetic.num_classes=4",
    "source.synthetic.train_per_class=12",
    "source.synthetic.val_per_class=3",
    "source.synthetic.width=48",
    "source.synthetic.height=48",
    "trigger.width=8",
    "attack.target=1",
    "attack.rates=[0.25,0.5]",
    "storage.max_resolution=48",
    "storage.val_resize=48",
    "storage.val_crop=40",
    "storage.shard_size=20",
]


def tiny_spec(*extra: str, workers: int = 2):
    return load_spec(None, [*TINY, f"workers={workers}", *extra])


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "tiny"
    build(tiny_spec(), out, log=quiet)
    return out


@pytest.fixture(scope="session")
def tiny_raw_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "tiny_raw"
    build(tiny_spec("storage.write_mode=raw"), out, log=quiet)
    return out


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def make_imagefolder(root: Path, classes=("a_cls", "b_cls", "c_cls"), n_train=6, n_val=2, size=(64, 48)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                (d / f"img{i:03d}.jpg").write_bytes(jpeg_bytes(arr, quality=90))
    return root


HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def no_host_sync():
    """Inside, every Python-level read of a tensor's value on the host raises: .item(), .tolist(), .cpu(),
    .numpy(), and bool()/float()/int() of a tensor (an `if` on one). On a GPU each of those waits for it."""
    def trap(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"host sync inside a training step: Tensor.{name}")
        return read

    saved = {n: torch.Tensor.__dict__.get(n) for n in HOST_READS}
    try:
        for n in HOST_READS:
            setattr(torch.Tensor, n, trap(n))
        yield
    finally:
        for n, old in saved.items():
            if old is None:
                delattr(torch.Tensor, n)
            else:
                setattr(torch.Tensor, n, old)
