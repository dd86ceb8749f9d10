"""The dali backend on CPU (device_id=None): shapes, views, determinism, and the shared sample order."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from beton_builders import load_manifest, train_indices
from fastbd.data.base import IMAGENET_MEAN, IMAGENET_STD, Recipe
from fastbd.data.samples import TarSamples, epoch_order

pytest.importorskip("nvidia.dali")
pytestmark = pytest.mark.dali

CPU = torch.device("cpu")
PLAIN = Recipe(scale_min=1.0, scale_max=1.0, jitter_p=0, gray_p=0, blur_p=0, flip=0)


def loader(folder, indices=None, recipes=(Recipe(), Recipe()), batch=8, seed=0, workers=1, **kw):
    from fastbd.data.dali_loader import DaliLoader
    if indices is None:
        indices = np.arange(len(TarSamples(folder, "train")))
    return DaliLoader(folder=folder, indices=indices, recipes=list(recipes), res=32, batch=batch,
                      workers=workers, device=CPU, seed=seed, **kw)


def epoch(ld, e):
    ld.set_epoch(e)
    return list(ld)


def unnormalise(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) normalised -> (N, H, W, 3) in [0, 255]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def test_batches(tiny_build):
    ld = loader(tiny_build)
    labels = TarSamples(tiny_build, "train").label
    batches = list(ld)
    assert len(batches) == len(ld) == 54 // 8
    for b in batches:
        assert len(b.views) == 2
        for v in b.views:
            assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32
            assert v.is_contiguous(memory_format=torch.channels_last)
            assert torch.isfinite(v).all()
        assert b.label.dtype == torch.int64 and b.index.dtype == torch.int64
        assert ((b.label >= 0) & (b.label < 4)).all()
        assert b.label.tolist() == labels[b.index.numpy()].tolist()


def test_views_differ_and_plain_view_is_a_resize(tiny_build):
    b = next(iter(loader(tiny_build, recipes=(Recipe(), Recipe(), PLAIN))))
    assert not torch.allclose(b.views[0], b.views[1])
    samples = TarSamples(tiny_build, "train")
    ref = np.stack([np.asarray(Image.open(io.BytesIO(samples.read(int(i)))).convert("RGB")
                               .resize((32, 32), Image.BILINEAR), np.float32) for i in b.index])
    diff = np.abs(unnormalise(b.views[2]) - ref)
    assert diff.mean() < 1.0 and diff.max() < 8, (diff.mean(), diff.max())  # measured 0.2, 2


def test_determinism(tiny_build):
    first = next(iter(loader(tiny_build, seed=3)))
    again = next(iter(loader(tiny_build, seed=3, workers=2)))  # thread count does not change the result
    other = next(iter(loader(tiny_build, seed=4)))
    assert all(torch.equal(a, b) for a, b in zip(first.views, again.views))
    assert torch.equal(first.index, again.index)
    assert not torch.equal(first.views[0], other.views[0])

    ran = loader(tiny_build, seed=3)
    e0, e1 = epoch(ran, 0), epoch(ran, 1)
    fresh = epoch(loader(tiny_build, seed=3), 1)
    assert len(fresh) == len(e1)
    for a, b in zip(e1, fresh):
        assert torch.equal(a.index, b.index) and torch.equal(a.label, b.label)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    assert not torch.equal(e0[0].index, e1[0].index)  # the order is reshuffled per epoch


def test_order_matches_epoch_order_and_rate_subset(tiny_build):
    m = load_manifest(tiny_build)
    everything = np.arange(len(TarSamples(tiny_build, "train")))
    ld = loader(tiny_build, everything, recipes=(Recipe(),), seed=7)
    got = torch.cat([b.index for b in epoch(ld, 2)]).numpy()
    assert got.tolist() == epoch_order(everything, 7, 2, 0, 1, 8, True, True).tolist()

    idx = train_indices(m, 0.25)
    assert len(idx) < len(everything)
    ld = loader(tiny_build, idx, recipes=(Recipe(),), batch=10, seed=7, drop_last=False)
    batches = epoch(ld, 1)
    got = torch.cat([b.index for b in batches]).numpy()
    assert len(batches) == len(ld) == -(-len(idx) // 10)
    assert [len(b.index) for b in batches][:-1] == [10] * (len(batches) - 1)
    assert all(len(b.views[0]) == len(b.index) for b in batches)
    assert got.tolist() == epoch_order(idx, 7, 1, 0, 1, 10, False, True).tolist()
    assert sorted(got.tolist()) == sorted(idx.tolist())  # every index of the rate, once
    poisoned = {p["index"] for p in m["poisoned"]}
    chosen = set(idx.tolist()) & poisoned
    assert chosen and set(got.tolist()) & poisoned == chosen


def test_ranks_split_the_epoch(tiny_build):
    idx = np.arange(48)
    got = [torch.cat([b.index for b in epoch(loader(tiny_build, idx, recipes=(Recipe(),), rank=r, world=2,
                                                      seed=1), 0)]).numpy() for r in (0, 1)]
    assert not set(got[0]) & set(got[1])
    assert sorted([*got[0], *got[1]]) == list(range(48))


def test_raw_mode(tiny_raw_build):
    b = next(iter(loader(tiny_raw_build, recipes=(PLAIN,), shuffle=False)))
    assert b.index.tolist() == list(range(8)) and b.views[0].shape == (8, 3, 32, 32)
    samples = TarSamples(tiny_raw_build, "train")
    ref = np.stack([np.asarray(Image.fromarray(np.frombuffer(samples.read(i), np.uint8).reshape(48, 48, 3))
                               .resize((32, 32), Image.BILINEAR), np.float32) for i in range(8)])
    assert np.abs(unnormalise(b.views[0]) - ref).max() < 8


def test_missing_dali_names_the_install(monkeypatch):
    import builtins

    from fastbd.data import dali_loader
    real = builtins.__import__

    def no_dali(name, *a, **kw):
        if name.startswith("nvidia.dali"):
            raise ImportError("no dali")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(ImportError, match="nvidia-dali-cuda130==2.4.0"):
        dali_loader._dali()


def test_make_loader_picks_dali(tiny_build):
    from fastbd.data import DataConfig, make_loader
    from fastbd.data.dali_loader import DaliLoader
    cfg = DataConfig(path=str(tiny_build), backend="dali", rate=0.25, res=32, batch_size=8, workers=1)
    ld = make_loader(cfg, ["mocov2", "weak"], device=CPU, seed=0)
    assert isinstance(ld, DaliLoader) and len(ld) == 48 // 8
    b = next(iter(ld))
    assert [v.shape for v in b.views] == [(8, 3, 32, 32)] * 2
