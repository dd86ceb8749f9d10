"""SimSiam and MoCo v3 through the normal path: their configs load, they train in the one trainer (SimSiam's
predictor at the undecayed base rate), resume exactly, and `fastbd eval` reads their encoders."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastbd.cli import app
from fastbd.config import load_config
from fastbd.runs import read_metrics
from fastbd.train import TrainConfig, Trainer, train

from test_train import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"simsiam": ["method.simsiam.dim=64", "method.simsiam.pred_hidden=16", "method.simsiam.proj_hidden=64"],
         "mocov3": ["method.mocov3.dim=32", "method.mocov3.mlp_dim=64"]}


def cfg(name: str, data, out, *extra) -> TrainConfig:
    """The method's own config file (configs/ssl/<name>_resnet18.yaml) with the tiny CPU settings on top."""
    return load_config(TrainConfig, ROOT / "configs" / "ssl" / f"{name}_resnet18.yaml",
                       [f"data.path={data}", f"out={out}", *TINY_TRAIN, *SMALL[name], "optim.warmup_epochs=0", *extra])


def test_configs_carry_the_papers_defaults():
    s = load_config(TrainConfig, ROOT / "configs" / "ssl" / "simsiam_resnet18.yaml", ["data.path=x"])
    assert (s.method.name, s.optim.name, s.optim.lr, s.optim.weight_decay, s.data.batch_size, s.epochs) == (
        "simsiam", "sgd", 0.05, 1e-4, 512, 100)
    assert (s.method.simsiam.dim, s.method.simsiam.pred_hidden, s.method.simsiam.fix_pred_lr) == (2048, 512, True)
    m = load_config(TrainConfig, ROOT / "configs" / "ssl" / "mocov3_resnet18.yaml", ["data.path=x"])
    assert (m.method.name, m.optim.name, m.optim.lr, m.optim.weight_decay, m.optim.warmup_epochs) == (
        "mocov3", "lars", 0.6, 1e-6, 10)
    assert (m.method.mocov3.dim, m.method.mocov3.mlp_dim, m.method.mocov3.temperature,
            m.method.mocov3.momentum) == (256, 4096, 1.0, 0.99)


def test_simsiam_predictor_keeps_the_base_rate(tiny_build, tmp_path):
    t = Trainer(cfg("simsiam", tiny_build, tmp_path / "run", "max_steps=2"))
    t.fit()
    rest, pred = t.opt.param_groups
    assert pred["fixed_lr"] and pred["lr"] == t.base_lr and rest["lr"] < t.base_lr  # cosine moved the rest
    steps = [r for r in read_metrics(t.out) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) and -1 <= r["loss"] <= 1 for r in steps)
    assert all(0 < r["z_std"] < 1 for r in steps)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simsiam", "mocov3"])
def test_train_resume_and_eval(tiny_build, tmp_path, name):
    full = train(cfg(name, tiny_build, tmp_path / "full"))
    train(cfg(name, tiny_build, tmp_path / "part", "max_steps=3"))
    Trainer(cfg(name, tiny_build, tmp_path / "part"), resume=True).fit()
    a = [r for r in read_metrics(full) if r["kind"] == "step"]
    b = [r for r in read_metrics(tmp_path / "part") if r["kind"] == "step"]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(r["loss"]) for r in a)
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)  # same seed, same run
    r = CliRunner().invoke(app, ["eval", "--run", str(full), f"data={tiny_build}", "res=32", "resize=36",
                                 "workers=0", "probe.epochs=3", "probe.label_fraction=0.5"])
    assert r.exit_code == 0, r.output
    rep = json.loads((full / "eval" / "report.json").read_text())
    assert rep["encoder"]["method"] == name and 0 <= rep[rep["protocol"]]["clean_top1"] <= 1
