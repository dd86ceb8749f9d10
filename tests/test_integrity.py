"""Issue 12, integrity: every number traces back to checked bytes. The manifest protects itself (self hash,
consistent index lists), eval verifies what it reads, a run meets only the data it was trained on, inspect
fails on a mismatch, and the usual user errors are one line with exit code 2."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from beton_builders import build, load_manifest
from beton_builders.files import write_json
from beton_builders.manifest import (ManifestError, UnsealedManifestWarning, check_consistency, content_hash,
                                     seal)
from fastbd.cli import app
from fastbd.train import train

from conftest import quiet, tiny_spec
from test_train import cfg_for

runner = CliRunner()
EVAL = ["res=32", "resize=36", "workers=0", "probe.label_fraction=0.5", "probe.epochs=2", "knn_k=[1]"]


@pytest.fixture(scope="module")
def run(tiny_build, tmp_path_factory):
    """A run trained on rate 0.5 of tiny_build (so trained_on: poisoned)."""
    return train(cfg_for(tiny_build, tmp_path_factory.mktemp("runs") / "poisoned", "max_steps=2"))


@pytest.fixture(scope="module")
def other_build(tmp_path_factory):
    """Same source and storage as tiny_build, another trigger and target: the same clean part."""
    out = tmp_path_factory.mktemp("builds") / "other"
    build(tiny_spec("trigger.width=6", "attack.target=2"), out, log=quiet)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _flip_byte_in_a_jpeg(shard: Path) -> None:
    """Flip one byte inside the first JPEG member of a tar shard (past its 512-byte header)."""
    with open(shard, "r+b") as f:
        f.seek(512 + 300)
        b = f.read(1)
        f.seek(512 + 300)
        f.write(bytes([b[0] ^ 0xFF]))


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in r.output, (n, r.output)


def _edit(build_dir: Path, change, reseal: bool) -> None:
    """Edit manifest.json by hand (reseal: and recompute its self hash, as a careless tool would)."""
    m = json.loads((build_dir / "manifest.json").read_text())
    change(m)
    if reseal:
        m["self_sha256"] = content_hash(m)
    write_json(build_dir / "manifest.json", m)


# ----- the manifest protects itself -----------------------------------------------------------------------

def test_the_manifest_carries_its_own_hash_and_the_clean_part(tiny_build, other_build):
    m = load_manifest(tiny_build)
    assert m["schema"] == "fastbd.manifest/3" and list(m)[-1] == "self_sha256"
    assert m["self_sha256"] == content_hash(m) and seal(m) == m
    o = load_manifest(other_build)
    assert o["self_sha256"] != m["self_sha256"] and o["clean_sha256"] == m["clean_sha256"]
    raw = load_manifest(tiny_build.parent / "tiny_raw") if (tiny_build.parent / "tiny_raw").is_dir() else None
    assert raw is None or raw["clean_sha256"] != m["clean_sha256"]


HAND_EDITS = {
    # the edit: sample 0 twice, a poisoned copy missing, a clean image beside its own poisoned copy
    "sample 0 twice": (lambda m: m["rates"][1]["poisoned_indices"].__setitem__(0, m["rates"][1]["poisoned_indices"][1]),
                       "more than once"),
    "clean beside its copy": (lambda m: m["rates"][1]["replaced_indices"].__setitem__(
        0, min(set(range(48)) - set(m["rates"][1]["replaced_indices"]))), "kept beside its own"),
    "count": (lambda m: m["rates"][1].__setitem__("count", 5), "count 5, but 6 poisoned"),
    "not nested": (lambda m: m["rates"][0].update(poisoned_indices=[p["index"] for p in m["poisoned"][3:6]],
                                                  replaced_indices=[p["clean_index"] for p in m["poisoned"][3:6]]),
                   "not the first 3 entries"),
}


@pytest.mark.parametrize("name", sorted(HAND_EDITS))
def test_consistency_names_what_is_wrong(tiny_build, name):
    change, message = HAND_EDITS[name]
    m = load_manifest(tiny_build)
    change(m)
    with pytest.raises(ManifestError, match=message):
        check_consistency(m, "manifest.json")


@pytest.mark.parametrize("reseal", [False, True], ids=["raw edit", "edit with a recomputed hash"])
def test_hand_edited_rate_lists_are_refused_by_inspect_train_and_eval(tiny_build, run, tmp_path, reseal):
    bad = _copy(tiny_build, tmp_path / "edited")
    _edit(bad, HAND_EDITS["sample 0 twice"][0], reseal)
    expected = "more than once" if reseal else "edited after the build"
    _one_line_error(runner.invoke(app, ["inspect", str(bad)]), expected)
    _one_line_error(runner.invoke(app, ["train", f"data.path={bad}", f"out={tmp_path / 'r'}"]), expected)
    assert not (tmp_path / "r").exists()
    _one_line_error(runner.invoke(app, ["eval", "--run", str(run), f"data={bad}", f"out={tmp_path / 'e'}", *EVAL]),
                    expected)
    assert not (tmp_path / "e").exists()


def test_a_version_1_manifest_is_read_with_a_warning(tiny_build, tmp_path):
    old = _copy(tiny_build, tmp_path / "old")
    _edit(old, lambda m: (m.update(schema="fastbd.manifest/1"), m.pop("self_sha256"), m.pop("clean_sha256")), False)
    with pytest.warns(UnsealedManifestWarning, match="no self hash"):
        m = load_manifest(old)
    assert m["counts"]["train_clean"] == 48
    from fastbd.cli import _warning_line  # the command line prints it as one line, like its errors

    assert _warning_line("no self hash", UnsealedManifestWarning, "x.py", 1) == "warning: no self hash\n"
    assert "x.py:1: DeprecationWarning" in _warning_line("other", DeprecationWarning, "x.py", 1)
    _edit(old, HAND_EDITS["count"][0], False)  # unsealed, yet still checked for consistency
    with warnings.catch_warnings(), pytest.raises(ManifestError, match="count 5"):
        warnings.simplefilter("ignore")
        load_manifest(old)
    _edit(old, lambda m: m.update(schema="fastbd.manifest/9"), False)
    with pytest.raises(ManifestError, match="schema 'fastbd.manifest/9'"):
        load_manifest(old)


def test_inspect_exits_2_on_a_file_mismatch(tiny_build, tmp_path):
    bad = _copy(tiny_build, tmp_path / "b")
    _flip_byte_in_a_jpeg(bad / "dali" / "val-00000.tar")
    r = runner.invoke(app, ["inspect", str(bad), "--no-preview"])
    assert r.exit_code == 2 and "MISMATCH in ['dali/val-00000.tar']" in r.output
    assert r.output.strip().splitlines()[-1].startswith("error: ") and "dali/val-00000.tar" in r.output.splitlines()[-1]
    r = runner.invoke(app, ["inspect", str(tiny_build), "--no-preview"])
    assert r.exit_code == 0 and "all match" in r.output and "self hash" in r.output


# ----- eval verifies what it reads ----------------------------------------------------------------------

def test_eval_checks_the_files_of_its_backend(tiny_build):
    from beton_builders.manifest import split_files

    m = load_manifest(tiny_build)
    assert split_files(m, ("train",), ("tar",)) == {f"dali/train-0000{i}.tar" for i in range(3)}
    assert split_files(m, ("val", "val_poisoned")) == {"val.beton", "val_poisoned.beton", "dali/val-00000.tar",
                                                      "dali/val_poisoned-00000.tar"}


def test_eval_refuses_a_flipped_byte_in_a_val_poisoned_jpeg(tiny_build, run, tmp_path):
    bad = _copy(tiny_build, tmp_path / "b")
    _flip_byte_in_a_jpeg(bad / "dali" / "val_poisoned-00000.tar")
    args = ["eval", "--run", str(run), f"data={bad}", f"out={tmp_path / 'e'}", *EVAL]
    _one_line_error(runner.invoke(app, args), "dali/val_poisoned-00000.tar differs from manifest.json",
                    "verify_files=false")
    assert not (tmp_path / "e").exists()
    r = runner.invoke(app, [*args, "verify_files=false"])  # the same opt-out as train's
    assert r.exit_code == 0, r.output


# ----- a run meets only its own data ---------------------------------------------------------------------

def test_eval_on_another_build_is_refused_unless_allowed_and_then_recorded(run, other_build, tmp_path):
    args = ["eval", "--run", str(run), f"data={other_build}", f"out={tmp_path / 'e'}", *EVAL]
    _one_line_error(runner.invoke(app, args), f"was trained on {Path(run).parent.parent}", "poisoned images",
                    "allow_other_data=true")
    r = runner.invoke(app, [*args, "allow_other_data=true"])
    assert r.exit_code == 0, r.output
    check = json.loads((tmp_path / "e" / "report.json").read_text())["data_check"]
    assert check["match"] == "different" and check["allowed_other_data"] is True
    assert check["run_data"]["trained_on"] == "poisoned"


def test_a_clean_run_meets_every_build_with_the_same_clean_part(tiny_build, other_build, tmp_path):
    """The sweep's shared clean control: rate 0 of one build, evaluated on another trigger's build."""
    clean = train(cfg_for(tiny_build, tmp_path / "clean", "max_steps=1", "data.rate=0"))
    assert json.loads((clean / "meta.json").read_text())["data"]["trained_on"] == "clean"
    for data, match in ((tiny_build, "same build"), (other_build, "same clean data")):
        r = runner.invoke(app, ["eval", "--run", str(clean), f"data={data}", f"out={tmp_path / match}", *EVAL])
        assert r.exit_code == 0, r.output
        check = json.loads((tmp_path / match / "report.json").read_text())["data_check"]
        assert check["match"] == match and check["allowed_other_data"] is False
    # a build of another source (other clean images) is not the same data
    third = tmp_path / "third"
    build(tiny_spec("source.synthetic.seed=7"), third, log=quiet)
    _one_line_error(runner.invoke(app, ["eval", "--run", str(clean), f"data={third}", *EVAL]),
                    "clean images differ")


def test_resume_refuses_a_changed_build(tiny_build, other_build, tmp_path):
    data = _copy(tiny_build, tmp_path / "data")
    r = tmp_path / "r"
    train(cfg_for(data, r, "max_steps=3"))
    shutil.rmtree(data)
    _copy(other_build, data)  # another build under the run's data.path
    res = runner.invoke(app, ["train", "--resume", str(r)])
    _one_line_error(res, "--resume:", "data.allow_other_data=true")
    res = runner.invoke(app, ["train", "--resume", str(r), "data.allow_other_data=true", "max_steps=4"])
    assert res.exit_code == 0, res.output
    resume = [x for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines()) if x["kind"] == "resume"]
    assert resume == [{"kind": "resume", "epoch": 1, "step": 3, "dropped_lines": 0, "data_match": "different"}]


def test_distill_checks_the_teacher_against_the_data(run, other_build, tmp_path):
    d = ["method.compress.hidden=64", "method.compress.dim=32", "data.res=32", "data.batch_size=8",
         "data.workers=0", "data.backend=torch", "model.small_input=true", "max_steps=1", "epochs=1"]
    r = runner.invoke(app, ["distill", "--teacher", str(run), f"data={other_build}", f"out={tmp_path / 's'}", *d])
    _one_line_error(r, "distill:", "data.allow_other_data=true")
    assert not (tmp_path / "s").exists()
    r = runner.invoke(app, ["distill", "--teacher", str(run), f"data={other_build}", f"out={tmp_path / 's'}", *d,
                            "data.allow_other_data=true"])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "s" / "meta.json").read_text())["data"]
    # a clean subset, but a poisoned teacher: the student is not clean-only, and keeps the teacher's record
    assert data["trained_on"] == "poisoned" and data["teacher"]["trained_on"] == "poisoned"
    assert data["teacher_match"] == "different"


def test_the_sweep_lets_shared_clean_controls_meet_the_other_pairs_builds(tmp_path):
    from fastbd.sweep import load_sweep
    from fastbd.sweep.plan import make_plan
    from test_sweep import write_sweep

    plan = make_plan(load_sweep(write_sweep(tmp_path, rates=[0, 0.5], seeds=[0], triggers={"a": [], "b": [
        "trigger.seed=5"]})))
    for r in plan["runs"]:
        for e in r["evals"]:
            assert e["cfg"]["allow_other_data"] is (e["build"] != r["build"]), (r["params"], e["build"])
    assert any(len(r["attacks"]) == 2 for r in plan["runs"])  # the clean control meets both pairs
    from fastbd.sweep.stages import _eval_hash, _train_hash  # checks that change no number redo no stage

    e, t = plan["runs"][0]["evals"][0], plan["runs"][0]["train"]
    assert _eval_hash(e) == _eval_hash({**e, "cfg": {**e["cfg"], "allow_other_data": True, "verify_files": False}})
    assert _train_hash(t) == _train_hash({**t, "data": {**t["data"], "allow_other_data": True}})
    ids = [r["id"] for r in plan["runs"]]
    again = make_plan(load_sweep(write_sweep(tmp_path, rates=[0, 0.5], seeds=[0], triggers={"a": [], "b": [
        "trigger.seed=5"]}), ["train_overrides=[data.allow_other_data=true]"]))
    assert [r["id"] for r in again["runs"]] == ids


# ----- one-line errors instead of tracebacks --------------------------------------------------------------

def test_a_malformed_yaml_config_is_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: 3\n  data:\n path: x\n")
    _one_line_error(runner.invoke(app, ["train", "--config", str(tmp_path / "bad.yaml")]),
                    "bad.yaml: not valid YAML at line 2, column 7")
    (tmp_path / "bad2.yaml").write_text("rates: [0.1\n")
    _one_line_error(runner.invoke(app, ["build-beton", "--config", str(tmp_path / "bad2.yaml"), "--out",
                                        str(tmp_path / "o")]), "bad2.yaml: not valid YAML")


def test_checkpoints_that_are_not_plain_weights_are_one_line(tiny_build, run, tmp_path):
    import argparse

    import torch

    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {}}, tmp_path / "pickled.pth")
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "pickled.pth"), f"data={tiny_build}", *EVAL])
    _one_line_error(r, "pickled.pth: not a plain-weights checkpoint (it holds argparse.Namespace)")
    assert "weights_only" not in r.output
    (tmp_path / "torn.pth").write_bytes((tmp_path / "pickled.pth").read_bytes()[:100])
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "torn.pth"), f"data={tiny_build}", *EVAL])
    _one_line_error(r, "torn.pth: not a readable torch checkpoint")
    fake = _copy(run, tmp_path / "fake_run")
    (fake / "encoder.safetensors").write_bytes(b"this is not a safetensors file")
    r = runner.invoke(app, ["eval", "--run", str(fake), f"data={tiny_build}", f"out={tmp_path / 'e'}", *EVAL])
    _one_line_error(r, "encoder.safetensors: not a safetensors file")


# ----- a resumed run's metrics.jsonl ----------------------------------------------------------------------

def test_a_resumed_run_logs_each_step_once_and_marks_the_resume(tiny_build, tmp_path, monkeypatch):
    """Killed after step 5 was logged (the checkpoint is epoch 0's, step 3) and mid-way through writing a
    line: the resumed run drops what the checkpoint does not cover, says so, and logs 4..6 once."""
    from fastbd.runs import read_metrics
    from fastbd.train import Trainer

    step = Trainer._step

    def killed_after_5(self, views, bar):
        step(self, views, bar)
        if self.step == 5:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write('{"kind": "step", "ep')  # the kill lands mid-write
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "_step", killed_after_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tiny_build, tmp_path / "r"))
    monkeypatch.setattr(Trainer, "_step", step)
    Trainer(cfg_for(tiny_build, tmp_path / "r"), resume=True).fit()
    rows = read_metrics(tmp_path / "r")
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("step", 1), ("step", 2), ("step", 3), ("epoch", 3), ("resume", 3), ("step", 4), ("step", 5), ("step", 6),
        ("epoch", 6)]
    assert rows[4] == {"kind": "resume", "epoch": 1, "step": 3, "dropped_lines": 3, "data_match": "same build"}
