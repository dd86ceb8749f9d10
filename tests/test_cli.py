"""The command line as a user meets it: --version, listing every config key, one error path."""

import dataclasses
import typing

import pytest
import yaml
from typer.testing import CliRunner

from beton_builders.config import field_comments
from beton_builders.spec import PoisonSpec
from fastbd import __version__
from fastbd.cli import CONFIG_KINDS, app
from fastbd.config import load_config, to_dict
from fastbd.defenses.patchsearch import PatchSearchConfig
from fastbd.distill import DISTILL_DEFAULTS
from fastbd.evaluate import EvalConfig
from fastbd.sweep.plan import SweepConfig
from fastbd.train import TrainConfig

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"fastbd {__version__}" and __version__[0].isdigit()


@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_config_lists_every_key_with_its_value_and_a_comment(kind):
    """`fastbd config KIND` is YAML that loads back to the defaults, and every leaf line says what it is."""
    r = runner.invoke(app, ["config", kind])
    assert r.exit_code == 0, r.output
    listed = yaml.safe_load(r.output.replace(": ???", ": '???'"))
    cls = {"train": TrainConfig, "distill": TrainConfig, "eval": EvalConfig, "build": PoisonSpec,
           "sweep": SweepConfig, "patchsearch": PatchSearchConfig}[kind]
    required = {"train": "data.path=x", "distill": "data.path=x", "eval": "data=x", "build": "name=default",
                "sweep": "poison=x", "patchsearch": "data=x"}[kind]
    defaults = to_dict(load_config(cls, None, [required], DISTILL_DEFAULTS if kind == "distill" else ()))
    key = required.split("=")[0]
    node = defaults
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = "???" if kind != "build" else "default"
    assert listed == yaml.safe_load(yaml.safe_dump(defaults))  # tuples (optim.betas) as lists
    leaves = [ln for ln in r.output.splitlines() if not ln.rstrip().split("#")[0].rstrip().endswith(":")]
    assert leaves and all("  # " in ln for ln in leaves), [ln for ln in leaves if "  # " not in ln]


def _fields_without_comments(cls, seen) -> list[str]:
    if cls in seen:
        return []
    seen.add(cls)
    notes, hints, out = field_comments(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        nested = [a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)]
        if not nested and f.name not in notes:
            out.append(f"{cls.__name__}.{f.name}")
        for a in nested:
            out += _fields_without_comments(a, seen)
    return out


def test_every_config_field_carries_its_unit_in_a_comment():
    """The project's rule, checked on every config a command loads (recipes and sweep entries included)."""
    seen: set = set()
    configs = (TrainConfig, EvalConfig, PoisonSpec, SweepConfig, PatchSearchConfig)
    assert [m for c in configs for m in _fields_without_comments(c, seen)] == []


def test_config_shows_overrides_and_names_bad_keys(tmp_path):
    r = runner.invoke(app, ["config", "train", "data.res=112", "method.name=byol"])
    assert r.exit_code == 0 and "  res: 112  # px" in r.output and "  name: byol  #" in r.output
    r = runner.invoke(app, ["config", "train", "data.rez=112"])
    assert r.exit_code == 2 and "error:" in r.output and "data.rez" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["config", "nope"])
    assert r.exit_code == 2 and "'nope' is not one of train, eval, distill, build, sweep, patchsearch" in r.output


def test_one_error_path_for_every_command(tmp_path, tiny_build):
    """User errors are one line, `error: ...`, exit code 2, no traceback; a KeyError's message is unquoted."""
    cases = [(["train"], "data.path: required"),
             (["train", f"data.path={tmp_path}"], "no manifest"),
             (["train", f"data.path={tiny_build}", f"out={tmp_path / 'r'}", "data.rate=0.3"],
              "error: rate 0.3 not in this build"),
             (["eval", "--run", str(tmp_path)], "data: required"),
             (["report", str(tmp_path)], "not a sweep folder"),
             (["compare", str(tmp_path)], "run `fastbd eval"),
             (["inspect", str(tmp_path)], "no manifest"),
             (["make-synthetic", "--out", str(tmp_path)], "already exists")]
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and r.output.startswith("error: ") and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_every_option_of_the_scripts_has_help():
    """The benchmarks and `python -m fastbd.sweep` explain each of their options."""
    import importlib.util
    from pathlib import Path

    from fastbd.sweep.stages import parser as sweep_parser

    root = Path(__file__).resolve().parents[1]
    parsers = {"python -m fastbd.sweep": sweep_parser()}
    for name in ("build_throughput", "train_throughput", "ctrl_jpeg"):
        spec = importlib.util.spec_from_file_location(name, root / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parsers[name] = module.parser()
    missing = [f"{name} {a.dest}" for name, ap in parsers.items() for a in ap._actions
               if not a.help or a.help == "==SUPPRESS=="]
    assert missing == [] and all(len(ap._actions) > 2 for ap in parsers.values())
