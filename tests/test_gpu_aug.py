"""Device augmentation: the exact path follows torchvision, the linear path equals it where nothing clips;
neither reads the device nor copies constants to it per batch; the compiled stages match eager ones."""

from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from torchvision.transforms import functional as TF

from fastbd.data import gpu_aug as G
from fastbd.data.base import RECIPES, Recipe

from conftest import no_host_sync


def _batch(lo=0.3, hi=0.6, n=16, res=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, res, res, generator=g) * (hi - lo) + lo).mul(255).round().to(torch.uint8)


def test_exact_hue_shift_is_torchvisions():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for h in (0.07, -0.1):
        ours = G.hsv_to_rgb(G._shift_hue(G.rgb_to_hsv(x), torch.full((4, 1, 1), h)))
        assert torch.allclose(ours, TF.adjust_hue(x, h), atol=1e-5)


def test_linear_equals_exact_without_hue_where_nothing_clips():
    # brightness, contrast, saturation and grayscale are linear: without clipping (mid-grey inputs, mild
    # factors) the one-matrix path must give the exact path's pixels, with the same random draws
    r = replace(RECIPES["mocov2"], brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, blur_p=0.5)
    x = _batch()
    a = G.augment(x, r, torch.Generator().manual_seed(5), impl="exact")
    b = G.augment(x, r, torch.Generator().manual_seed(5), impl="linear")
    assert torch.allclose(a, b, atol=1e-4)


def test_linear_hue_rotation_keeps_grey_and_luma_and_turns_like_hsv():
    m = G._hue_matrix(torch.tensor([0.1, -0.25, 0.5]))
    grey = torch.full((3, 3, 1, 1), 0.4)
    assert torch.allclose(torch.einsum("nij,njhw->nihw", m, grey), grey, atol=1e-5)
    luma = torch.tensor(G._GREY)
    assert torch.allclose(luma @ m, luma.expand(3, 3), atol=1e-5)  # the grey level of any colour is kept
    red = torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1)
    shifted = torch.einsum("nij,njhw->nihw", G._hue_matrix(torch.tensor([1 / 6])), red)
    assert shifted[0, 1] > shifted[0, 2]  # red turns towards yellow (green up), as HSV hue does


def test_linear_is_close_to_exact_on_the_full_recipe():
    x = _batch(0.1, 0.9, n=64)
    for name in ("mocov2", "byol", "simclr"):
        a = G.augment(x, RECIPES[name], torch.Generator().manual_seed(3), impl="exact")
        b = G.augment(x, RECIPES[name], torch.Generator().manual_seed(3), impl="linear")
        other = G.augment(x, RECIPES[name], torch.Generator().manual_seed(4), impl="exact")
        # an approximation, small next to how much two draws of the augmentation itself differ
        assert (a - b).abs().mean() < 0.25 * (a - other).abs().mean(), name


def test_each_impl_is_deterministic_and_rejects_unknown_names():
    x = _batch()
    for impl in G.IMPLS:
        a = G.augment(x, RECIPES["mocov2"], torch.Generator().manual_seed(9), impl=impl)
        b = G.augment(x, RECIPES["mocov2"], torch.Generator().manual_seed(9), impl=impl)
        assert torch.equal(a, b)
        assert a.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="aug_impl"):
        G.augment(x, Recipe(), torch.Generator(), impl="fast")


def test_auto_picks_exact_on_gpus_and_linear_on_the_cpu():
    from fastbd.data import aug_impl

    assert aug_impl("auto", torch.device("cpu")) == "linear"
    assert aug_impl("auto", torch.device("cuda", 0)) == "exact"
    assert aug_impl("exact", torch.device("cpu")) == "exact"
    with pytest.raises(ValueError, match="data.aug_impl"):
        aug_impl("hsv", torch.device("cpu"))


@contextmanager
def no_constants_to_device():
    """torch.tensor / as_tensor from host data raise inside: on a GPU each is a blocking copy that waits for
    the device's queue. (The module's constants are made once, on first use, outside this.)"""
    saved = torch.tensor, torch.as_tensor

    def trap(*args, **kwargs):
        raise AssertionError("a host-to-device copy inside the augmentation")

    torch.tensor = torch.as_tensor = trap
    try:
        yield
    finally:
        torch.tensor, torch.as_tensor = saved


def test_augmentation_never_reads_the_device():
    """No .item()/.tolist()/bool() of a tensor (the jitter order is drawn on the host, the blur radius is the
    recipe's bound) and no constant copied from the host per batch, on both implementations."""
    x = _batch(0.1, 0.9)
    recipes = [RECIPES["mocov2"], RECIPES["byol_b"]]  # blur, jitter, grey; solarize
    for impl in G.IMPLS:
        G.augment_views([x, x], recipes, torch.device("cpu"), 0, 0, 0, impl)  # first use makes the constants
        with no_host_sync(), no_constants_to_device():
            out = G.augment_views([x, x], recipes, torch.device("cpu"), 0, 0, 1, impl)
        assert all(v.shape == x.shape and torch.isfinite(v).all() for v in out)


def test_augment_views_is_a_pure_function_of_seed_epoch_and_step():
    x = _batch(0.1, 0.9)
    recipes = [RECIPES["mocov2"]] * 2
    cpu = torch.device("cpu")
    a = G.augment_views([x, x], recipes, cpu, 1, 2, 3)
    assert all(torch.equal(u, v) for u, v in zip(a, G.augment_views([x, x], recipes, cpu, 1, 2, 3)))
    assert not torch.equal(a[0], a[1])  # the views draw in turn from one step's generators
    for other in ((0, 2, 3), (1, 1, 3), (1, 2, 4)):
        assert not torch.equal(a[0], G.augment_views([x, x], recipes, cpu, *other)[0]), other


def test_the_blur_radius_is_the_recipes_bound():
    """A training step passes the radius (3 x the recipe's largest sigma); a wider kernel than the batch needs
    changes the result only by the Gaussian's far tail."""
    x = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 0.8, 1.2, 1.6])
    wide, tight = G.gaussian_blur(x, sigma, radius=6), G.gaussian_blur(x, sigma)
    assert torch.allclose(wide, tight, atol=2e-3)
    assert not torch.allclose(wide, x, atol=1e-2)


@pytest.mark.slow
def test_compiled_augmentation_matches_eager():
    """data.compile_aug: each pixel stage through torch.compile gives eager's pixels to float rounding."""
    x = _batch(0.1, 0.9, n=8)
    recipes = [RECIPES["mocov2"], RECIPES["byol_b"]]
    for impl in G.IMPLS:
        eager = G.augment_views([x, x], recipes, torch.device("cpu"), 0, 0, 0, impl)
        comp = G.augment_views([x, x], recipes, torch.device("cpu"), 0, 0, 0, impl, compiled=True)
        for a, b in zip(eager, comp):
            assert b.is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(a, b, atol=1e-4), (impl, (a - b).abs().max())
