"""The trainer on CPU: run folder contents, exact resume, NaN stop, and a two-process gloo DDP run."""

import json
import os
import socket

import pytest
import torch

from fastbd.config import load_config
from fastbd.runs import load_checkpoint, load_encoder_state, read_metrics
from fastbd.train import TrainConfig, Trainer, TrainingDiverged, train

from conftest import no_host_sync

TINY_TRAIN = ["epochs=2", "data.batch_size=16", "data.res=32", "data.workers=0", "data.backend=torch",
              "model.small_input=true", "method.moco.hidden=64", "method.moco.dim=32", "method.moco.queue=64",
              "log_every=1"]


def cfg_for(data, out, *extra):
    return load_config(TrainConfig, None, [f"data.path={data}", f"out={out}", *TINY_TRAIN, *extra])


def test_run_folder_describes_itself(tiny_build, tmp_path):
    out = train(cfg_for(tiny_build, tmp_path / "run"))
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "meta.json", "metrics.jsonl", "ckpt", "encoder.safetensors", "encoder.json"} <= names
    meta = json.loads((out / "meta.json").read_text())
    assert meta["git"]["sha"] is None or len(meta["git"]["sha"]) == 40
    assert meta["data"]["source_fingerprint"] and meta["data"]["manifest_sha256"]
    rows = read_metrics(out)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and all(r["img_per_s"] > 0 for r in epochs)
    ck = load_checkpoint(out / "ckpt" / "last.pt")  # weights_only: nothing executed
    assert ck["epoch"] == 2 and ck["step"] == 2 * 3  # 48 samples (rate 0.5 index list) / 16
    enc = load_encoder_state(out / "encoder.safetensors")
    assert "conv1.weight" in enc and not any(k.startswith("fc.") for k in enc)
    assert json.loads((out / "encoder.json").read_text())["feat_dim"] == 512
    loaded = load_config(TrainConfig, out / "config.yaml")
    assert loaded.data.batch_size == 16 and loaded.method.name == "moco"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_trainer_runs_on_every_backend(tiny_build, tmp_path, backend):
    pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[backend])
    out = train(cfg_for(tiny_build, tmp_path / "run", f"data.backend={backend}", "max_steps=2",
                        "method.name=byol", "method.byol.hidden=64", "method.byol.dim=32"))
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2] and all(r["loss"] == r["loss"] for r in steps)
    assert (out / "encoder.safetensors").is_file()


def test_data_folder_problems_are_named(tiny_build, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match="manifest"):
        Trainer(cfg_for(tmp_path / "nothing", tmp_path / "r1"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_build, copy)
    with open(copy / "dali" / "train-00000.tar", "r+b") as f:  # flip one byte
        f.seek(2000)
        b = f.read(1)
        f.seek(2000)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ValueError, match=r"differ from manifest.json .*train-00000.tar.*verify_files"):
        Trainer(cfg_for(copy, tmp_path / "r2"))
    with pytest.raises(KeyError, match="rate 0.3 not in this build"):
        Trainer(cfg_for(tiny_build, tmp_path / "r3", "data.rate=0.3"))
    with pytest.raises(ValueError, match="method.name"):
        Trainer(cfg_for(tiny_build, tmp_path / "r4", "method.name=dino"))


def test_existing_run_folder_is_refused(tiny_build, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg_for(tiny_build, tmp_path / "run"))


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tiny_build, tmp_path):
    full = train(cfg_for(tiny_build, tmp_path / "full"))
    # stop after epoch 0 (3 steps), then resume with the full schedule
    train(cfg_for(tiny_build, tmp_path / "part", "max_steps=3"))
    Trainer(cfg_for(tiny_build, tmp_path / "part"), resume=True).fit()
    a = [r for r in read_metrics(full) if r["kind"] == "step"]
    b = [r for r in read_metrics(tmp_path / "part") if r["kind"] == "step"]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    wa = load_encoder_state(full / "encoder.safetensors")
    wb = load_encoder_state(tmp_path / "part" / "encoder.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_nan_loss_stops_with_a_clear_message(tiny_build, tmp_path):
    t = Trainer(cfg_for(tiny_build, tmp_path / "run", "optim.lr=1e30", "method.moco.temperature=1e-30"))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        t.fit()


def test_a_diverged_run_is_caught_at_the_next_sync_and_keeps_its_checkpoint(tiny_build, tmp_path):
    """With log_every beyond the epoch, the NaN check runs at the epoch's end, over every step since the
    last read, and names the first bad step; the checkpoint of the last good epoch is untouched."""
    train(cfg_for(tiny_build, tmp_path / "run", "max_steps=3"))
    ckpt = tmp_path / "run" / "ckpt" / "last.pt"
    before = ckpt.read_bytes()
    t = Trainer(cfg_for(tiny_build, tmp_path / "run", "log_every=100", "optim.lr=1e30",
                        "method.moco.temperature=1e-30"), resume=True)
    # step 3's loss is huge but finite; the update it makes is not, so step 4 is the first non-finite one
    with pytest.raises(TrainingDiverged,
                       match=r"loss is nan at epoch 1, step 4; the last good checkpoint is .*ckpt/last\.pt"):
        t.fit()
    assert ckpt.read_bytes() == before


def test_the_step_never_waits_for_the_device_between_log_steps(tiny_build, tmp_path, monkeypatch):
    """Only every log_every steps (and at an epoch's end) may the host read a tensor: the other steps run
    with .item(), .tolist(), .cpu(), .numpy() and bool()/float()/int() of any tensor raising."""
    with no_host_sync(), pytest.raises(AssertionError, match="host sync"):
        bool(torch.ones(1) > 0)  # the trap works
    guarded = []

    def step(self, views, bar):
        if (self.step + 1) % self.cfg.log_every:
            guarded.append(self.step)
            with no_host_sync():
                return Trainer._step.__wrapped__(self, views, bar)
        return Trainer._step.__wrapped__(self, views, bar)

    step.__wrapped__ = Trainer._step
    monkeypatch.setattr(Trainer, "_step", step)
    out = train(cfg_for(tiny_build, tmp_path / "run", "log_every=4", "max_steps=5"))
    assert guarded == [0, 1, 2, 4]
    rows = read_metrics(out)
    [logged] = [r for r in rows if r["kind"] == "step"]
    assert logged["step"] == 4 and isinstance(logged["loss"], float) and 0 <= logged["acc"] <= 1
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]


@pytest.mark.slow
def test_the_compiled_step_gives_the_eager_losses(tiny_build, tmp_path):
    """compile=true (torch.compile of the method's forward and backward) on the same views: the first loss
    to float rounding, the next ones (after compiled updates of the weights, the EMA key encoder and the
    queue) to 1%; the whole first update agrees to 1% of its norm."""
    g = torch.Generator().manual_seed(0)
    views = [[torch.randn(16, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
              for _ in range(2)] for _ in range(3)]
    runs = []
    for name, extra in (("eager", []), ("compiled", ["compile=true"])):
        t = Trainer(cfg_for(tiny_build, tmp_path / name, *extra))
        t.method.train()
        before = torch.cat([p.detach().flatten().clone() for p in t.method.parameters()])
        losses = [t._train_step(views[0])[1]]
        update = torch.cat([p.detach().flatten() for p in t.method.parameters()]) - before
        losses += [t._train_step(v)[1] for v in views[1:]]
        runs.append(([float(x) for x in losses], update))
    (eager, du_e), (comp, du_c) = runs
    assert comp[0] == pytest.approx(eager[0], rel=1e-5)
    assert comp == pytest.approx(eager, rel=1e-2)
    assert (du_c - du_e).norm() < 1e-2 * du_e.norm()
    with pytest.raises(ValueError, match="compile_mode"):
        Trainer(cfg_for(tiny_build, tmp_path / "bad", "compile=true", "compile_mode=fastest"))


@pytest.mark.parametrize("backend", ["ffcv", "dali"])
def test_the_loaders_batches_never_wait_for_the_device(tiny_build, backend):
    """The ffcv and dali backends' per-batch work (crops in, device augmentation, labels) under the same
    trap, after the first batch (which makes the augmentation's constants): the host can queue step k+1's
    augmentation while the device still runs step k."""
    pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[backend])
    from fastbd.data import make_loader

    cfg = cfg_for(tiny_build, "unused", f"data.backend={backend}", "method.name=byol").data
    loader = make_loader(cfg, ["byol", "byol_b"], device=torch.device("cpu"), seed=0)
    it = iter(loader)
    next(it)
    with no_host_sync():
        batches = [next(it) for _ in range(len(loader) - 1)]
    assert all(len(b.views) == 2 and b.views[0].shape == (16, 3, 32, 32) for b in batches)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data, out, result):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = cfg_for(data, out, "max_steps=2", "data.batch_size=16")
    t = Trainer(cfg)
    t.fit()
    q = t.method
    torch.save({"ptr": int(q.queue_ptr), "queue": q.queue.clone()}, f"{result}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_ddp_gathers_keys(tiny_build, tmp_path):
    for attempt in range(3):  # a port freed by _free_port can be taken by another process before we bind it
        try:
            torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_build), str(tmp_path / "run"),
                                                           str(tmp_path / "res")), nprocs=2, join=True)
            break
        except torch.multiprocessing.ProcessRaisedException as e:
            if attempt == 2 or not any(w in str(e).lower() for w in ("address", "connect", "timed out")):
                raise
            import shutil
            shutil.rmtree(tmp_path / "run", ignore_errors=True)
    r0, r1 = (torch.load(tmp_path / f"res.{r}") for r in (0, 1))
    # 2 steps x 16 global keys (8 per rank, gathered) enqueued on every rank, identically
    assert r0["ptr"] == r1["ptr"] == 32
    assert torch.equal(r0["queue"], r1["queue"])
    assert (tmp_path / "run" / "encoder.safetensors").is_file()  # rank 0 wrote
    assert [r["step"] for r in read_metrics(tmp_path / "run") if r["kind"] == "step"] == [1, 2]


def test_tensorboard_sink_beside_metrics_jsonl(tmp_path, monkeypatch):
    """tensorboard=true mirrors every number of metrics.jsonl as `<kind>/<name>` scalars; without the package
    the run keeps metrics.jsonl and says how to get it."""
    import sys
    import types

    from fastbd.runs import MetricsLog

    calls = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("open", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            calls.append("flush")

        def close(self):
            calls.append("close")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    m = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True)
    m.write(kind="step", epoch=0, step=3, lr=0.1, loss=1.5, acc=0.25)
    m.write(kind="epoch", epoch=0, step=3, loss=1.4, img_per_s=10.0, seconds=2)
    m.close()
    assert calls == [("open", str(tmp_path / "tb")), ("step/lr", 0.1, 3), ("step/loss", 1.5, 3),
                     ("step/acc", 0.25, 3), ("epoch/loss", 1.4, 3), ("epoch/img_per_s", 10.0, 3),
                     ("epoch/seconds", 2, 3), "flush", "close"]
    assert [r["kind"] for r in read_metrics(tmp_path)] == ["step", "epoch"]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed: importing it fails
    said = []
    m = MetricsLog(tmp_path / "other.jsonl", tensorboard=True, log=said.append)
    m.write(kind="step", step=1, loss=1.0)
    assert m.tb is None and (tmp_path / "other.jsonl").is_file()
    assert len(said) == 1 and "pip install tensorboard" in said[0]


def test_tensorboard_events_from_a_run(tiny_build, tmp_path):
    pytest.importorskip("tensorboard")
    out = train(cfg_for(tiny_build, tmp_path / "run", "max_steps=2", "tensorboard=true"))
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_monitor_writes_a_knn_backdoor_curve_from_one_run(tiny_build, tmp_path):
    out = train(cfg_for(tiny_build, tmp_path / "run", "monitor.every=1", "monitor.k=3", "monitor.label_fraction=0.5",
                        "model.width=16"))
    checks = [r for r in read_metrics(out) if r["kind"] == "backdoor"]
    assert [r["epoch"] for r in checks] == [0, 1, 2]  # the untrained encoder, then every epoch
    for r in checks:
        assert 0 <= r["knn_clean_top1"] <= 1 and r["knn_target_fp"] <= r["knn_nontarget_count"]
        assert r["knn_target_fp_clean"] is not None and r["k"] == 3
        # the trigger shift beside them: where pasting the trigger moves the features (a diagnostic)
        assert -1 <= r["shift_cos_target"] <= 1 and r["shift_rank_target"] >= 1 and r["shift_length"] >= 0
        assert 0 <= r["shift_nearest_class"] < 4
    # off by default, and a run with it on trains the same weights: the check never touches the training RNG
    plain = train(cfg_for(tiny_build, tmp_path / "plain", "model.width=16"))
    assert not [r for r in read_metrics(plain) if r["kind"] == "backdoor"]
    a, b = load_encoder_state(out / "encoder.safetensors"), load_encoder_state(plain / "encoder.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
