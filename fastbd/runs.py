"""Run folders: a run describes itself.

    RUN/config.yaml          the fully resolved config
    RUN/meta.json            `environment()`: git SHA (and whether the tree was dirty), versions, host,
                             GPUs; world size; `data`: the build's path, manifest sha256, source fingerprint
                             and clean-part sha256, and whether the run read clean images only
                             (`trained_on`; a distilled student inherits its teacher's record)
    RUN/metrics.jsonl        append-only, one JSON object per log line (rank 0 only)
    RUN/tb/                  the same numbers as TensorBoard events, with tensorboard=true
    RUN/ckpt/last.pt         plain-dict checkpoint, loadable with torch.load(weights_only=True)
    RUN/encoder.safetensors  the trained backbone; RUN/encoder.json its metadata
Loading an encoder (`load_encoder`, also foreign MoCo/BYOL/torchvision checkpoints) sits beside saving one,
and `check_run_data` decides whether a run may meet a build (eval, distill, resume: manifest.same_data).
Every file is written to a temporary name and renamed (beton_builders/files.py), so a crash never leaves a
torn file.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from beton_builders import manifest as mf
from beton_builders.files import atomic_write, atomic_write_bytes, write_json
from fastbd import __version__
from fastbd.config import UserError
from fastbd.models import ModelConfig, make_backbone, model_from_meta


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda p: torch.save(obj, p))


def git_info() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    return {"sha": sha or None, "dirty": dirty}


def environment() -> dict:
    """Versions and hardware: recorded in every run's meta.json and with every sweep invocation."""
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"fastbd_version": __version__, "git": git_info(), "python": platform.python_version(),
            "host": platform.node(), "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
            "cuda_device": gpus[0] if gpus else None,
            **{p: version(p) for p in ("torchvision", "numpy", "ffcv", "nvidia-dali-cuda130", "submitit")}}


def run_meta(data_folder: str, world: int, indices=None, teacher: str | None = None) -> dict:
    return {**environment(), "world_size": world, "data": data_record(data_folder, indices, teacher)}


def data_record(data_folder: str | Path, indices=None, teacher: str | Path | None = None) -> dict:
    """What a run trains on, for meta.json: the build (path, manifest sha256, source fingerprint, clean-part
    sha256) and `trained_on`: "clean" when `indices` (the training set) holds no poisoned copy and a
    `teacher` run, if any, was itself trained on clean images only; "poisoned" otherwise."""
    folder = Path(data_folder)
    m = mf.load_manifest(folder) if mf.built(folder) else None
    rec = {"path": str(folder.resolve()),
           "manifest_sha256": mf.sha256_file(folder / "manifest.json") if m else None,
           "source_fingerprint": m["source"]["fingerprint"] if m else None,
           "clean_sha256": m.get("clean_sha256") if m else None}
    clean = m is not None and indices is not None and (
        len(indices) == 0 or int(np.max(indices)) < m["counts"]["train_clean"])
    if teacher:
        rec["teacher"] = read_data_record(Path(teacher))
        clean = clean and (rec["teacher"] or {}).get("trained_on") == "clean"
    rec["trained_on"] = "clean" if clean else "poisoned"
    return rec


def read_data_record(run: Path) -> dict | None:
    p = Path(run) / "meta.json"
    return json.loads(p.read_text()).get("data") if p.is_file() else None


class DataMismatch(UserError, ValueError):
    """A run meets a build other than the one it was trained on, and the user did not allow it."""


def check_run_data(run: Path, data_folder: str | Path, what: str, option: str, allow_other: bool = False) -> dict:
    """Compare the data `run` was trained on (its meta.json) with the build `data_folder`
    (manifest.same_data). Unless `allow_other`, anything but the same build or the same clean data is
    refused, naming both manifests and `option`. Returns the record a report keeps."""
    folder = Path(data_folder)
    manifest = mf.load_manifest(folder)
    sha = mf.sha256_file(folder / "manifest.json")
    record = read_data_record(run)
    match = mf.same_data(record, manifest, sha)
    other = match in ("different", "unknown")
    if other and not allow_other:
        if record is None or match == "unknown":
            why = f"{run}/meta.json records no training data, so it cannot be matched with {folder}"
        else:
            why = (f"{run} was trained on {record['path']} (manifest sha256 {str(record['manifest_sha256'])[:12]}, "
                   f"{record.get('trained_on', 'poisoned')} images), not on {folder} (manifest sha256 {sha[:12]}"
                   + (", and their clean images differ" if record.get("trained_on") == "clean" else "") + ")")
        raise DataMismatch(f"{what}: {why}; pass {option}=true to go ahead anyway (it is recorded)")
    return {"match": match, "allowed_other_data": other, "build": str(folder.resolve()),
            "build_manifest_sha256": sha, "build_clean_sha256": manifest.get("clean_sha256"), "run_data": record}


class MetricsLog:
    """Append-only JSON lines; a resumed run keeps appending to the same file, after `mark_resume` has dropped
    the lines its checkpoint does not cover, so each step is in the file once.

    With `tensorboard`, every number of a row also goes to RUN/tb as the scalar `<kind>/<name>` at its step
    (torch's SummaryWriter, imported only then, needs the `tensorboard` package: the [tensorboard] extra).
    Without the package the run goes on with metrics.jsonl alone, and says so once."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False, log=print):
        self.path, self.enabled, self._log = path, enabled, log
        self.tb = _summary_writer(path.parent / "tb", log) if enabled and tensorboard else None

    def mark_resume(self, epoch: int, step: int, **extra) -> int:
        """A run resumes from its checkpoint at (`epoch`, `step`): drop every line after that step (logged
        before the run was stopped, and about to be logged again) and any torn last line, then write a
        `kind: "resume"` line. TensorBoard hides its events after `step` too (purge_step). Returns how many
        lines were dropped."""
        if not self.enabled:
            return 0
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        keep = [ln for ln in lines if _covered(ln, step)]
        atomic_write_bytes(self.path, "".join(ln + "\n" for ln in keep).encode())
        if self.tb is not None:
            self.tb.close()
            self.tb = _summary_writer(self.path.parent / "tb", self._log, purge_step=step + 1)
        dropped = sum(1 for ln in lines if ln.strip()) - len(keep)
        self.write(kind="resume", epoch=epoch, step=step, dropped_lines=dropped, **extra)
        return dropped

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("kind", "epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{row.get('kind', 'metrics')}/{k}", v, row.get("step", 0))
            if row.get("kind") == "epoch":
                self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _covered(line: str, step: int) -> bool:
    """Whether a metrics.jsonl line belongs to the history up to `step` (a line without a step stays)."""
    if not line.strip():
        return False
    try:
        row = json.loads(line)
    except ValueError:  # torn by a kill mid-write
        return False
    return not isinstance(row, dict) or not isinstance(row.get("step"), int) or row["step"] <= step


def _summary_writer(folder: Path, log, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard=true: the tensorboard package is not installed (pip install tensorboard, or "
            "pip install -e '.[tensorboard]'); writing metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(folder), **({} if purge_step is None else {"purge_step": purge_step}))


def read_metrics(run: str | Path) -> list[dict]:
    p = Path(run) / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


class CheckpointError(UserError, ValueError):
    """A checkpoint or encoder file that is not plain weights, or not readable as one; the message names it."""


def load_checkpoint(path: str | Path) -> dict:
    """Safe load: tensors and plain containers only; nothing in the file is executed. A file holding other
    Python objects (a pickled class, an argparse.Namespace) or a damaged one is a CheckpointError."""
    import pickle
    import re

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text suggests loading with the safety off; that is never fastbd's advice
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(e))))
        what = f" (it holds {', '.join(names)})" if names else ""
        raise CheckpointError(f"{path}: not a plain-weights checkpoint{what}; fastbd loads only tensors and plain "
                              "containers and never runs code from a file: save just its state_dict (or a "
                              ".safetensors file) from a copy you trust") from None
    except (EOFError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else "empty file"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None


def export_encoder(run: Path, encoder: torch.nn.Module, meta: dict) -> Path:
    from safetensors.torch import save as st_save

    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write_bytes(run / "encoder.safetensors", st_save(state, metadata={"fastbd": json.dumps(meta)}))
    write_json(run / "encoder.json", meta)
    return run / "encoder.safetensors"


def load_encoder_state(path: str | Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None


# Wrappers other code bases put before a ResNet backbone's keys (DDP, MoCo, BYOL, torchvision).
PREFIXES = ("module.", "encoder_q.", "encoder.", "backbone.", "base_encoder.")


def strip_state(state: dict) -> dict:
    """A backbone state dict from a fastbd export, a torchvision ResNet, or a MoCo/BYOL checkpoint."""
    for k in ("state_dict", "model"):
        if k in state and isinstance(state[k], dict):
            state = state[k]
    out = {}
    for k, v in state.items():
        for p in PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if not k.startswith("fc.") and torch.is_tensor(v):
            out[k] = v
    return out


def load_encoder(run: Optional[Path], checkpoint: Optional[Path], model: ModelConfig) -> tuple[torch.nn.Module, dict]:
    """The frozen backbone (eval mode) of a finished run's export, or of a checkpoint file (`model` names its
    architecture), and its metadata. Evaluation and the distillation teacher both load encoders here."""
    meta: dict = {}
    if run is not None:
        path = run / "encoder.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no exported encoder; did `fastbd train` finish?")
        meta = json.loads((run / "encoder.json").read_text())
        model = model_from_meta(meta)
        state = load_encoder_state(path)
    else:
        path = checkpoint
        state = load_encoder_state(path) if str(path).endswith(".safetensors") else load_checkpoint(path)
    net, feat_dim = make_backbone(model)
    state = strip_state(state)
    missing, _ = net.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{path}: not a {model.arch} backbone; missing {len(missing)} weights, e.g. {missing[:3]}")
    net.eval()
    return net, {**meta, "arch": model.arch, "feat_dim": feat_dim, "encoder": str(path)}
