"""Run folders: a run describes itself.

    RUN/config.yaml          the fully resolved config
    RUN/meta.json            `environment()`: git SHA (and whether the tree was dirty), versions, host,
                             GPUs; world size, the data folder's manifest sha256 and source fingerprint
    RUN/metrics.jsonl        append-only, one JSON object per log line (rank 0 only)
    RUN/tb/                  the same numbers as TensorBoard events, with tensorboard=true
    RUN/ckpt/last.pt         plain-dict checkpoint, loadable with torch.load(weights_only=True)
    RUN/encoder.safetensors  the trained backbone; RUN/encoder.json its metadata
Loading an encoder (`load_encoder`, also foreign MoCo/BYOL/torchvision checkpoints) sits beside saving one.
Every file is written to a temporary name and renamed (beton_builders/files.py), so a crash never leaves a
torn file.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

from beton_builders import manifest as mf
from beton_builders.files import atomic_write, atomic_write_bytes, write_json
from fastbd import __version__
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


def run_meta(data_folder: str, world: int) -> dict:
    folder = Path(data_folder)
    m = mf.load_manifest(folder) if mf.built(folder) else None
    return {
        **environment(),
        "world_size": world,
        "data": {"path": str(folder.resolve()),
                 "manifest_sha256": mf.sha256_file(folder / "manifest.json") if m else None,
                 "source_fingerprint": m["source"]["fingerprint"] if m else None},
    }


class MetricsLog:
    """Append-only JSON lines; a resumed run keeps appending to the same file.

    With `tensorboard`, every number of a row also goes to RUN/tb as the scalar `<kind>/<name>` at its step
    (torch's SummaryWriter, imported only then, needs the `tensorboard` package: the [tensorboard] extra).
    Without the package the run goes on with metrics.jsonl alone, and says so once."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False, log=print):
        self.path, self.enabled = path, enabled
        self.tb = _summary_writer(path.parent / "tb", log) if enabled and tensorboard else None

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


def _summary_writer(folder: Path, log):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard=true: the tensorboard package is not installed (pip install tensorboard, or "
            "pip install -e '.[tensorboard]'); writing metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(folder))


def read_metrics(run: str | Path) -> list[dict]:
    p = Path(run) / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def load_checkpoint(path: str | Path) -> dict:
    """Safe load: tensors and plain containers only; nothing in the file is executed."""
    return torch.load(path, map_location="cpu", weights_only=True)


def export_encoder(run: Path, encoder: torch.nn.Module, meta: dict) -> Path:
    from safetensors.torch import save as st_save

    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write_bytes(run / "encoder.safetensors", st_save(state, metadata={"fastbd": json.dumps(meta)}))
    write_json(run / "encoder.json", meta)
    return run / "encoder.safetensors"


def load_encoder_state(path: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


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
