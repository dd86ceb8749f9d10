"""The fastbd command line: thin wrappers over the library (everything here is importable too).

    fastbd build-beton --config configs/poison/demo.yaml --out out/demo [key=value ...]
    fastbd inspect out/demo
    fastbd make-synthetic --out data/synth source.synthetic.width=500 ...
    fastbd train --config configs/ssl/moco_resnet18.yaml data.path=out/demo out=runs/moco
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="fastbd: fast, reproducible backdoor attacks on self-supervised learning.")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command("build-beton")
def build_beton(
    out: Path = typer.Option(..., "--out", help="output folder (train/val/val_poisoned .beton, dali/, manifest.json)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="poison spec YAML (overrides only)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. attack.rates=[0.1,0.5]"),
) -> None:
    """Compile a poisoned dataset: triggers baked in, FFCV and DALI files, and a manifest."""
    from beton_builders import BuildError, build, load_spec
    from beton_builders.summary import summary
    from fastbd.config import ConfigError

    try:
        spec = load_spec(config, overrides or [])
        build(spec, out, force=force)
    except (ConfigError, BuildError) as e:
        _fail(e)
    typer.echo(summary(out, check=False))


@app.command("inspect")
def inspect(
    folder: Path = typer.Argument(..., help="a build-beton output folder"),
    preview: bool = typer.Option(True, help="also write FOLDER/preview.png with the trigger boxes drawn"),
) -> None:
    """Summarise a compiled dataset, check every file's sha256, and draw a preview."""
    from beton_builders.summary import preview as draw
    from beton_builders.summary import summary

    try:
        typer.echo(summary(folder))
        if preview:
            typer.echo(f"  preview     {draw(folder)}")
    except (FileNotFoundError, ValueError) as e:
        _fail(e)


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
    from fastbd.config import ConfigError

    try:
        spec = load_spec(config, overrides or [])
        n = write_imagefolder(spec.source.synthetic, out, force=force, workers=spec.workers)
    except (ConfigError, FileExistsError) as e:
        _fail(e)
    typer.echo(f"wrote {n} images to {out}")


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="SSL config YAML (overrides only)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder from its last checkpoint"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. data.path=out/demo out=runs/x"),
) -> None:
    """Train an SSL encoder on a compiled dataset; writes a self-describing run folder."""
    from fastbd.config import ConfigError, load_config
    from fastbd.train import TrainConfig, TrainingDiverged, train

    try:
        if resume is not None:
            # The run's own resolved config is the base; overrides (e.g. epochs=) apply on top.
            if config is not None:
                raise ConfigError("--resume reads RUN/config.yaml; do not pass --config as well")
            cfg = load_config(TrainConfig, resume / "config.yaml", [*(overrides or []), f"out={resume}"])
        else:
            cfg = load_config(TrainConfig, config, overrides or [])
        if cfg.data.path == "???":
            raise ConfigError("data.path: required (a `fastbd build-beton` output folder)")
        out = train(cfg, resume=resume is not None)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError,
            TrainingDiverged) as e:
        _fail(e)
    typer.echo(f"run folder: {out}")


# CompRess as the paper's defense runs it (Saha et al. 2022, Sec. 5; CompRess's ImageNet settings).
DISTILL_DEFAULTS = ["epochs=130", "method.name=compress", "data.clean_fraction=0.25", "data.batch_size=256",
                    "optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9", "optim.weight_decay=1e-4",
                    "optim.schedule=step", "optim.milestones=[90,120]", "optim.gamma=0.2"]
SHORTCUTS = {"data": "data.path", "clean_fraction": "data.clean_fraction"}


@app.command("distill")
def distill_cmd(
    teacher: Path = typer.Option(..., "--teacher", help="run folder of the (possibly backdoored) encoder"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML overrides of the CompRess defaults"),
    overrides: Optional[List[str]] = typer.Argument(None, help="data=DIR clean_fraction=0.25 out=RUN, key=value"),
) -> None:
    """Distil a teacher into a fresh student on a small clean subset (the paper's defense)."""
    import json

    from fastbd.config import ConfigError, load_config
    from fastbd.train import TrainConfig, TrainingDiverged, train

    try:
        meta_path = teacher / "encoder.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"--teacher: {meta_path} not found; is {teacher} a finished `fastbd train` run?")
        meta = json.loads(meta_path.read_text())
        # The student gets the teacher's architecture and stem unless told otherwise.
        student = [f"model.arch={meta['arch']}", f"model.small_input={str(meta.get('small_input', False)).lower()}",
                   f"method.compress.teacher={teacher}", f"out={teacher}_distilled"]
        items = [f"{SHORTCUTS.get(k, k)}={v}" for k, _, v in (o.partition("=") for o in (overrides or []))]
        cfg = load_config(TrainConfig, config, items, defaults=[*DISTILL_DEFAULTS, *student])
        if cfg.data.path == "???":
            raise ConfigError("data: required (the `fastbd build-beton` folder the teacher was attacked with)")
        out = train(cfg)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError,
            TrainingDiverged) as e:
        _fail(e)
    typer.echo(f"student run folder: {out}  (evaluate it with `fastbd eval --run {out} data=...`)")


@app.command("eval")
def eval_cmd(
    run: Optional[Path] = typer.Option(None, "--run", help="a fastbd train run folder"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="an encoder file (.safetensors, .pt, .pth)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. data=out/demo probe.label_fraction=0.1"),
) -> None:
    """Evaluate an encoder: linear probe and kNN on clean and triggered validation images."""
    from fastbd.config import ConfigError, load_config
    from fastbd.evaluate import EvalConfig, evaluate

    try:
        cfg = load_config(EvalConfig, None, overrides or [])
        if cfg.data == "???":
            raise ConfigError("data: required (the `fastbd build-beton` folder)")
        report = evaluate(cfg, run, checkpoint)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(e)
    m = report[report["protocol"]]
    asr = "-" if m["asr"] is None else f"{100 * m['asr']:.1f}%"
    typer.echo(f"clean top-1 {100 * m['clean_top1']:.1f}%  patched top-1 {100 * m['patched_top1']:.1f}%  "
               f"target FP {m['target_fp']} / {m['nontarget_count']}  ASR {asr}")


@app.command("compare")
def compare(runs: List[Path] = typer.Argument(..., help="run folders that have been through `fastbd eval`")) -> None:
    """Print the clean-vs-poisoned table (accuracy, target FP, ASR, NFP, kNN) of evaluated runs."""
    import json

    from fastbd.metrics import report_markdown

    rows = []
    for r in runs:
        p = r / "eval" / "report.json"
        if not p.is_file():
            _fail(FileNotFoundError(f"{p}: run `fastbd eval --run {r} data=...` first"))
        rep = json.loads(p.read_text())
        knn = next((v for k, v in rep.items() if k.startswith("knn_") and k.endswith("_top1")), None)
        rows.append({"model": r.name, **rep[rep["protocol"]], "knn_top1": knn})
    typer.echo(report_markdown(rows))


def main() -> None:  # pragma: no cover
    app(prog_name="fastbd")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
