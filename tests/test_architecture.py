"""The walls of the house (README "Development", design sketch) as executable checks.

Every `import` and `from ... import` in the library's source is read, wherever it stands (module level or
inside a function: a lazy import is still a dependency), and followed transitively. Importing `a.b.c` also
runs the package files `a/__init__.py` and `a/b/__init__.py`, so those count for the walls too.

1. The compiler (`beton_builders`) imports nothing of training (`fastbd`).
2. Methods and losses import neither the trainer, nor the loaders (`fastbd.data`), nor evaluation.
3. Evaluation, the distillation defense's method and the defenses (fastbd/defenses/) never import the trainer. `fastbd/distill.py` is exempt by design:
   it is the distillation defense's preset of a *training* config, run by the one Trainer.
4. Nothing in the library imports the CLI.
And no module imports itself through others (no import cycle), and no file is over 400 lines.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("beton_builders", "fastbd")


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the library (a package by its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


@lru_cache(maxsize=None)
def direct_imports(name: str) -> frozenset[str]:
    """The library modules `name` names in an import statement (explicit edges only)."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules() else base)
    return frozenset(m for m in found if _ours(m) and m != name)


def _with_packages(name: str) -> set[str]:
    """`a.b.c` and the package files importing it runs: `a`, `a.b`."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(modules())


@lru_cache(maxsize=None)
def closure(name: str) -> frozenset[str]:
    """Every library module that importing `name` executes (itself excluded)."""
    seen: set[str] = set()
    todo = [m for d in direct_imports(name) for m in _with_packages(d)]
    while todo:
        m = todo.pop()
        if m in seen or m not in modules():
            continue
        seen.add(m)
        todo += [x for d in direct_imports(m) for x in _with_packages(d)]
    seen.discard(name)
    return frozenset(seen)


def _under(prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules() if any(m == p or m.startswith(p + ".") for p in prefixes))


def _breaks(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for m in _under(sources):
        hit = sorted(x for x in closure(m) if any(x == f or x.startswith(f + ".") for f in forbidden))
        if hit:
            bad[m] = hit
    return bad


def test_the_walker_sees_imports():
    """Guards the checks below against passing vacuously."""
    assert {"beton_builders.spec", "beton_builders.manifest"} <= set(modules())
    assert "fastbd.methods" in direct_imports("fastbd.train")  # `from fastbd.methods import make_method`
    assert "beton_builders.config" in direct_imports("beton_builders.spec")  # relative `from .config import`
    assert "fastbd.data.torch_loader" in closure("fastbd.data")  # a lazy import inside make_loader
    assert "fastbd.data" in closure("fastbd.evaluate")  # through the package of fastbd.data.samples


def test_wall_1_the_compiler_imports_nothing_of_training():
    assert _breaks(("beton_builders",), ("fastbd",)) == {}


def test_wall_2_methods_and_losses_import_no_trainer_loader_or_evaluation():
    forbidden = ("fastbd.train", "fastbd.data", "fastbd.evaluate", "fastbd.metrics", "fastbd.report",
                 "fastbd.plots", "fastbd.monitor", "fastbd.sweep", "fastbd.cli")
    assert _breaks(("fastbd.methods", "fastbd.losses"), forbidden) == {}


def test_wall_3_evaluation_and_the_defenses_never_import_the_trainer():
    sources = ("fastbd.evaluate", "fastbd.monitor", "fastbd.metrics", "fastbd.report", "fastbd.plots",
               "fastbd.methods.compress", "fastbd.defenses")
    assert _breaks(sources, ("fastbd.train",)) == {}


def test_wall_4_nothing_imports_the_cli():
    assert _breaks(tuple(m for m in modules() if m != "fastbd.cli"), ("fastbd.cli",)) == {}


def test_no_import_cycles():
    """Depth-first search over the explicit import edges; any back edge is a cycle."""
    colour: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        colour[m] = 1
        for d in sorted(direct_imports(m)):
            if colour.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d in modules() and not colour.get(d):
                visit(d, [*path, d])
        colour[m] = 2

    for m in sorted(modules()):
        if not colour.get(m):
            visit(m, [m])
    assert cycles == []
@pytest.mark.parametrize("folder", ["beton_builders", "fastbd", "benchmarks", "tests"])
def test_no_file_is_over_400_lines(folder):
    long = {str(f.relative_to(ROOT)): n for f in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(f.read_text().splitlines())) > 400}
    assert long == {}


def test_every_manifest_reader_goes_through_manifest_py():
    """Design, "one home for each job": only beton_builders/manifest.py parses manifest.json, so its self hash
    and consistency checks cover every reader (train, eval, distill, sweep, inspect, export, benchmarks)."""
    home = ROOT / "beton_builders" / "manifest.py"
    offenders = [f"{f.relative_to(ROOT)}:{n}" for folder in ("beton_builders", "fastbd", "benchmarks")
                 for f in sorted((ROOT / folder).rglob("*.py")) if f != home
                 for n, line in enumerate(f.read_text().splitlines(), 1)
                 if "manifest.json" in line and "json.load" in line]
    assert offenders == []
