"""The CompRess distillation defense: clean subset, loss, similarity structure, resume, CLI."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from beton_builders import load_manifest
from beton_builders.manifest import clean_subset
from fastbd.cli import app
from fastbd.losses import compress_loss
from fastbd.methods import MethodConfig, make_method
from fastbd.models import ModelConfig, make_backbone
from fastbd.runs import read_metrics
from fastbd.train import Trainer, train

from test_train import cfg_for

DISTILL = ["method.name=compress", "method.compress.hidden=64", "method.compress.dim=32", "data.clean_fraction=0.5",
           "optim.lr=0.05"]


@pytest.fixture(scope="module")
def teacher(tiny_build, tmp_path_factory):
    return train(cfg_for(tiny_build, tmp_path_factory.mktemp("teacher") / "t", "max_steps=2"))


def test_clean_subset_is_seeded_and_never_poisoned(tiny_build):
    m = load_manifest(tiny_build)
    a = clean_subset(m, 0.5, seed=0)
    assert len(a) == 24 and (a == clean_subset(m, 0.5, seed=0)).all()
    assert not set(a.tolist()) & {p["clean_index"] for p in m["poisoned"]}
    assert a.max() < m["counts"]["train_clean"]
    assert set(a.tolist()) != set(clean_subset(m, 0.5, seed=1).tolist())
    with pytest.raises(ValueError, match="clean_fraction"):
        clean_subset(m, 1.5, 0)


def test_compress_loss_is_zero_for_identical_structure():
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    bank = F.normalize(torch.randn(32, 16, generator=g), dim=1)
    assert compress_loss(t, t, bank, bank, 0.04).abs() < 1e-5
    s = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    assert compress_loss(t, s, bank, bank, 0.04) > 0.1


def _method(teacher_run, bank=16):
    cfg = MethodConfig(name="compress")
    cfg.compress.teacher, cfg.compress.hidden, cfg.compress.dim, cfg.compress.bank = str(teacher_run), 64, 32, bank
    enc, d = make_backbone(ModelConfig(small_input=True))
    return make_method(cfg, enc, d, num_samples=100)


@pytest.mark.slow
def test_loss_decreases_and_student_moves_toward_the_teacher(teacher):
    torch.manual_seed(0)
    m = _method(teacher).train()
    x = torch.randn(16, 3, 32, 32)

    def structure_gap():
        """KL between the teacher's and the student's similarity distributions within the batch."""
        with torch.no_grad():
            t = F.normalize(m.teacher(x), dim=1)
            s = F.normalize(m.head(m.encoder(x)), dim=1)
        return compress_loss(t, s, t, s, 0.04).item()

    gap0 = structure_gap()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        loss, _ = m([x])
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(0.0)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert structure_gap() < gap0
    assert all(not p.requires_grad for p in m.teacher.parameters()) and not m.teacher.training


@pytest.mark.slow
def test_distill_run_records_its_subset_and_resumes_exactly(tiny_build, teacher, tmp_path):
    extra = [*DISTILL, f"method.compress.teacher={teacher}", "data.batch_size=8"]
    full = train(cfg_for(tiny_build, tmp_path / "full", *extra))
    sub = np.load(full / "clean_subset.npy")
    m = load_manifest(tiny_build)
    assert len(sub) == 24 and not set(sub.tolist()) & {p["clean_index"] for p in m["poisoned"]}
    train(cfg_for(tiny_build, tmp_path / "part", *extra, "max_steps=3"))
    Trainer(cfg_for(tiny_build, tmp_path / "part", *extra), resume=True).fit()
    a = [r["loss"] for r in read_metrics(full) if r["kind"] == "step"]
    b = [r["loss"] for r in read_metrics(tmp_path / "part") if r["kind"] == "step"]
    assert len(a) == 6 and a == pytest.approx(b, rel=1e-5)


def test_cli_distill_then_eval(tiny_build, teacher, tmp_path):
    r = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), f"data={tiny_build}", "clean_fraction=0.5",
                                 f"out={tmp_path / 's'}", "epochs=1", "data.batch_size=8", "data.res=32",
                                 "data.workers=0", "data.backend=torch", "method.compress.hidden=64"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "encoder.safetensors").is_file() and (tmp_path / "s" / "clean_subset.npy").is_file()
    cfg = (tmp_path / "s" / "config.yaml").read_text()
    assert "name: compress" in cfg and "small_input: true" in cfg and "gamma: 0.2" in cfg
    r = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "s"), f"data={tiny_build}", "res=32", "resize=36",
                                 "workers=0", "probe.label_fraction=0.5", "probe.epochs=2", "knn_k=[1]"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["distill", "--teacher", str(tmp_path / "nope"), f"data={tiny_build}"])
    assert r.exit_code == 2 and "encoder.json not found" in r.output
