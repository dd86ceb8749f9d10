"""Device augmentation: the exact path follows torchvision, the linear path equals it where nothing clips."""

from dataclasses import replace

import pytest
import torch
from torchvision.transforms import functional as TF

from fastbd.data import gpu_aug as G
from fastbd.data.base import RECIPES, Recipe


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
