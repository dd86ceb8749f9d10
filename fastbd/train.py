"""SSL training on a compiled dataset: one trainer for every method.

    fastbd train --config configs/ssl/moco_resnet18.yaml data.path=out/demo out=runs/moco [key=value ...]
    torchrun --nproc_per_node 8 -m fastbd.cli train --config ...      (DDP; only rank 0 writes)

The trainer owns the loop, AMP (bf16 autocast, or fp16 with a grad scaler), channels_last, optional
torch.compile, DDP, the per-step LR schedule, checkpoints (plain dicts, atomic), resume (exact at epoch
granularity: model, optimiser, scaler, step, RNG; the loader's order and augmentation are pure functions
of seed, epoch and step), metrics.jsonl and the final safetensors export. The host reads the device only
every `log_every` steps and at the end of each epoch, so a step never waits for the GPU; the NaN/inf check
runs there, over every step's loss since the last read, and stops the run with a clear message before a
checkpoint could be overwritten: the last good checkpoint stays.
Reference numbers and hardware: README, "Benchmarks" (benchmarks/train_throughput.py).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from beton_builders.files import atomic_write_bytes, save_npy, write_json
from beton_builders.manifest import index_list_record
from fastbd.config import UserError, to_dict, to_yaml
from fastbd.data import DataConfig, make_loader
from fastbd.device import amp_mode, autocast, pick_device
from fastbd.dist import all_reduce_mean, init_distributed
from fastbd.methods import MethodConfig, make_method
from fastbd.models import ModelConfig, make_backbone, model_meta
from fastbd.monitor import BackdoorMonitor, MonitorConfig
from fastbd.optim import OptimConfig, lr_at, make_optimizer
from fastbd.runs import MetricsLog, atomic_torch_save, check_run_data, export_encoder, load_checkpoint, run_meta


@dataclass
class TrainConfig:
    out: str = "runs/default"  # run folder
    epochs: int = 200  # passes over the training set
    seed: int = 0  # model init, data order, augmentation
    device: str = "auto"  # auto (cuda if available) | cuda | cpu
    amp: str = "auto"  # auto (bf16 on cuda, off on cpu) | bf16 | fp16 | none
    channels_last: bool = True  # NHWC memory format for the convolutions (faster on tensor cores)
    compile: bool = False  # torch.compile the method (slow first steps, faster after)
    compile_mode: str = "default"  # torch.compile mode: default | max-autotune-no-cudagraphs (slower to compile)
    sync_bn: bool = True  # under DDP on GPUs: SyncBatchNorm (not for MoCo while method.moco.shuffle_bn is on)
    ckpt_every: int = 1  # epochs between checkpoints (the last epoch always writes one)
    log_every: int = 20  # steps between metrics.jsonl lines
    max_steps: int = 0  # stop after this many steps in total (0: full schedule); smoke tests, benchmarks
    tensorboard: bool = False  # also write the metrics as TensorBoard events in RUN/tb (the [tensorboard] extra)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)  # a kNN backdoor check every few epochs


# Not the CUDA-graph modes (reduce-overhead, max-autotune): a graph's outputs are overwritten by its next
# replay, and the trainer keeps every step's loss on the device until its next read (_sync).
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _rng_state(device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, log=None):
        self.cfg, self.info = cfg, init_distributed()
        self.device = pick_device(cfg.device, self.info.local_rank)
        if self.device.type == "cuda":  # fixed shapes: cuDNN times its algorithms once (as moco/main_moco.py)
            torch.backends.cudnn.benchmark = True
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.out = Path(cfg.out)
        seed_everything(cfg.seed + self.info.rank)
        self.loader = make_loader(cfg.data, self._views(), device=self.device, seed=cfg.seed,
                                  rank=self.info.rank, world=self.info.world)
        num_samples = self.loader.num_samples
        encoder, feat_dim = make_backbone(cfg.model)
        self.method = make_method(cfg.method, encoder, feat_dim, num_samples).to(self.device)
        if cfg.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.method
        if self.info.world > 1:
            # SyncBN is CUDA-only (gloo/CPU keeps per-rank BN), and a method may refuse it (MoCo's shuffle-BN).
            if cfg.sync_bn and self.device.type == "cuda" and self.method.allows_sync_bn():
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.method, device_ids=ids)
        if cfg.compile:
            if cfg.compile_mode not in COMPILE_MODES:
                raise ValueError(f"compile_mode: {cfg.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
            self.model = torch.compile(self.model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
        self.base_lr = cfg.optim.lr * cfg.data.batch_size / 256
        self.opt = make_optimizer(cfg.optim, self.method, self.base_lr)
        self.amp_dtype, fp16 = amp_mode(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the {num_samples} training "
                             "samples; lower it or set data.drop_last=false")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.epoch, self.step = 0, 0
        self._pending: list[torch.Tensor] = []  # losses of the steps since the host last read the device
        self._losses: list[float] = []  # this epoch's losses, read
        self._prepare_folder(resume)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.info.main, tensorboard=cfg.tensorboard,
                                  log=self.log)  # after the folder check: the TensorBoard writer makes RUN/tb
        if resume:  # each step once in metrics.jsonl: what the checkpoint does not cover goes, a resume line marks it
            self.metrics.mark_resume(self.epoch, self.step, data_match=self._resume_data["match"])
        if self.info.main and not resume:
            for w in self.method.schedule_warnings(self.total_steps):
                self.log(f"warning: {w}")
        self.monitor = (BackdoorMonitor(cfg.monitor, cfg.data.path, cfg.data.res, self.device, cfg.seed)
                        if cfg.monitor.every and self.info.main else None)

    def _views(self) -> list[str]:
        from fastbd.methods import METHODS
        if self.cfg.method.name not in METHODS:
            raise ValueError(f"method.name: {self.cfg.method.name!r} is not one of {sorted(METHODS)}")
        return list(METHODS[self.cfg.method.name].views_for(self.cfg.method))

    def _prepare_folder(self, resume: bool) -> None:
        ckpt = self.out / "ckpt" / "last.pt"
        if resume:
            if not ckpt.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
            # the build under data.path must still hold the data this run started on (manifest.same_data)
            self._resume_data = check_run_data(self.out, self.cfg.data.path, "--resume", "data.allow_other_data",
                                               self.cfg.data.allow_other_data)
            self._load(ckpt)
            self.log(f"resumed {self.out} at epoch {self.epoch} (step {self.step})")
            return
        nonempty = self.out.exists() and any(self.out.iterdir())
        if self.info.world > 1:
            # every rank looks before rank 0 writes anything, else a slow rank sees rank 0's config.yaml
            torch.distributed.barrier()
        if nonempty:
            raise FileExistsError(f"run folder {self.out} is not empty; use --resume to continue it, "
                                  "or choose another out=")
        teacher = self.method.teacher_run()
        if teacher:  # distillation: the teacher must have been trained on this build's data (or be allowed not to)
            teacher_data = check_run_data(Path(teacher), self.cfg.data.path, "distill", "data.allow_other_data",
                                          self.cfg.data.allow_other_data)
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "config.yaml", to_yaml(self.cfg).encode())
            meta = run_meta(self.cfg.data.path, self.info.world, self.loader.sample_indices, teacher)
            if teacher:
                meta["data"]["teacher_match"] = teacher_data["match"]
            if self.cfg.data.indices is not None:  # a defense's filtered set: which list, made from which build
                meta["data"]["index_list"] = index_list_record(self.cfg.data.indices)
            write_json(self.out / "meta.json", meta)
            if self.cfg.data.clean_fraction is not None:  # the distillation subset, for provenance
                save_npy(self.out / "clean_subset.npy", self.loader.sample_indices)

    def _save(self) -> None:
        if not self.info.main:
            return
        atomic_torch_save({"model": self.method.state_dict(), "optimizer": self.opt.state_dict(),
                           "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
                           "rng": _rng_state(self.device), "config": to_dict(self.cfg)},
                          self.out / "ckpt" / "last.pt")

    def _load(self, path: Path) -> None:
        ck = load_checkpoint(path)
        self.method.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        _set_rng_state(ck["rng"], self.device)

    def _train_step(self, views: list[torch.Tensor]) -> tuple[float, torch.Tensor, dict]:
        """One optimizer step; returns (lr, the loss as a device tensor, the method's logs). Nothing here
        reads a tensor on the host, so the CPU can queue the next step while the GPU still runs this one;
        except under amp=fp16, whose GradScaler reads its inf check before stepping (bf16, the GPU default,
        needs no scaler)."""
        lr = lr_at(self.cfg.optim, self.base_lr, self.step, self.steps_per_epoch, self.total_steps)
        for g in self.opt.param_groups:
            g["lr"] = self.base_lr if g.get("fixed_lr") else lr  # fixed_lr: Method.optim_groups
        with autocast(self.device, self.amp_dtype):
            loss, logs = self.model(views)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        self.method.after_step(self.step / self.total_steps)
        return lr, loss.detach(), logs

    def _step(self, views: list[torch.Tensor], bar) -> None:
        """A training step, plus every `log_every` steps the one host sync: the metrics line and the NaN check."""
        lr, loss, logs = self._train_step(views)
        self._pending.append(loss)
        if bar:
            bar.update(1)
        if self.step % self.cfg.log_every == 0:
            logs = self._sync(logs)
            self.metrics.write(kind="step", epoch=self.epoch, step=self.step, lr=lr, **logs)
            if bar:
                bar.set_postfix(loss=f"{self._losses[-1]:.4f}")

    def _sync(self, logs: dict | None = None) -> dict:
        """Read the losses of the steps since the last sync, and `logs`, off the device in one transfer; stop
        at the first non-finite loss. Runs before every checkpoint, so a diverged run never overwrites one."""
        tensors = {k: v for k, v in (logs or {}).items() if torch.is_tensor(v)}
        n, pending = len(self._pending), [*self._pending, *tensors.values()]
        values = torch.stack([t.float() for t in pending]).tolist() if pending else []
        first = self.step - n  # the 0-based index of the first pending step
        for i, v in enumerate(values[:n]):
            if not math.isfinite(v):
                raise TrainingDiverged(f"loss is {v} at epoch {self.epoch}, step {first + i}; the last good "
                                       f"checkpoint is {self.out / 'ckpt' / 'last.pt'} (try a lower optim.lr)")
        self._losses += values[:n]
        self._pending = []
        return {**(logs or {}), **dict(zip(tensors, values[n:]))}

    def _done(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def fit(self) -> Path:
        cfg = self.cfg
        self.method.train()
        try:
            if self.epoch == 0:
                self._check_backdoor()  # the untrained encoder: where the curve starts
            while self.epoch < cfg.epochs and not self._done():
                self._run_epoch()
                self.epoch += 1
                if self.epoch % cfg.ckpt_every == 0 or self.epoch == cfg.epochs or self._done():
                    self._save()
                self._check_backdoor()
        finally:
            self.metrics.close()
        if self.info.main:
            self._export()
        return self.out

    def _run_epoch(self) -> None:
        self.loader.set_epoch(self.epoch)
        t0, c0, seen = time.perf_counter(), time.process_time(), 0
        self._pending, self._losses = [], []
        bar = _progress(len(self.loader), f"epoch {self.epoch}", self.info.main)
        for batch in self.loader:
            self._step(batch.views, bar)
            seen += batch.label.shape[0]
            if self._done():
                break
        if bar:
            bar.close()
        self._sync()
        dt = time.perf_counter() - t0
        loss = all_reduce_mean(sum(self._losses) / max(1, len(self._losses)), self.device)
        ips = seen * self.info.world / max(dt, 1e-9)
        self.metrics.write(kind="epoch", epoch=self.epoch, step=self.step, loss=loss, img_per_s=ips, seconds=dt,
                           cpu_seconds=time.process_time() - c0)  # this process's CPU time (threads included)
        if self.info.main and not bar:
            self.log(f"epoch {self.epoch}: loss {loss:.4f}, {ips:.0f} img/s, {dt:.1f} s")

    def _check_backdoor(self) -> None:
        """The monitor's kNN check at epoch ends (rank 0; between epochs, so the step itself never waits)."""
        last = self.cfg.epochs if not self._done() else self.epoch
        if self.monitor is None or not self.monitor.due(self.epoch, last):
            return
        t0 = time.perf_counter()
        m = self.monitor(self.method.encoder)
        self.metrics.write(kind="backdoor", epoch=self.epoch, step=self.step, seconds=time.perf_counter() - t0, **m)
        fp = ("" if m["knn_target_fp"] is None else f", target FP {m['knn_target_fp']} of "
              f"{m['knn_nontarget_count']} triggered ({m['knn_target_fp_clean']} clean)")
        self.log(f"epoch {self.epoch}: kNN top-1 {100 * m['knn_clean_top1']:.1f}%{fp}")

    def _export(self) -> None:
        meta = {**model_meta(self.cfg.model),
                "feat_dim": self.method.feat_dim, "method": self.cfg.method.name, "epochs": self.epoch,
                "steps": self.step, "data": json.loads((self.out / "meta.json").read_text())["data"]}
        export_encoder(self.out, self.method.encoder, meta)


def _progress(total: int, desc: str, main: bool):
    """A tqdm bar on an interactive terminal; None (a plain line per epoch) otherwise."""
    if not main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False)


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    return Trainer(cfg, resume=resume).fit()
