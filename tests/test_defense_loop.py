"""The defense loop: an index list (a defense's filtered set) is checked against its build and trains through
`fastbd train data.indices=...`; the sweep's PatchSearch variant plans (run ids unchanged when it is off) and
runs filter -> retrain -> evaluate beside distillation, into one report."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from beton_builders.manifest import ManifestError, load_manifest, training_set, write_index_list
from fastbd.cli import app
from fastbd.sweep import load_sweep, make_plan, sweep
from fastbd.sweep.stages import pending_stages, stages

from test_sweep import write_sweep
from test_train import TINY_TRAIN

PS_TINY = ["res=32", "resize=36", "workers=0", "backend=torch", "search.clusters=4", "search.test_images=8",
           "classifier.topk=2", "classifier.models=1", "classifier.max_iterations=3", "classifier.width=8",
           "classifier.batch_size=8"]


def _list(folder, tmp_path, name="keep.npy", rate=0.5, drop=5):
    m = load_manifest(folder)
    keep = training_set(m, rate)[drop:]  # the first clean images "removed"
    return write_index_list(tmp_path / name, keep, m, rate, "test"), keep


def test_an_index_list_is_checked_against_its_build(tiny_build, tmp_path):
    path, keep = _list(tiny_build, tmp_path)
    m = load_manifest(tiny_build)
    assert np.array_equal(training_set(m, 0.5, indices=path), keep)
    assert np.array_equal(training_set(m, None, indices=path), keep)  # None: the list's own rate
    with pytest.raises(ManifestError, match="data.rate is 0.25"):
        training_set(m, 0.25, indices=path)
    with pytest.raises(ValueError, match="give one of them"):
        training_set(m, None, 0.5, indices=path)
    other = json.loads(path.with_suffix(".json").read_text())  # made from another build
    path.with_suffix(".json").write_text(json.dumps({**other, "build_id": "0" * 64}))
    with pytest.raises(ManifestError, match="made from another build"):
        training_set(m, None, indices=path)
    path.with_suffix(".json").write_text(json.dumps(other))
    np.save(path, keep[1:])  # edited after it was written
    with pytest.raises(ManifestError, match="sha256 is not the one"):
        training_set(m, None, indices=path)
    outside, _ = _list(tiny_build, tmp_path, "outside.npy")
    bad = write_index_list(tmp_path / "bad.npy", [*keep[:2], 999], m, 0.5, "test")
    with pytest.raises(ManifestError, match="index 999 is not in the rate-0.5 training set"):
        training_set(m, None, indices=bad)
    twice = write_index_list(tmp_path / "twice.npy", [keep[0], keep[0]], m, 0.5, "test")
    with pytest.raises(ManifestError, match="more than once"):
        training_set(m, None, indices=twice)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        (tmp_path / "nope.npy").write_bytes(outside.read_bytes())
        training_set(m, None, indices=tmp_path / "nope.npy")


def test_the_filtered_list_trains_through_fastbd_train(tiny_build, tmp_path):
    path, keep = _list(tiny_build, tmp_path)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", f"data.path={tiny_build}", f"out={out}", *TINY_TRAIN, "epochs=1",
                                   "max_steps=1", f"data.indices={path}"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "meta.json").read_text())
    rec = meta["data"]["index_list"]
    assert rec["count"] == len(keep) and rec["path"] == str(path.resolve()) and rec["made_by"] == "test"
    assert meta["data"]["trained_on"] == "poisoned"  # the list keeps the poisoned copies
    clean = write_index_list(tmp_path / "clean.npy", keep[keep < 48], load_manifest(tiny_build), 0.5, "test")
    res = CliRunner().invoke(app, ["train", f"data.path={tiny_build}", f"out={tmp_path / 'clean_run'}", *TINY_TRAIN,
                                   "epochs=1", "max_steps=1", f"data.indices={clean}"])
    assert res.exit_code == 0
    assert json.loads((tmp_path / "clean_run" / "meta.json").read_text())["data"]["trained_on"] == "clean"
    np.save(path, keep[:-1])  # a changed list is refused in one line, exit 2
    res = CliRunner().invoke(app, ["train", f"data.path={tiny_build}", f"out={tmp_path / 'x'}", *TINY_TRAIN,
                                   f"data.indices={path}"])
    assert res.exit_code == 2 and res.output.startswith("error:") and "keep.npy" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_the_sweep_plans_patchsearch_beside_distillation_and_keeps_run_ids(tmp_path):
    path = write_sweep(tmp_path, clean_fractions=[0.5])
    off = make_plan(load_sweep(path))
    on = make_plan(load_sweep(path, ["grid.patchsearch=true", f"patchsearch_overrides=[{','.join(PS_TINY)}]"]))
    assert [r["id"] for r in on["runs"]] == [r["id"] for r in off["runs"]]
    assert not any("patchsearch" in r for r in off["runs"])
    assert [stages(r)[0][3] for r in on["runs"]] == [stages(r)[0][3] for r in off["runs"]]  # same train stages
    poisoned = [r for r in on["runs"] if r["params"]["rate"] > 0]
    assert len(poisoned) == 2 and all("patchsearch" not in r for r in on["runs"] if r["params"]["rate"] == 0)
    r = poisoned[0]
    kinds = [(k, name) for k, name, *_ in stages(r)]
    assert kinds[-3:] == [("defend", "patchsearch"), ("train", "patchsearch_train"),
                          ("eval", "patchsearch_train/eval/default-1/lf0.5")]
    ps = r["patchsearch"]
    assert ps["defend"]["search"]["clusters"] == 4 and ps["defend"]["seed"] == r["params"]["seed"]
    assert ps["train"]["data"]["indices"] == str(Path(r["dir"]) / "patchsearch" / "filtered_indices.npy")
    assert {k: v for k, v in ps["train"].items() if k not in ("out", "data")} == \
        {k: v for k, v in r["train"].items() if k not in ("out", "data")}
    assert "patchsearch" in pending_stages(r)
    with pytest.raises(Exception, match="search.colour"):
        make_plan(load_sweep(path, ["grid.patchsearch=true", "patchsearch_overrides=[search.colour=1]"]))


@pytest.mark.slow
def test_the_sweep_filters_retrains_and_reports_patchsearch(tmp_path):
    path = write_sweep(tmp_path, clean_fractions=[0.5], seeds=[0])
    res = sweep(load_sweep(path, ["grid.patchsearch=true", f"patchsearch_overrides=[{','.join(PS_TINY)}]"]),
                log=lambda s: None)
    assert set(res["states"].values()) == {"done"}, res["states"]
    root = Path(res["plan"]["root"])
    rows = list(csv.DictReader((root / "summary.csv").open()))
    assert sorted((r["defense"], r["rate"]) for r in rows) == [("distill", "0.5"), ("none", "0.0"), ("none", "0.5"),
                                                                ("patchsearch", "0.5")]
    assert {r["state"] for r in rows} == {"done"}
    run = next(r for r in res["plan"]["runs"] if r.get("patchsearch"))
    rep = json.loads((Path(run["patchsearch"]["defend"]["out"]) / "report.json").read_text())
    kept = np.load(Path(run["patchsearch"]["defend"]["out"]) / "filtered_indices.npy")
    meta = json.loads((Path(run["patchsearch"]["train"]["out"]) / "meta.json").read_text())
    assert meta["data"]["index_list"]["count"] == len(kept) == rep["classifier"]["kept"]
    md = (root / "summary.md").read_text()
    assert "## PatchSearch detection" in md and "patchsearch" in md and run["id"] in md
    again = sweep(load_sweep(path, ["grid.patchsearch=true", f"patchsearch_overrides=[{','.join(PS_TINY)}]"]),
                  log=lambda s: None)
    assert again["todo"] == []  # every stage done: nothing reruns
