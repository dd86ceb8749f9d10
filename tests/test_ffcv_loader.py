"""The ffcv training loader: views cut from one decode, index lists, and (seed, epoch) determinism."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from beton_builders import build, load_manifest, load_spec, train_indices
from fastbd.data.base import IMAGENET_MEAN, IMAGENET_STD, RECIPES, Recipe
from fastbd.data.samples import TarSamples

from conftest import make_imagefolder, quiet

pytest.importorskip("ffcv")
cv2 = pytest.importorskip("cv2")  # comes with ffcv (opencv)
pytestmark = [
    pytest.mark.ffcv,
    # numba dispatchers of ffcv's own decoders fail in their finaliser once a later Loader has flipped
    # `mutable` on numba's interned uint8[::1] type (ffcv OSCacheManager.state_type); harmless noise
    pytest.mark.filterwarnings("ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"),
]

CPU = torch.device("cpu")
# Geometry only, no flip or colour: the views then show exactly what the decoder cut.
PLAIN = Recipe(scale_min=1.0, scale_max=1.0, flip=0, jitter_p=0, gray_p=0, blur_p=0)
SMALL = Recipe(scale_min=0.1, scale_max=0.3, flip=0, jitter_p=0, gray_p=0, blur_p=0)


def make(folder, recipes, indices=None, seed=0, **kw):
    from fastbd.data.ffcv_loader import FfcvLoader

    if indices is None:
        indices = train_indices(load_manifest(folder), 0)
    args = dict(res=32, batch=8, workers=1, device=CPU, seed=seed, drop_last=True, shuffle=True)
    return FfcvLoader(folder=folder, indices=indices, recipes=recipes, **{**args, **kw})


def epoch(loader, e):
    loader.set_epoch(e)
    return list(loader)


def pixels(view):
    """A normalised float view -> uint8-scale (N, H, W, 3) numpy, undoing augment's normalisation."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((view * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def decoded(samples, i):
    return np.asarray(Image.open(io.BytesIO(samples.read(int(i)))).convert("RGB"))


def area_resize(im, res=32):
    return cv2.resize(im, (res, res), interpolation=cv2.INTER_AREA).astype(np.float64)


def resized(samples, i):
    """The sample's stored JPEG, decoded with PIL and area-resized whole, as the decoder's (1, 1) crop."""
    return area_resize(decoded(samples, i))


def same_batches(a, b):
    return len(a) == len(b) and all(
        torch.equal(x.label, y.label) and torch.equal(x.index, y.index)
        and all(torch.equal(u, v) for u, v in zip(x.views, y.views)) for x, y in zip(a, b))


def test_batches_have_every_view_normalised_channels_last(tiny_build):
    loader = make(tiny_build, [RECIPES["mocov2"], RECIPES["byol"]])
    batches = epoch(loader, 0)
    assert len(loader) == len(batches) == 48 // 8
    seen = []
    for b in batches:
        assert len(b.views) == 2
        for v in b.views:
            assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32 and v.device == CPU
            assert v.is_contiguous(memory_format=torch.channels_last)
            assert torch.isfinite(v).all() and v.min() >= -2.2 and v.max() <= 2.7
        assert b.label.dtype == b.index.dtype == torch.int64 and b.label.shape == b.index.shape == (8,)
        assert ((b.label >= 0) & (b.label < 4)).all()
        seen += b.index.tolist()
    assert sorted(seen) == list(range(48))  # a clean epoch visits every clean sample once


def test_views_are_different_crops_of_one_decoded_image(tiny_build):
    samples = TarSamples(tiny_build, "train")
    b = next(iter(make(tiny_build, [PLAIN, SMALL, PLAIN], shuffle=False)))
    assert b.index.tolist() == list(range(8))
    assert torch.equal(b.label, torch.as_tensor(samples.label[:8]))
    assert torch.equal(b.views[0], b.views[2])  # the same decode, the same (whole-image) crop
    assert (b.views[0] - b.views[1]).abs().mean() > 0.05  # a small crop differs from the whole
    got = pixels(b.views[0])
    for k, i in enumerate(b.index):
        d = np.abs(got[k] - resized(samples, i))
        assert d.mean() < 2.0 and d.max() < 24, (int(i), d.mean(), d.max())  # two libjpeg builds


def test_raw_mode_builds(tiny_raw_build):
    samples = TarSamples(tiny_raw_build, "train")
    b = next(iter(make(tiny_raw_build, [PLAIN, SMALL], shuffle=False)))
    got = pixels(b.views[0])
    for k, i in enumerate(b.index):
        im = np.frombuffer(samples.read(int(i)), np.uint8).reshape(48, 48, 3)
        assert np.abs(got[k] - area_resize(im)).max() < 1.01  # the same pixels, the same resize
    assert (b.views[0] - b.views[1]).abs().mean() > 0.05


def test_same_seed_same_batches_and_resume_repeats_an_epoch(tiny_build):
    recipes = [RECIPES["mocov2"], RECIPES["mocov2"]]
    a = make(tiny_build, recipes, seed=3)
    a0, a1 = epoch(a, 0), epoch(a, 1)
    b = make(tiny_build, recipes, seed=3)
    assert same_batches(epoch(b, 1), a1)  # a run resumed at epoch 1 sees what an unbroken run saw
    assert same_batches(epoch(b, 0), a0)
    assert not torch.equal(a0[0].index, a1[0].index)  # a new order each epoch
    c = make(tiny_build, recipes, seed=4)
    assert not same_batches(epoch(c, 0)[:1], a0[:1])


def test_batches_do_not_depend_on_the_thread_count(tiny_build):
    # crops are seeded per sample, so which numba thread decodes a sample does not matter
    one = epoch(make(tiny_build, [RECIPES["mocov2"]] * 2, workers=1), 2)
    two = epoch(make(tiny_build, [RECIPES["mocov2"]] * 2, workers=2), 2)
    assert same_batches(one, two)


def test_crops_depend_on_the_epoch_even_in_sequential_order(tiny_build):
    loader = make(tiny_build, [SMALL], shuffle=False)
    e0, e1, again = epoch(loader, 0), epoch(loader, 1), epoch(loader, 0)
    assert all(torch.equal(x.index, y.index) for x, y in zip(e0, e1))
    assert not torch.equal(e0[0].views[0], e1[0].views[0])
    assert same_batches(e0, again)


def test_a_rates_index_list_restricts_the_samples(tiny_build):
    m = load_manifest(tiny_build)
    n_clean, entry = m["counts"]["train_clean"], next(e for e in m["rates"] if e["rate"] == 0.25)
    indices = train_indices(m, 0.25)
    loader = make(tiny_build, [RECIPES["mocov2"]], indices=indices, drop_last=False)
    batches = epoch(loader, 0)
    assert len(loader) == len(batches) == -(-len(indices) // 8)
    index = torch.cat([b.index for b in batches]).numpy()
    label = torch.cat([b.label for b in batches]).numpy()
    assert sorted(index) == sorted(indices)
    assert (index >= n_clean).sum() == len(entry["poisoned_indices"]) > 0
    assert not set(entry["replaced_indices"]) & set(index.tolist())
    assert (label == TarSamples(tiny_build, "train").label[index]).all()


def test_images_of_several_sizes(tmp_path):
    root = make_imagefolder(tmp_path / "src", classes=("a_cls", "b_cls"), n_train=4, n_val=1, size=(64, 48))
    make_imagefolder(root, classes=("c_cls",), n_train=4, n_val=1, size=(40, 50))
    spec = load_spec(None, [f"source.root={root}", "source.kind=imagefolder", "trigger.width=12",
                            "attack.target=b_cls", "attack.rates=[0.5]", "storage.val_resize=48",
                            "storage.val_crop=40", "workers=1"])
    build(spec, tmp_path / "out", log=quiet)
    samples = TarSamples(tmp_path / "out", "train")
    loader = make(tmp_path / "out", [PLAIN, SMALL], indices=np.arange(12), drop_last=False)
    for b in epoch(loader, 0):
        got = pixels(b.views[0])
        for k, i in enumerate(b.index):
            im = decoded(samples, i)
            h, w, _ = im.shape
            # a (1, 1)-scale crop is the whole image, up to the rounding of its sides (as torchvision's):
            # e.g. 63 x 48 of a 64 x 48 image when the drawn aspect ratio is just below 4/3
            d = min(np.abs(got[k] - area_resize(im[y:y + ch, x:x + cw])).mean()
                    for ch in (h - 1, h) for cw in (w - 1, w) for y in range(h - ch + 1) for x in range(w - cw + 1))
            assert d < 2.0, (int(i), im.shape, d)


@pytest.mark.timeout(60)  # the failure this guards against is a hang
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failure_in_ffcvs_thread_raises_instead_of_hanging(tiny_build):
    loader = make(tiny_build, [PLAIN])
    _, outputs = loader.loader.code

    def broken(**_):
        raise ZeroDivisionError("a decoder bug")

    loader.loader.code = ([(broken, ())], outputs)
    with pytest.raises(RuntimeError, match="loading thread stopped"):
        next(iter(loader))
