"""A sweep's config and its plan: the grid expanded into builds (one per distinct dataset) and runs.

A run is one trained encoder (method x trigger x target x poison rate x seed) with its stages: train,
one linear-probe eval per label fraction, and, if asked, one distilled student per clean fraction with
its own evals, and the PatchSearch defense (filter, retrain on the filtered set, evals). A clean control (rate 0) does not depend on the trigger or target, so it is trained once
per method and seed and evaluated against every trigger/target pair. Every poison rate of one trigger/target pair reads the same nested-rate build
(beton_builders: the rate-r1 poisoned set lies within the rate-r2 set), so a rate sweep compiles the
data once. A run's id hashes its resolved build spec and training config; label and clean fractions
are stages of a run, so adding one to a sweep adds stages instead of retraining.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Optional

from fastbd.config import ConfigError, load_config, to_dict


@dataclass
class MethodEntry:
    config: str = "???"  # SSL config YAML (overrides of TrainConfig); relative to the sweep file
    overrides: list[str] = field(default_factory=list)  # key=value on top of `config`, e.g. method.name=byol


@dataclass
class GridConfig:
    rates: list[float] = field(default_factory=lambda: [0.0, 0.5])  # in the poison spec's attack.rate_mode units; 0 = the clean control
    triggers: dict[str, list[str]] = field(default_factory=dict)  # name -> poison-spec overrides, e.g. [trigger.seed=12]; empty: the spec's own trigger ("default")
    targets: list[str] = field(default_factory=list)  # target classes (name or index); empty: the poison spec's own
    pair_triggers_targets: bool = False  # true: the i-th trigger with the i-th target (the paper's five pairs); false: every combination
    methods: dict[str, MethodEntry] = field(default_factory=dict)  # name -> SSL config
    seeds: list[int] = field(default_factory=lambda: [0])  # training seed; also the probe's label draw and init
    label_fractions: list[float] = field(default_factory=lambda: [0.01])  # linear-probe labels, fraction of the clean train set (paper: 0.01, 0.1)
    clean_fractions: list[float] = field(default_factory=list)  # distillation defense, one student each (paper: 0.25, 0.1, 0.05); empty: off
    distill_clean: bool = False  # also distil the rate-0 controls (the paper defends only poisoned encoders)
    share_clean: bool = True  # train each rate-0 control once per method and seed, evaluate it on every trigger/target pair
    patchsearch: bool = False  # the PatchSearch defense on each poisoned encoder: filter its training set, retrain on the rest, evaluate


@dataclass
class LocalConfig:
    gpus: Optional[list[int]] = None  # GPU indices to use; None: every visible GPU (no GPU: the CPU)
    runs_per_gpu: int = 1  # runs sharing one GPU at once (a ResNet-18 at 112 px does not fill an H100)
    gpus_per_run: int = 1  # >1: each run's training goes through torchrun on that many GPUs
    cpu_parallel: int = 1  # runs at once when there is no GPU (each gets cores / cpu_parallel threads)


@dataclass
class SlurmConfig:
    partition: Optional[str] = None  # SLURM partition (None: the cluster's default)
    account: Optional[str] = None  # SLURM account to charge
    qos: Optional[str] = None  # SLURM quality of service
    time: int = 720  # minutes per run
    gpus_per_run: int = 1  # >1: torchrun inside the job
    cpus_per_gpu: int = 16  # cpus-per-task = gpus_per_run x this (the data loaders' CPU share)
    mem_gb: int = 64  # per run
    array_parallelism: int = 64  # array tasks running at once
    build_time: int = 240  # minutes per dataset build
    build_cpus: int = 32  # cores per dataset build (decode, paste, encode in parallel)
    build_mem_gb: int = 64  # per dataset build
    max_requeue: int = 3  # requeues after preemption or timeout (a requeued run resumes from its checkpoint)
    setup: list[str] = field(default_factory=list)  # shell lines run before each task, e.g. "source .venv/bin/activate"
    additional: dict[str, str] = field(default_factory=dict)  # extra #SBATCH options, e.g. {constraint: h100}


@dataclass
class SweepConfig:
    name: str = "sweep"  # free text: the report's title and the SLURM job names
    out: str = "sweeps/default"  # sweep folder
    poison: str = "???"  # poison spec YAML, the base of every build; relative to the sweep file
    poison_overrides: list[str] = field(default_factory=list)  # key=value on every build
    train_overrides: list[str] = field(default_factory=list)  # key=value on every training run, e.g. epochs=100
    eval_overrides: list[str] = field(default_factory=list)  # key=value on every evaluation, e.g. res=112 resize=128
    distill_config: Optional[str] = None  # YAML overrides of the CompRess defaults; relative to the sweep file
    distill_overrides: list[str] = field(default_factory=list)  # key=value on every distillation
    patchsearch_overrides: list[str] = field(default_factory=list)  # key=value on every PatchSearch defense, e.g. res=32 search.clusters=100
    grid: GridConfig = field(default_factory=GridConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def load_sweep(path: str | Path | None, overrides: list[str] = ()) -> SweepConfig:
    """Load a sweep YAML (overrides only, strict); relative file paths resolve against its folder."""
    cfg = load_config(SweepConfig, path, overrides)
    base = Path(path).resolve().parent if path else Path.cwd()

    def fix(p: Optional[str]) -> Optional[str]:  # relative to the sweep file where that exists, else as given
        return p if p is None or Path(p).is_absolute() or not (base / p).exists() else str((base / p).resolve())
    cfg.poison = fix(cfg.poison)
    cfg.distill_config = fix(cfg.distill_config)
    for m in cfg.grid.methods.values():
        m.config = fix(m.config)
    _validate(cfg, path)
    return cfg


def _validate(cfg: SweepConfig, path) -> None:
    where = path or "sweep config"
    g = cfg.grid
    if cfg.poison == "???":
        raise ConfigError(f"{where}: poison: required (a poison spec YAML, e.g. configs/poison/demo.yaml)")
    if not Path(cfg.poison).is_file():
        raise ConfigError(f"{where}: poison: file not found: {cfg.poison}")
    if not g.methods:
        raise ConfigError(f"{where}: grid.methods: give at least one, e.g. {{moco: {{config: configs/ssl/moco_resnet18.yaml}}}}")
    for k, m in g.methods.items():
        if m.config == "???" or not Path(m.config).is_file():
            raise ConfigError(f"{where}: grid.methods.{k}.config: file not found: {m.config}")
    for name, vals in (("rates", g.rates), ("seeds", g.seeds), ("label_fractions", g.label_fractions)):
        if not vals:
            raise ConfigError(f"{where}: grid.{name}: give at least one value")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{where}: grid.{name}: repeated values {vals}")
    if any(r < 0 for r in g.rates):
        raise ConfigError(f"{where}: grid.rates: negative rate in {g.rates}")
    for name, vals in (("label_fractions", g.label_fractions), ("clean_fractions", g.clean_fractions)):
        if any(not 0 < v <= 1 for v in vals):
            raise ConfigError(f"{where}: grid.{name}: each must lie in (0, 1], got {vals}")
    if g.pair_triggers_targets and len(g.targets) != max(1, len(g.triggers)):
        raise ConfigError(f"{where}: grid.pair_triggers_targets: {len(g.triggers)} triggers but {len(g.targets)} targets")
    if cfg.distill_config is not None and not Path(cfg.distill_config).is_file():
        raise ConfigError(f"{where}: distill_config: file not found: {cfg.distill_config}")


# ----- the plan ----------------------------------------------------------------------------------------

def digest(obj) -> str:
    """12 hex characters of the sha256 of `obj`'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", s).strip("_")[:40] or "x"


def without(d: dict, *paths: str) -> dict:
    """A deep copy of `d` with the dotted `paths` removed (the parts of a config that name folders)."""
    d = json.loads(json.dumps(d, default=str))
    for p in paths:
        *head, last = p.split(".")
        node = d
        for h in head:
            node = node[h]
        node.pop(last, None)
    return d


# Spec fields added after studies cited their sweeps' build and run ids, with the value that keeps those builds'
# bytes: at that value they are left out of the plan's spec (a build reads the default back), so adding the
# knob changed no id; any other value is part of the spec and of every id, as usual.
NEUTRAL_SPEC_FIELDS: dict[str, object] = {"source.synthetic.subtypes": 1}


def _identity_spec(d: dict) -> dict:
    """`d` without the NEUTRAL_SPEC_FIELDS that hold their neutral value."""
    drop = []
    for path, neutral in NEUTRAL_SPEC_FIELDS.items():
        node = d
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node == neutral:
            drop.append(path)
    return without(d, *drop)


def _attacks(g: GridConfig) -> list[tuple[str, Optional[str]]]:
    triggers = list(g.triggers) or ["default"]
    targets: list[Optional[str]] = list(g.targets) or [None]
    if g.pair_triggers_targets:
        return list(zip(triggers, targets))
    return list(product(triggers, targets))


def _builds(cfg: SweepConfig, root: Path) -> dict[tuple, dict]:
    """(trigger, target) -> {id, dir, spec (dict), trigger, target}: one build per pair, every nonzero rate in it."""
    from beton_builders import load_spec

    rates = sorted(r for r in cfg.grid.rates if r > 0)
    out = {}
    for trig, target in _attacks(cfg.grid):
        items = [*cfg.poison_overrides, *cfg.grid.triggers.get(trig, [])]
        if target is not None:
            items.append(f"attack.target={target}")
        if rates:
            items.append(f"attack.rates=[{','.join(map(str, rates))}]")
        spec = load_spec(cfg.poison, items)
        d = _identity_spec(to_dict(spec))
        bid = digest(d)
        tname = target if target is not None else str(spec.attack.target)
        out[(trig, target)] = {"id": bid, "dir": str(root / "builds" / f"{_slug(trig)}-{_slug(tname)}-{bid}"),
                               "spec": d, "trigger": trig, "target": tname}
    return out


def _train_cfg(cfg: SweepConfig, method: str, build: dict, rate: float, seed: int):
    from fastbd.train import TrainConfig

    m = cfg.grid.methods[method]
    items = [*cfg.train_overrides, *m.overrides, f"seed={seed}", f"data.rate={rate}", f"data.path={build['dir']}"]
    return load_config(TrainConfig, m.config, items)


def _eval_cfgs(cfg: SweepConfig, builds: list[dict], seed: int, folder: Path, own: str) -> list[dict]:
    """One linear-probe eval per (trigger/target build, label fraction) of the encoder trained in `folder` on
    build `own`. A shared clean control meets the other pairs' builds with allow_other_data=true: the plan
    shares it only between builds whose clean part is the same (`_training_identity`); each eval's
    report.json records how its data matched (manifest.same_data: "same clean data" for /2 builds)."""
    from fastbd.evaluate import EvalConfig

    out = []
    for b, lf in product(builds, cfg.grid.label_fractions):
        where = folder / "eval" / f"{_slug(b['trigger'])}-{_slug(b['target'])}" / f"lf{lf:g}"
        items = [*cfg.eval_overrides, f"data={b['dir']}", f"probe.label_fraction={lf}", f"seed={seed}", f"out={where}",
                 *(["allow_other_data=true"] if b["id"] != own else [])]
        out.append({"build": b["id"], "cfg": to_dict(load_config(EvalConfig, None, items))})
    return out


def _distill_cfgs(cfg: SweepConfig, train, seed: int, run_dir: Path) -> dict[str, dict]:
    from fastbd.distill import distill_config

    out = {}
    for cf in cfg.grid.clean_fractions:
        items = [*cfg.distill_overrides, f"data={train.data.path}", f"clean_fraction={cf}", f"seed={seed}",
                 f"out={run_dir / f'distill_cf{cf:g}'}"]
        d = distill_config(run_dir / "train", train.model, cfg.distill_config, items)
        out[f"cf{cf:g}"] = to_dict(d)
    return out


def _patchsearch_cfgs(cfg: SweepConfig, train, seed: int, run_dir: Path) -> dict:
    """The PatchSearch defense of one poisoned run (RUN/patchsearch/) and the retraining on its filtered index
    list (RUN/patchsearch_train/: the run's own training config, reading data.indices instead of the rate's set)."""
    from fastbd.defenses.patchsearch import PatchSearchConfig

    out = run_dir / "patchsearch"
    defend = load_config(PatchSearchConfig, None, [*cfg.patchsearch_overrides, f"data={train.data.path}",
                                                   f"seed={seed}", f"out={out}"])
    retrain = to_dict(train)
    retrain["data"]["indices"] = str(out / "filtered_indices.npy")
    retrain["out"] = str(run_dir / "patchsearch_train")
    return {"defend": to_dict(defend), "train": retrain}


def train_identity(train: dict) -> dict:
    """A training config without what names folders or only lets it meet a build (out, data.path,
    data.allow_other_data) and without data.indices while it is unset: fields added later with their
    defaults are no part of an identity, so existing sweeps keep their run ids and stages."""
    d = without(train, "out", "data.path", "data.allow_other_data")
    if d.get("data", {}).get("indices", 0) is None:
        d["data"].pop("indices")
    return d


def _training_identity(cfg: SweepConfig, build: dict, rate: float) -> dict:
    """What a run's training data depends on. A clean control (rate 0) reads only the clean images, which are
    the same bytes in every trigger/target build of one source (the trigger, target and poisoning seed only
    choose and paint the poisoned copies), so with grid.share_clean it is one run evaluated on every pair."""
    if rate == 0 and cfg.grid.share_clean:
        return {"clean": without(build["spec"], "name", "trigger", "attack", "seed")}
    return {"build": build["spec"]}


def make_plan(cfg: SweepConfig) -> dict:
    """The whole sweep as plain data: {name, root, builds: {id: build}, runs: [run]} (what plan.json holds).

    Each run: id, dir, build (the id it trains on), params {method, rate, seed}, attacks (build ids it is
    evaluated on: one, or every pair for a shared clean control), train (TrainConfig dict), evals
    [{build, cfg (EvalConfig dict)}], distills {cf0.25: TrainConfig dict}, distill_evals {cf0.25: [...]},
    and with grid.patchsearch, on poisoned runs: patchsearch {defend (PatchSearchConfig dict), train
    (TrainConfig dict of the retraining)}, patchsearch_evals [...].
    """
    root = Path(cfg.out).absolute()
    builds = _builds(cfg, root)
    runs: dict[str, dict] = {}
    for method, rate, seed, pair in product(cfg.grid.methods, cfg.grid.rates, cfg.grid.seeds, builds):
        b = builds[pair]
        train = _train_cfg(cfg, method, b, rate, seed)
        # allow_other_data changes no number, so it is no part of a run's identity (nor its stage's)
        rid = digest({**_training_identity(cfg, b, rate), "train": train_identity(to_dict(train))})
        if rid in runs:
            if rate == 0 and cfg.grid.share_clean and b["id"] not in runs[rid]["attacks"]:
                runs[rid]["attacks"].append(b["id"])
                continue
            raise ConfigError(f"grid: two points resolve to the same run ({method}, {pair}, rate {rate}, "
                              f"seed {seed}); remove the duplicate from grid.triggers / grid.targets")
        run_dir = root / "runs" / rid
        train.out = str(run_dir / "train")
        runs[rid] = {"id": rid, "dir": str(run_dir), "build": b["id"], "attacks": [b["id"]],
                     "params": {"method": method, "rate": float(rate), "seed": seed}, "train": to_dict(train),
                     "distills": _distill_cfgs(cfg, train, seed, run_dir) if rate > 0 or cfg.grid.distill_clean else {}}
        if cfg.grid.patchsearch and rate > 0:  # only when asked, so plan.json of other sweeps stays as it was
            runs[rid]["patchsearch"] = _patchsearch_cfgs(cfg, train, seed, run_dir)
    by_id = {b["id"]: b for b in builds.values()}
    for r in runs.values():
        attacked = [by_id[a] for a in r["attacks"]]
        r["evals"] = _eval_cfgs(cfg, attacked, r["params"]["seed"], Path(r["dir"]) / "train", r["build"])
        r["distill_evals"] = {k: _eval_cfgs(cfg, attacked, r["params"]["seed"], Path(d["out"]), r["build"])
                              for k, d in r["distills"].items()}
        if r.get("patchsearch"):
            r["patchsearch_evals"] = _eval_cfgs(cfg, attacked, r["params"]["seed"],
                                                Path(r["patchsearch"]["train"]["out"]), r["build"])
    return {"name": cfg.name, "root": str(root), "builds": by_id, "runs": list(runs.values())}
