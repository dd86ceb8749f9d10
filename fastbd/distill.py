"""The distillation defense's config: CompRess into a fresh student on a small clean subset.

    fastbd distill --teacher runs/moco data=out/demo clean_fraction=0.25 [key=value ...]

Saha et al. 2022, Sec. 5: distilling the (possibly backdoored) teacher into a fresh student on 25%, 10%
or 5% of the clean training data removes the backdoor. It is `method.name=compress` in the same Trainer,
so it shares the loaders, AMP, DDP, resume and the run folder with `fastbd train`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from fastbd.config import load_config
from fastbd.models import ModelConfig, model_from_meta
from fastbd.train import TrainConfig

# CompRess's ImageNet settings as the paper's defense runs them (Saha et al. 2022, Sec. 5; CompRess repo).
DISTILL_DEFAULTS = ["epochs=130", "method.name=compress", "data.clean_fraction=0.25", "data.batch_size=256",
                    "optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9", "optim.weight_decay=1e-4",
                    "optim.schedule=step", "optim.milestones=[90,120]", "optim.gamma=0.2"]
SHORTCUTS = {"data": "data.path", "clean_fraction": "data.clean_fraction"}


def teacher_model(teacher: Path) -> ModelConfig:
    """The backbone config of a finished run, from its encoder.json."""
    meta_path = Path(teacher) / "encoder.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"--teacher: {meta_path} not found; is {teacher} a finished `fastbd train` run?")
    meta = json.loads(meta_path.read_text())
    return model_from_meta(meta)


def distill_config(teacher: str | Path, model: ModelConfig, config: Optional[str | Path] = None,
                   overrides: Sequence[str] = ()) -> TrainConfig:
    """The student's TrainConfig: the CompRess defaults, then `config` (YAML), then `overrides`, which may use
    the shortcuts data=DIR and clean_fraction=F. The student gets the teacher's architecture and stem."""
    student = [*(f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in asdict(model).items()),
               f"method.compress.teacher={teacher}", f"out={teacher}_distilled"]
    items = [f"{SHORTCUTS.get(k, k)}={v}" for k, _, v in (o.partition("=") for o in overrides)]
    return load_config(TrainConfig, config, items, defaults=[*DISTILL_DEFAULTS, *student])
