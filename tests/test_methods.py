"""SSL methods and their losses, on a tiny ResNet-18 and random tensors (CPU, a few seconds each)."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from fastbd.data.base import RECIPES
from fastbd.losses import byol_loss, info_nce, mocov3_loss, msf_loss, nt_xent, simsiam_loss
from fastbd.methods import METHODS, MethodConfig, make_method
from fastbd.methods.blocks import fifo_enqueue
from fastbd.methods.byol import cosine_tau
from fastbd.methods.jigsaw import cut_tiles, jitter_tiles, permutation_set
from fastbd.methods.rotnet import rotate_all
from fastbd.models import ModelConfig, make_backbone

from conftest import no_host_sync

N = 8


def tiny_cfg(name: str, **jigsaw) -> MethodConfig:
    cfg = MethodConfig(name=name)
    for c in (cfg.moco, cfg.byol, cfg.msf, cfg.simclr):
        c.hidden, c.dim = 64, 32
    cfg.simsiam.dim, cfg.simsiam.pred_hidden, cfg.simsiam.proj_hidden = 32, 16, 64
    cfg.mocov3.dim, cfg.mocov3.mlp_dim = 32, 64
    cfg.moco.queue = cfg.msf.bank = 64
    cfg.msf.topk = 4
    for k, v in jigsaw.items():
        setattr(cfg.jigsaw, k, v)
    return cfg


def build(name: str, num_samples: int = 1000, **jigsaw):
    torch.manual_seed(0)
    enc, feat = make_backbone(ModelConfig(arch="resnet18", small_input=True))
    return make_method(tiny_cfg(name, **jigsaw), enc, feat, num_samples)


def fixed_views(method, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(N, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
            for _ in method.views()]


def target_params(method) -> list[torch.Tensor]:
    net = {"moco": "encoder_k", "byol": "encoder_t", "msf": "encoder_t", "mocov3": "encoder_t"}[method.cfg.name]
    return [p.detach().clone() for p in getattr(method, net).parameters()]


# ---- pure losses -------------------------------------------------------------------------------------

def test_info_nce_positive_dominates_and_uniform():
    q = torch.eye(8)[:4]  # 4 unit queries
    queue = torch.eye(8)[4:]  # orthogonal negatives
    assert info_nce(q, q, queue, 0.05).item() < 1e-3
    loss, logits = info_nce(q, q, F.normalize(torch.randn(6, 8), dim=1), 1.0, return_logits=True)
    assert logits.shape == (4, 7) and torch.allclose(logits[:, 0], torch.ones(4))
    # Positive no closer than the negatives: chance level over 1 + K classes.
    same = info_nce(q[:1], q[:1], q[:1].repeat(5, 1), 0.2)
    assert same.item() == pytest.approx(math.log(6), abs=1e-5)


def test_byol_loss_values_and_stop_gradient():
    p = F.normalize(torch.randn(5, 16), dim=1)
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-5)
    a, b = torch.randn(5, 16, requires_grad=True), torch.randn(5, 16, requires_grad=True)
    byol_loss(a, b).backward()
    assert a.grad is not None and b.grad is None


def naive_nt_xent(z1, z2, t, other=None):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    extra = F.normalize(other, dim=1) if other is not None else z[:0]
    n2, total = len(z), 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        cands = [k for k in range(n2) if k != i]
        logits = torch.stack([z[i] @ z[k] for k in cands] + [z[i] @ e for e in extra]) / t
        total = total - (logits[cands.index(j)] - torch.logsumexp(logits, 0))
    return total / n2


def test_nt_xent_matches_definition():
    g = torch.Generator().manual_seed(0)
    z1, z2, other = (torch.randn(4, 6, generator=g) for _ in range(3))
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(naive_nt_xent(z1, z2, 0.5).item(), rel=1e-5)
    with_other = nt_xent(z1, z2, 0.5, other)
    assert with_other.item() == pytest.approx(naive_nt_xent(z1, z2, 0.5, other).item(), rel=1e-5)
    assert with_other.item() > nt_xent(z1, z2, 0.5).item()  # more negatives, higher loss
    e = torch.eye(6)[:3]
    assert nt_xent(e, e, 0.02).item() < 1e-3  # pairs identical, everything else orthogonal


def test_msf_loss():
    q = F.normalize(torch.randn(3, 8), dim=1)
    assert msf_loss(q, q, q, topk=2).item() == pytest.approx(0.0, abs=1e-6)  # bank holds only q
    bank = F.normalize(torch.randn(10, 8), dim=1)
    t = F.normalize(torch.randn(3, 8), dim=1)
    # topk = 1 keeps only the target itself: BYOL's loss.
    assert msf_loss(q, t, bank, 1).item() == pytest.approx(byol_loss(q, t).item(), abs=1e-6)
    # topk larger than bank + self is capped: the mean over all 11 neighbours.
    every = torch.cat([t[:, None], bank[None].expand(3, -1, -1)], 1)
    want = (2 - 2 * (q[:, None] * every).sum(-1)).mean()
    assert msf_loss(q, t, bank, 50).item() == pytest.approx(want.item(), abs=1e-6)


def test_simsiam_loss_is_the_negative_cosine_with_stop_gradient():
    p = F.normalize(torch.randn(5, 16), dim=1)
    assert simsiam_loss(p, p).item() == pytest.approx(-1.0, abs=1e-6)
    assert simsiam_loss(p, -3 * p).item() == pytest.approx(1.0, abs=1e-6)  # scale-free
    a, b = torch.randn(5, 16, requires_grad=True), torch.randn(5, 16, requires_grad=True)
    simsiam_loss(a, b).backward()
    assert a.grad is not None and b.grad is None


def test_mocov3_loss_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    q, k, other = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    qn, kn, on = (F.normalize(x, dim=1) for x in (q, k, other))
    for t in (1.0, 0.2):
        want = F.cross_entropy(qn @ kn.T / t, torch.arange(4)) * 2 * t  # the reference's contrastive_loss
        assert mocov3_loss(q, k, t).item() == pytest.approx(want.item(), rel=1e-5)
        # the other ranks' keys are extra negatives, as the reference's gathered keys with labels N * rank + i
        gathered = torch.cat([on[:3], kn, on[3:]])  # this rank sits second of three
        want = F.cross_entropy(qn @ gathered.T / t, torch.arange(4) + 3) * 2 * t
        assert mocov3_loss(q, k, t, other).item() == pytest.approx(want.item(), rel=1e-5)
    e = torch.eye(8)[:4]
    assert mocov3_loss(e, e, 0.02).item() < 1e-3
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    mocov3_loss(a, b, 1.0).backward()
    assert a.grad is not None and b.grad is None


def test_simsiam_and_mocov3_heads_follow_the_references():
    enc, feat = make_backbone(ModelConfig(arch="resnet18", small_input=True))
    cfg = MethodConfig(name="simsiam")
    m = make_method(cfg, enc, feat, 10)
    lin = [x for x in m.projector if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(512, 512), (512, 512), (512, 2048)]
    assert all(x.bias is None for x in lin) and not m.projector[-1].affine  # BN(dim, affine=False) last
    assert [x.out_features for x in m.predictor if isinstance(x, torch.nn.Linear)] == [512, 2048]
    groups = m.optim_groups()
    assert groups[1]["fixed_lr"] and {id(p) for p in groups[1]["params"]} == {id(p) for p in m.predictor.parameters()}
    assert sum(len(g["params"]) for g in groups) == len([p for p in m.parameters() if p.requires_grad])
    cfg = MethodConfig(name="mocov3")
    m = make_method(cfg, enc, feat, 10)
    assert [(x.in_features, x.out_features) for x in m.projector if isinstance(x, torch.nn.Linear)] == [
        (512, 4096), (4096, 256)]
    assert not m.projector[-1].affine and not isinstance(m.predictor[-1], torch.nn.BatchNorm1d)
    assert len(m.optim_groups()) == 1 and m.momentum == 0.99
    m.after_step(0.5)
    assert m.momentum == pytest.approx(cosine_tau(0.99, 0.5)) and 0.99 < m.momentum < 1
    fresh = make_method(cfg, make_backbone(ModelConfig(arch="resnet18", small_input=True))[0], feat, 10)
    fresh.load_state_dict(m.state_dict())  # the momentum is checkpointed
    assert fresh.momentum == m.momentum


def test_losses_run_in_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    q, k, bank = (F.normalize(torch.randn(n, 16, generator=g), dim=1) for n in (4, 4, 12))
    qh, kh, bh = q.bfloat16().requires_grad_(), k.bfloat16(), bank.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = [info_nce(qh, kh, bh, 0.2), byol_loss(qh, kh), nt_xent(qh, kh, 0.2), msf_loss(qh, kh, bh, 3)]
    ref = [info_nce(qh.float(), kh.float(), bh.float(), 0.2), byol_loss(qh.float(), kh.float()),
           nt_xent(qh.float(), kh.float(), 0.2), msf_loss(qh.float(), kh.float(), bh.float(), 3)]
    for o, r in zip(out, ref):
        assert o.dtype == torch.float32 and o.item() == pytest.approx(r.item(), rel=1e-6)
    sum(out).backward()
    assert qh.grad is not None and qh.grad.dtype == torch.bfloat16


# ---- methods -----------------------------------------------------------------------------------------

def test_registry_and_views():
    assert set(METHODS) == {"moco", "byol", "msf", "simclr", "jigsaw", "rotnet", "compress", "simsiam", "mocov3"}
    for cls in METHODS.values():
        assert cls.VIEWS and all(v in RECIPES for v in cls.VIEWS)
    enc, feat = make_backbone(ModelConfig(arch="resnet18", small_input=True))
    with pytest.raises(ValueError, match="'nope'.*byol"):
        make_method(MethodConfig(name="nope"), enc, feat, 10)
    cfg = tiny_cfg("byol")
    cfg.byol.asymmetric = True
    assert make_method(cfg, enc, feat, 10).views() == ("byol_a", "byol_b")
    assert METHODS["byol"].views_for(cfg) == ("byol_a", "byol_b")
    assert METHODS["byol"].views_for(tiny_cfg("byol")) == ("byol", "byol")
    assert METHODS["moco"].views_for(tiny_cfg("moco")) == ("mocov2", "mocov2")
    assert METHODS["msf"].VIEWS == ("weak", "mocov2")
    assert METHODS["simsiam"].VIEWS == ("mocov2", "mocov2") and METHODS["mocov3"].VIEWS == ("byol_a", "byol_b")


@pytest.mark.parametrize("name,steps,size", [
    ("moco", 8, 16), ("byol", 6, 16), ("msf", 6, 16), ("simclr", 6, 16), ("jigsaw", 8, 48), ("rotnet", 6, 16),
    ("simsiam", 6, 16), ("mocov3", 6, 16),
])
def test_method_trains_on_a_fixed_batch(name, steps, size):
    m = build(name)
    views = fixed_views(m, size)
    momentum = name in ("moco", "byol", "msf", "mocov3")
    if name == "moco":  # fill the queue with real keys first: its random init makes step 0 look too easy
        with torch.no_grad():
            for _ in range(m.queue.shape[0] // N):
                m(views)
                m.after_step(0.0)  # the keys go into the queue after the step
    before = target_params(m) if momentum else None
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for i in range(steps):
        torch.manual_seed(i % 2)  # jigsaw's permutations: two fixed sets of labels
        with no_host_sync():  # the step must not wait for the device: logs stay tensors until the trainer reads
            loss, logs = m(views)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert logs and all(isinstance(v, float) or (torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad)
                            for v in logs.values())
        assert torch.is_tensor(logs["loss"]) and logs["loss"].item() == loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with no_host_sync():
            m.after_step((i + 1) / steps)
        losses.append(loss.item())
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    if momentum:
        after = target_params(m)
        assert any(not torch.equal(a, b) for a, b in zip(before, after))
        assert all(p.grad is None for n, p in m.named_parameters() if n.split(".")[0].endswith(("_k", "_t")))


def test_moco_queue_capped_pointer_advances_and_wraps():
    m = build("moco", num_samples=20)
    assert m.queue.shape == (20, 32) and torch.allclose(m.queue.norm(dim=1), torch.ones(20))
    views = fixed_views(m)
    ptrs = []
    for _ in range(3):
        with torch.no_grad():
            m(views)
        m.after_step(0.0)  # where the keys are enqueued, after backward
        ptrs.append(int(m.queue_ptr))
    assert ptrs == [8, 16, 4]
    buf, ptr = torch.zeros(5, 2), torch.tensor(3)
    fifo_enqueue(buf, ptr, torch.arange(8.0).view(4, 2))
    assert int(ptr) == 2 and buf[3:].tolist() == [[0, 1], [2, 3]] and buf[:2].tolist() == [[4, 5], [6, 7]]
    fifo_enqueue(buf, ptr, torch.arange(14.0).view(7, 2))  # more rows than slots: the last 5 win, a full lap
    assert buf[:, 0].tolist() == [10, 12, 4, 6, 8] and int(ptr) == 2


def test_byol_tau_schedule():
    assert cosine_tau(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_tau(0.99, 1.0) == pytest.approx(1.0)
    taus = [cosine_tau(0.996, p / 10) for p in range(11)]
    assert taus == sorted(taus)
    m = build("byol")
    m.after_step(1.0)
    assert m.tau == pytest.approx(1.0)
    fresh = build("byol")
    fresh.load_state_dict(m.state_dict())  # tau is checkpointed
    assert fresh.tau == pytest.approx(1.0)


def test_jigsaw_permutation_set():
    a, b = permutation_set(9, 100), permutation_set(9, 100)
    assert a.shape == (100, 9) and (a == b).all()
    assert len({tuple(r) for r in a}) == 100 and all(sorted(r) == list(range(9)) for r in a)
    assert len({tuple(r) for r in permutation_set(4, 24)}) == 24  # small grids: every permutation
    with pytest.raises(ValueError, match="permutations"):
        permutation_set(4, 25)
    assert build("jigsaw", permutations=30).perms.shape == (30, 9)


def test_jigsaw_tiles():
    x = torch.arange(2 * 3 * 50 * 50, dtype=torch.float32).view(2, 3, 50, 50)
    tiles = cut_tiles(x, 3)  # 50 px -> 3 tiles of 16, centre 48 px
    assert tiles.shape == (2, 9, 3, 16, 16)
    assert torch.equal(tiles[1, 5], x[1, :, 1 + 16:1 + 32, 1 + 32:1 + 48])  # row 1, column 2
    j = jitter_tiles(tiles.flatten(0, 1), 4)
    assert j.shape == (18, 3, 12, 12)
    m = build("jigsaw", permutations=10, tile_jitter=2)
    loss, _ = m(fixed_views(m, 48))
    assert torch.isfinite(loss)


def test_rotnet_rotations_and_channels_last():
    x = torch.randn(2, 3, 16, 16)
    r, y = rotate_all(x, 4)
    assert r.shape == (8, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(r[2], torch.rot90(x[0], 1, dims=(1, 2)))
    cl = x.contiguous(memory_format=torch.channels_last)
    rc, _ = rotate_all(cl, 4)
    assert rc.is_contiguous(memory_format=torch.channels_last) and torch.equal(rc, r)
    m = build("rotnet").eval()
    with torch.no_grad():
        a, _ = m([x])
        b, _ = m([cl])
    assert a.item() == pytest.approx(b.item(), rel=1e-4)


TOY = '''"""A toy method: regress each image's mean colour from its features (to show what a new method takes)."""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from .base import Method


@dataclass
class ToyConfig:
    scale: float = 1.0  # loss weight


class Toy(Method):
    VIEWS = ("weak",)
    Config = ToyConfig

    def __init__(self, encoder, feat_dim, cfg, num_samples):
        super().__init__(encoder, feat_dim, cfg, num_samples)
        self.head = nn.Linear(feat_dim, 3)

    def forward(self, views):
        x = views[0]
        loss = self.cfg.toy.scale * F.mse_loss(self.head(self.encoder(x)), x.mean((2, 3)))
        return loss, {"loss": loss.detach()}
'''

RUN_TOY = '''
import json, sys
import fastbd
from fastbd.config import load_config
from fastbd.runs import read_metrics
from fastbd.train import TrainConfig, train
assert fastbd.__file__.startswith(sys.argv[1]), fastbd.__file__
out = train(load_config(TrainConfig, None, sys.argv[2:]))
print(json.dumps({"rows": read_metrics(out), "config": (out / "config.yaml").read_text()}))
'''


@pytest.mark.slow
def test_a_new_method_is_one_file_and_one_registry_entry(tiny_build, tmp_path):
    """A copy of the package gets methods/toy.py and two lines in the registry (its import and its entry),
    nothing else; its config section exists, takes overrides, and it trains through the one trainer."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pkg = tmp_path / "src" / "fastbd"
    shutil.copytree(root / "fastbd", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "methods" / "toy.py").write_text(TOY)
    registry = pkg / "methods" / "__init__.py"
    before = registry.read_text()
    after = before.replace("from .simclr import SimCLR\n", "from .simclr import SimCLR\nfrom .toy import Toy\n")
    after = after.replace('    "simclr": SimCLR,\n', '    "simclr": SimCLR,\n    "toy": Toy,\n')
    assert len(after.splitlines()) == len(before.splitlines()) + 2
    registry.write_text(after)
    args = [f"data.path={tiny_build}", f"out={tmp_path / 'run'}", "data.batch_size=16", "data.res=32",
            "data.workers=0", "data.backend=torch", "model.small_input=true", "log_every=1", "max_steps=1",
            "method.name=toy", "method.toy.scale=2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), str(root)])}
    res = subprocess.run([sys.executable, "-c", RUN_TOY, str(pkg), *args], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    [step] = [r for r in out["rows"] if r["kind"] == "step"]
    assert step["step"] == 1 and math.isfinite(step["loss"])
    assert "name: toy" in out["config"] and "toy:\n    scale: 2.0" in out["config"]


def test_short_run_traps_are_named():
    from fastbd.methods.blocks import ema_warning, ring_warning

    assert ring_warning("method.moco.queue", 65536, 5000) == ["method.moco.queue=65536 is capped to the 5000 training images"]
    assert ring_warning("method.moco.queue", 4096, 5000) == []
    from fastbd.methods.moco import queue_share_warning

    (w,) = queue_share_warning(4096, 5250)
    assert "method.moco.queue=4096 holds 78% of the 5250 training images" in w
    assert queue_share_warning(512, 5250) == [] and queue_share_warning(65536, 126689) == []  # 10%; the paper's 52%
    assert "holds 100%" in queue_share_warning(65536, 5000)[0]  # capped: the cap's own note says so too
    (w,) = ema_warning("method.moco.momentum", 0.999, 300)
    assert "~1000 steps" in w and "300 steps" in w
    assert ema_warning("method.moco.momentum", 0.99, 900) == []  # 100 steps of 900
