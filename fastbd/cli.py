"""The fastbd command line: thin wrappers over the library (everything here is importable too).

    fastbd build-beton --config configs/poison/demo.yaml --out out/demo [key=value ...]
    fastbd build-beton --config poison-generation/cfg/X.cfg --out out/x source.root=...   (the reference's INI)
    fastbd export-reference out/demo --out out/demo_ref   (JPEG folders + "path label" lists for the reference)
    fastbd inspect out/demo
    fastbd make-synthetic --out data/synth source.synthetic.width=500 ...
    fastbd train --config configs/ssl/moco_resnet18.yaml data.path=out/demo out=runs/moco
    fastbd distill --teacher runs/moco data=out/demo clean_fraction=0.25
    fastbd eval --run runs/moco data=out/demo
    fastbd defend patchsearch --run runs/moco --data out/demo [key=value ...]   (writes a filtered index list)
    fastbd sweep --config configs/sweeps/demo.yaml [--executor slurm] [--dry-run]
    fastbd report sweeps/demo
    fastbd config train|eval|distill|build|sweep|patchsearch [--config FILE] [key=value ...]   (every key, default, unit)
    fastbd --version

Every command reports a problem the user can fix the same way: one line `error: ...` naming the file or
field on stderr, and exit code 2 (set FASTBD_DEBUG=1 to see the traceback instead).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fastbd: fast, reproducible backdoor attacks on self-supervised learning.")


def _version(value: bool) -> None:
    if value:
        from fastbd import __version__

        typer.echo(f"fastbd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the installed version and exit")) -> None:
    import warnings

    warnings.formatwarning = _warning_line


_default_formatwarning = __import__("warnings").formatwarning


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """fastbd's own warnings (e.g. an unsealed /1 manifest) as one line, `warning: ...`, like its errors."""
    if category.__module__.split(".")[0] in ("beton_builders", "fastbd"):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


@contextmanager
def _user_errors():
    """The one error path: a problem the user can fix becomes `error: <one line>` and exit code 2. Library
    errors of that kind are UserError (ConfigError, BuildError, TrainingDiverged, SweepLocked) or the
    built-in kinds raised with a message naming the file or field: missing files, existing folders, bad
    values, unknown keys, a missing optional package."""
    from fastbd.config import UserError

    try:
        yield
    except (UserError, FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError) as e:
        if os.environ.get("FASTBD_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) adds quotes
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("build-beton")
def build_beton(
    out: Path = typer.Option(..., "--out", help="output folder (train/val/val_poisoned .beton, dali/, manifest.json)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="poison spec YAML (overrides only), or the "
                                          "reference code's .cfg (generate_poison.py INI: translated, printed)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved spec and build nothing"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. attack.rates=[0.1,0.5]"),
) -> None:
    """Compile a poisoned dataset: triggers baked in, FFCV and DALI files, and a manifest."""
    from beton_builders import build, load_spec
    from beton_builders.reference_cfg import is_reference_cfg, translate
    from beton_builders.summary import summary
    from fastbd.config import to_yaml

    with _user_errors():
        if is_reference_cfg(config):
            tr = translate(config)
            typer.echo(tr.text())
            spec = load_spec(None, [*tr.overrides, *(overrides or [])])
        else:
            spec = load_spec(config, overrides or [])
        if dry_run:
            typer.echo(to_yaml(spec))
            return
        build(spec, out, force=force)
    typer.echo(summary(out, check=False))


@app.command("inspect")
def inspect(
    folder: Path = typer.Argument(..., help="a build-beton output folder"),
    preview: bool = typer.Option(True, help="also write FOLDER/preview.png with the trigger boxes drawn"),
) -> None:
    """Summarise a compiled dataset, check every file's sha256, and draw a preview (exit 2 on a mismatch)."""
    from beton_builders.summary import checked_summary
    from beton_builders.summary import preview as draw
    from fastbd.config import UserError

    with _user_errors():
        text, bad = checked_summary(folder)
        typer.echo(text)
        if bad:
            raise UserError(f"{folder}: {len(bad)} files differ from manifest.json (sha256): {bad}; rebuild the dataset")
        if preview:
            typer.echo(f"  preview     {draw(folder)}")


@app.command("export-reference")
def export_reference_cmd(
    folder: Path = typer.Argument(..., help="a build-beton output folder"),
    out: Path = typer.Option(..., "--out", help="folder for the image folders and `path label` file lists"),
    rate: Optional[List[float]] = typer.Option(None, "--rate", help="write the training list of this rate "
                                               "(repeatable; default: every rate of the build)"),
    patch_params: bool = typer.Option(False, "--patch-params", help="append each poisoned box `x y w h` "
                                      "to its training-list line (the reference's patch_params layout)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
) -> None:
    """Write a build in the reference code's layout: JPEG folders plus `path label` file lists."""
    from beton_builders.export_reference import export_reference

    with _user_errors():  # ExportError is a ValueError naming the file or rate
        rec = export_reference(folder, out, rate or None, patch_params=patch_params, force=force,
                               log=lambda s: typer.echo(f"[export-reference] {s}", err=True))
    for name, n in rec["lists"].items():
        typer.echo(f"  {out / name}  {n} lines")


@app.command("make-synthetic")
def make_synthetic(
    out: Path = typer.Option(..., "--out", help="folder to write train/<class>/*.jpg and val/<class>/*.jpg"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="poison spec YAML; its source.synthetic is used"),
    force: bool = typer.Option(False, "--force", help="replace an existing folder"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. source.synthetic.width=500"),
) -> None:
    """Write the built-in synthetic dataset to disk as an ImageFolder of JPEGs."""
    from beton_builders import load_spec
    from beton_builders.synthetic_folder import write_imagefolder

    with _user_errors():
        spec = load_spec(config, overrides or [])
        n = write_imagefolder(spec.source.synthetic, out, force=force, workers=spec.workers)
    typer.echo(f"wrote {n} images to {out}")


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="SSL config YAML (overrides only)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. data.path=out/demo out=runs/x"),
) -> None:
    """Train an SSL encoder on a compiled dataset; writes a self-describing run folder."""
    from fastbd.config import ConfigError, load_config
    from fastbd.train import TrainConfig, train

    with _user_errors():
        if resume is not None:
            # The run's own resolved config is the base; overrides (e.g. epochs=) apply on top.
            if config is not None:
                raise ConfigError("--resume reads RUN/config.yaml; do not pass --config as well")
            cfg = load_config(TrainConfig, resume / "config.yaml", [*(overrides or []), f"out={resume}"])
        else:
            cfg = load_config(TrainConfig, config, overrides or [])
        out = train(cfg, resume=resume is not None)
    typer.echo(f"run folder: {out}")


@app.command("distill")
def distill_cmd(
    teacher: Path = typer.Option(..., "--teacher", help="run folder of the (possibly backdoored) encoder"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML overrides of the CompRess defaults"),
    overrides: Optional[List[str]] = typer.Argument(None, help="data=DIR clean_fraction=0.25 out=RUN, key=value"),
) -> None:
    """Distil a teacher into a fresh student on a small clean subset (the paper's defense)."""
    from fastbd.distill import distill_config, teacher_model
    from fastbd.train import train

    with _user_errors():
        out = train(distill_config(teacher, teacher_model(teacher), config, overrides or []))
    typer.echo(f"student run folder: {out}  (evaluate it with `fastbd eval --run {out} data=...`)")


@app.command("defend")
def defend_cmd(
    name: str = typer.Argument(..., help="which defense: patchsearch"),
    run: Path = typer.Option(..., "--run", help="the (possibly backdoored) run folder to defend"),
    data: Optional[Path] = typer.Option(None, "--data", help="the build it was trained on (or data=DIR)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML overrides of the defense's defaults"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. res=32 resize=36 search.clusters=100"),
) -> None:
    """Search a run's own training set for poisoned images, remove them and write the filtered index list."""
    from fastbd.config import load_config
    from fastbd.defenses import defense

    with _user_errors():
        cls, fn = defense(name)
        items = [*(overrides or []), *([f"data={data}"] if data is not None else [])]
        report = fn(load_config(cls, config, items), run, log=lambda s: typer.echo(s, err=True))
    rm = report["scored_against_manifest"]["removed"]
    pr = "-" if rm["precision"] is None else f"{100 * rm['precision']:.1f}%"
    rc = "-" if rm["recall"] is None else f"{100 * rm['recall']:.1f}%"
    typer.echo(f"removed {rm['count']} of {report['scored_against_manifest']['training_images']} training images: "
               f"precision {pr}, recall {rc} against the manifest; filtered list "
               f"{Path(report['out']) / 'filtered_indices.npy'} (train on it with data.indices=...)")


@app.command("eval")
def eval_cmd(
    run: Optional[Path] = typer.Option(None, "--run", help="a fastbd train run folder"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="an encoder file (.safetensors, .pt, .pth)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. data=out/demo probe.label_fraction=0.1"),
) -> None:
    """Evaluate an encoder: linear probe and kNN on clean and triggered validation images."""
    from fastbd.config import load_config
    from fastbd.evaluate import EvalConfig, evaluate

    with _user_errors():
        report = evaluate(load_config(EvalConfig, None, overrides or []), run, checkpoint)
    m = report[report["protocol"]]
    asr = "-" if m["asr"] is None else f"{100 * m['asr']:.1f}%"
    typer.echo(f"clean top-1 {100 * m['clean_top1']:.1f}%  patched top-1 {100 * m['patched_top1']:.1f}%  "
               f"target FP {m['target_fp']} / {m['nontarget_count']}  ASR {asr}")


@app.command("compare")
def compare(runs: List[Path] = typer.Argument(..., help="evaluated run folders (RUN/eval/report.json), or the "
                                             "folders `fastbd eval ... out=DIR` wrote, or report.json files")) -> None:
    """Print the clean-vs-poisoned table (accuracy, target FP, ASR, NFP, kNN) of evaluated runs."""
    import json

    from fastbd.metrics import report_row
    from fastbd.report import report_markdown

    rows = []
    with _user_errors():
        for r in runs:
            p = _eval_report(r)
            name = r.name if p == r / "eval" / "report.json" else str(r)
            rows.append({"model": name, **report_row(json.loads(p.read_text()))})
    typer.echo(report_markdown(rows))


def _eval_report(path: Path) -> Path:
    """report.json of an evaluation: the file itself, an eval folder (out=), or a run folder's eval/."""
    for p in (path, path / "report.json", path / "eval" / "report.json"):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{path}: no report.json (nor eval/report.json); run `fastbd eval --run {path} "
                            "data=...` first, or pass the folder its out= named")


@app.command("sweep")
def sweep_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="sweep YAML (overrides only), e.g. configs/sweeps/demo.yaml"),
    executor: str = typer.Option("local", "--executor", help="local (this machine's GPUs or CPU) | slurm (submitit)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and the counts; run nothing"),
    limit: int = typer.Option(0, "--limit", help="run at most this many of the pending runs (0: all)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. out=sweeps/x grid.seeds=[0,1,2]"),
) -> None:
    """Run a grid of experiments (build, train, eval, distill); finished runs are skipped, stopped ones resume."""
    from fastbd.sweep import load_sweep, sweep

    with _user_errors():
        res = sweep(load_sweep(config, overrides or []), executor=executor, dry_run=dry_run, limit=limit,
                    log=typer.echo)
    failed = [r for r, s in res["states"].items() if s == "failed" and r in res["todo"]]
    if failed and not dry_run and executor == "local":
        typer.secho(f"{len(failed)} runs failed (see summary.md); rerun the same command to retry them",
                    fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(1)


@app.command("report")
def report_cmd(sweep_dir: Path = typer.Argument(..., help="a `fastbd sweep` folder")) -> None:
    """Write SWEEP/summary.csv, summary.md and plots/ from the runs finished so far."""
    from fastbd.sweep import report_sweep

    with _user_errors():
        report_sweep(sweep_dir, log=typer.echo)


CONFIG_KINDS = ("train", "eval", "distill", "build", "sweep", "patchsearch")


@app.command("config")
def config_cmd(
    kind: str = typer.Argument(..., help="which config: train | eval | distill | build | sweep | patchsearch"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="a YAML file of overrides to apply first"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides to apply, e.g. data.res=112"),
) -> None:
    """Print a config with every key, its resolved value and its unit, as YAML (like Hydra's --cfg job)."""
    from fastbd.config import ConfigError, describe

    with _user_errors():
        if kind not in CONFIG_KINDS:
            raise ConfigError(f"config: {kind!r} is not one of {', '.join(CONFIG_KINDS)}")
        defaults: list[str] = []
        if kind in ("train", "distill"):
            from fastbd.train import TrainConfig as cls
            if kind == "distill":
                from fastbd.distill import DISTILL_DEFAULTS as defaults
        elif kind == "eval":
            from fastbd.evaluate import EvalConfig as cls
        elif kind == "build":
            from beton_builders.spec import PoisonSpec as cls
        elif kind == "patchsearch":
            from fastbd.defenses.patchsearch import PatchSearchConfig as cls
        else:
            from fastbd.sweep.plan import SweepConfig as cls
        typer.echo(describe(cls, config, overrides or [], defaults), nl=False)


def main() -> None:  # pragma: no cover
    app(prog_name="fastbd")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
