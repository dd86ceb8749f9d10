"""Backbones: torchvision's ResNets by default, narrower ones and a strided small stem on request."""

import pytest
import torch
import torchvision

from fastbd.models import ModelConfig, make_backbone, model_from_meta, model_meta


def test_the_default_is_torchvisions_network():
    torch.manual_seed(0)
    ours, dim = make_backbone(ModelConfig())
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    assert dim == 512
    assert [k for k in ours.state_dict()] == [k for k in ref.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("arch,width,dim", [("resnet18", 16, 128), ("resnet18", 32, 256), ("resnet50", 16, 512)])
def test_width_scales_every_stage_and_keeps_the_names(arch, width, dim):
    net, feat = make_backbone(ModelConfig(arch=arch, width=width))
    assert feat == dim
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, dim)
    ref_keys = [k for k in getattr(torchvision.models, arch)(weights=None).state_dict() if not k.startswith("fc.")]
    assert list(net.state_dict()) == ref_keys  # checkpoints load with the usual prefixes stripped


def test_small_stem_stride_two_quarters_the_first_feature_map():
    acts = {}
    for stride in (1, 2):
        net, _ = make_backbone(ModelConfig(small_input=True, stem_stride=stride, width=16))
        net.layer1.register_forward_hook(lambda m, i, o, s=stride: acts.__setitem__(s, o.shape[-1]))
        net(torch.zeros(1, 3, 32, 32))
    assert acts == {1: 32, 2: 16}


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="model.width"):
        make_backbone(ModelConfig(width=0))
    with pytest.raises(ValueError, match="model.stem_stride"):
        make_backbone(ModelConfig(small_input=True, stem_stride=3))
    with pytest.raises(ValueError, match="model.arch"):
        make_backbone(ModelConfig(arch="vgg"))


def test_encoder_meta_round_trips_and_old_exports_still_load():
    cfg = ModelConfig(arch="resnet18", small_input=True, stem_stride=2, width=32)
    assert model_from_meta(model_meta(cfg)) == cfg
    assert model_from_meta({"arch": "resnet34", "small_input": True}) == ModelConfig(arch="resnet34", small_input=True)


def test_importing_fastbd_makes_idle_openmp_threads_sleep_unless_told_otherwise():
    import os
    import subprocess
    import sys

    code = "import fastbd, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
