"""Evaluation: encoder loading, the labelled subset, normalisation, kNN, and a tiny end-to-end eval."""

import json

import numpy as np
import pytest
import torch
import torchvision

from beton_builders import load_manifest
from fastbd.config import load_config
from fastbd.evaluate import EvalConfig, evaluate, knn_predict, labelled_subset, normalise, trigger_shift
from fastbd.metrics import report_row
from fastbd.models import ModelConfig
from fastbd.runs import load_encoder, strip_state
from fastbd.train import train

from test_train import cfg_for


@pytest.fixture(scope="module")
def tiny_run(tiny_build, tmp_path_factory):
    return train(cfg_for(tiny_build, tmp_path_factory.mktemp("runs") / "moco", "max_steps=2"))


def test_foreign_checkpoints_load_with_or_without_prefixes(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    for prefix, wrap in (("", None), ("module.", None), ("module.encoder_q.", "state_dict")):
        state = {prefix + k: v for k, v in net.state_dict().items()}
        torch.save({wrap: state} if wrap else state, tmp_path / "ck.pth")
        enc, meta = load_encoder(None, tmp_path / "ck.pth", ModelConfig())
        assert torch.equal(enc.conv1.weight, net.conv1.weight) and meta["feat_dim"] == 512
    assert "fc.weight" not in strip_state(net.state_dict())
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a resnet18 backbone"):
        load_encoder(None, tmp_path / "bad.pth", ModelConfig())


def test_labelled_subset_is_balanced_seeded_and_clean(tiny_build):
    m = load_manifest(tiny_build)
    from fastbd.data.samples import TarSamples
    labels = TarSamples(tiny_build, "train").label
    a = labelled_subset(m, labels, 0.5, seed=0)
    assert (a == labelled_subset(m, labels, 0.5, seed=0)).all()
    assert not set(a) & {p["clean_index"] for p in m["poisoned"]}
    assert a.max() < m["counts"]["train_clean"]  # never a poisoned copy
    counts = np.bincount(labels[a], minlength=4)
    assert counts.tolist() == [6, 6, 6, 6]  # round(0.5 * 12) per class


def test_a_class_with_no_clean_image_left_is_a_clear_error(tiny_build):
    # attack.rates [1.0]: every target-class image has a poisoned copy, so neither the probe nor the kNN
    # bank would see the class; that must fail, naming the file and the class, not train a 3-class probe
    m = load_manifest(tiny_build)
    from fastbd.data.samples import TarSamples
    labels = TarSamples(tiny_build, "train").label.copy()
    poisoned = {p["clean_index"] for p in m["poisoned"]}
    target = labels[next(iter(poisoned))]
    labels[[i for i in range(m["counts"]["train_clean"]) if labels[i] == target and i not in poisoned]] = (target + 1) % 4
    with pytest.raises(ValueError, match=r"tiny/manifest.json: class .* has no never-poisoned training image"):
        labelled_subset(m, labels, 0.5, seed=0, where=tiny_build / "manifest.json")


def test_normalise_and_knn():
    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(50, 8, generator=g), torch.randn(10, 8, generator=g)
    ntr, nte = normalise(tr, te)
    assert torch.allclose(ntr.mean(0), torch.zeros(8), atol=1e-5) and torch.allclose(ntr.std(0), torch.ones(8), atol=1e-4)
    bank = torch.eye(3)
    assert knn_predict(bank, torch.tensor([0, 1, 2]), torch.tensor([[0.1, 0.9, 0.0]]), 1, 3).tolist() == [1]


def test_trigger_shift_finds_the_class_the_trigger_moves_features_towards():
    g = torch.Generator().manual_seed(0)
    means = 4 * torch.eye(8)[:4]  # four classes along the first four axes
    bank_y = torch.arange(4).repeat_interleave(20)
    bank = means[bank_y] + 0.1 * torch.randn(80, 8, generator=g)
    val_y = torch.arange(4).repeat(5)
    val = means[val_y] + 0.1 * torch.randn(20, 8, generator=g)
    patched = val + 3 * torch.eye(8)[2]  # the trigger adds class 2's feature to every image
    keep = val_y != 2
    ts = trigger_shift(bank, bank_y, val, patched, keep, 4, target=2)
    assert ts["images"] == 15 and ts["nearest_class"] == 2 and ts["rank_target"] == 1
    assert ts["cos_target"] == ts["nearest_cos"] > 0.5 and ts["length"] > 0
    other = trigger_shift(bank, bank_y, val, patched, keep, 4, target=0)
    assert other["rank_target"] > 1 and other["cos_target"] < other["nearest_cos"]
    assert trigger_shift(bank, bank_y, val, val, keep, 4, target=None)["cos_target"] is None


def test_end_to_end_eval_writes_the_report(tiny_build, tiny_run):
    cfg = load_config(EvalConfig, None, [f"data={tiny_build}", "res=32", "resize=36", "workers=0",
                                         "probe.label_fraction=0.5", "probe.epochs=5", "knn_k=[1,5]"])
    lines = []
    rep = evaluate(cfg, run=tiny_run, log=lines.append)
    out = tiny_run / "eval"
    assert [ln.split(" (")[0] for ln in lines] == [  # a progress line per phase
        "[eval] features of 24 labelled train images", "[eval] features of val", "[eval] features of val_poisoned",
        "[eval] linear probe", "[eval] kNN, k = 1, 5", f"[eval] wrote {out}"]
    for f in ("report.json", "report.md", "conf_matrix.csv", "conf_matrix_clean.npy", "conf_matrix_poisoned.npy",
              "conf_matrix_poisoned.png", "labelled_indices.npy"):
        assert (out / f).is_file(), f
    m = rep[rep["protocol"]]
    assert rep["protocol"] == "linear_cached_lf0.5_seed0"
    assert 0 <= m["target_fp"] <= m["nontarget_count"] == 9 and 0 <= m["asr"] <= 1
    assert 0 <= m["clean_top1"] <= 1 and "knn_k5_lf0.5_top1" in rep
    assert json.loads((out / "report.json").read_text()) == rep
    assert rep["attack"]["kind"] == "htba" and "patch pasted" in rep["attack"]["evaluation"]  # which attack, tested how
    assert (out / "report.md").read_text().startswith("Attack: htba patch 8x8 px")
    assert np.load(out / "conf_matrix_poisoned.npy").sum() == 12
    ts = rep["trigger_shift"]  # the diagnostic: mean shift of the 9 triggered non-target images
    assert ts["images"] == 9 and 1 <= ts["rank_target"] <= 4 and -1 <= ts["cos_target"] <= 1
    assert "Trigger shift (kNN space" in (out / "report.md").read_text()
    row = report_row(rep)  # what the sweep's CSV and `fastbd compare` take from the report
    assert (row["shift_cos_target"], row["shift_rank_target"]) == (ts["cos_target"], ts["rank_target"])
    assert f"{ts['cos_target']:.2f} ({ts['rank_target']})" in (out / "report.md").read_text()


def test_augmented_probe_mode(tiny_build, tiny_run, tmp_path):
    cfg = load_config(EvalConfig, None, [f"data={tiny_build}", f"out={tmp_path / 'ev'}", "res=32", "resize=36",
                                         "workers=0", "probe.kind=augmented", "probe.label_fraction=0.5",
                                         "probe.epochs=2", "knn_k=[1]"])
    rep = evaluate(cfg, run=tiny_run, log=lambda s: None)
    assert rep["protocol"] == "linear_augmented_lf0.5_seed0"
    assert (tmp_path / "ev" / "report.json").is_file()
    with pytest.raises(ValueError, match="probe.kind"):
        evaluate(load_config(EvalConfig, None, [f"data={tiny_build}", f"out={tmp_path / 'x'}", "res=32",
                                                "workers=0", "probe.kind=fancy"]), run=tiny_run, log=lambda s: None)


@pytest.mark.ffcv
def test_ffcv_feature_extraction_matches_the_torch_path(tiny_build, tiny_run):
    pytest.importorskip("ffcv")
    from fastbd.evaluate import extract

    net, _ = load_encoder(tiny_run, None, ModelConfig())
    feats = {}
    for backend in ("torch", "ffcv"):
        cfg = load_config(EvalConfig, None, [f"data={tiny_build}", "res=32", "resize=36", "workers=1",
                                             f"backend={backend}"])
        feats[backend] = extract(net, tiny_build, "val", None, cfg, torch.device("cpu"))
    (ft, yt), (ff, yf) = feats["torch"], feats["ffcv"]
    assert torch.equal(yt, yf) and ft.shape == ff.shape
    # same crops through two decoders and two resize filters: features nearly parallel
    cos = torch.nn.functional.cosine_similarity(ft, ff, dim=1)
    assert cos.min() > 0.9, cos
