"""PatchSearch (fastbd/defenses): k-means, pasting and box mapping, scoring against the manifest on constructed
cases, the whole defense on a toy build with a stand-in encoder that responds to the trigger, and bad input."""

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from beton_builders import build, load_manifest, load_spec
from beton_builders.files import write_json
from beton_builders.manifest import training_set
from fastbd.cli import app
from fastbd.config import load_config
from fastbd.data.base import IMAGENET_MEAN, IMAGENET_STD
from fastbd.data.samples import TarSamples
from fastbd.defenses.images import crop_to_stored, crop_windows, paste
from fastbd.defenses.kmeans import kmeans
from fastbd.defenses.patchsearch import PatchSearchConfig, patchsearch
from fastbd.defenses.scoring import average_precision, iou, pr_at_cutoffs, ranking, ranks, score_detection
from fastbd.runs import data_record

from conftest import quiet

# 4 classes of 40 images at 48 px, 20 of the target class poisoned with an 8-px trigger; 4:4:4 JPEG at
# quality 95 keeps the trigger's pixels nearly the same in every copy.
TOY = ["name=toy", "source.synthetic.num_classes=4", "source.synthetic.train_per_class=40",
       "source.synthetic.val_per_class=2", "source.synthetic.width=48", "source.synthetic.height=48",
       "trigger.width=8", "attack.target=1", "attack.rates=[0.5]", "storage.max_resolution=48",
       "storage.val_resize=48", "storage.val_crop=40", "storage.chroma=444", "storage.jpeg_quality=95",
       "storage.shard_size=64", "workers=2"]


# ----- k-means, pixels, boxes ---------------------------------------------------------------------------

def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0], [-4.0, 0, 0]])
    return torch.cat([c + 0.3 * torch.randn(50, 3, generator=g) for c in centres]), torch.arange(4).repeat_interleave(50)


def test_kmeans_is_seeded_deterministic_and_finds_separated_blobs():
    x, label = _blobs()
    a, b = kmeans(x, 4, 20, seed=3), kmeans(x, 4, 20, seed=3)
    assert torch.equal(a.assign, b.assign) and torch.equal(a.centroids, b.centroids) and torch.equal(a.dist, b.dist)
    for c in range(4):  # each blob is one cluster
        assert len(set(a.assign[label == c].tolist())) == 1
    assert len(set(a.assign.tolist())) == 4
    assert torch.allclose(a.dist, ((x - a.centroids[a.assign]) ** 2).sum(1), atol=1e-4)
    many = kmeans(x, 30, 5, seed=0)  # more clusters than blobs: none is left empty
    assert len(set(many.assign.tolist())) == 30
    with pytest.raises(ValueError, match="search.clusters"):
        kmeans(x, 201, 2)


def test_paste_crop_and_box_mapping_are_exact():
    images = torch.zeros(2, 3, 10, 10, dtype=torch.uint8)
    patches = torch.stack([torch.full((3, 3, 3), 7, dtype=torch.uint8), torch.full((3, 3, 3), 9, dtype=torch.uint8)])
    out = paste(images, patches, torch.tensor([0, 6]), torch.tensor([2, 7]))
    assert out[0, :, 0:3, 2:5].eq(7).all() and out[0].sum() == 7 * 27
    assert out[1, :, 6:9, 7:10].eq(9).all() and out[1].sum() == 9 * 27
    assert images.sum() == 0  # a copy
    win = crop_windows(out, torch.tensor([0, 6]), torch.tensor([2, 7]), 3)
    assert torch.equal(win, patches)
    # a 100 x 50 stored image: Resize(40) -> 80 x 40, CenterCrop(32) -> offsets x 24, y 4; scale 0.8
    box = crop_to_stored([4], [8], 8, [[100, 50]], res=32, resize=40)
    assert np.allclose(box, [[(8 + 24) / 0.8, (4 + 4) / 0.8, 10, 10]])


# ----- scoring against the manifest ------------------------------------------------------------------------

def test_scoring_is_exact_on_a_constructed_case():
    # a training set of 6 images: .beton 0-3 clean, 10 and 11 poisoned copies with known boxes
    manifest = {"poisoned": [{"index": 10, "box": [10, 10, 10, 10]}, {"index": 11, "box": [0, 0, 4, 4]}]}
    indices = np.array([0, 1, 2, 3, 10, 11])
    score = np.array([5, 0, 1, 0, 9, 0])  # the search found image 10 first, missed 11
    scored = np.array([True, False, True, False, True, False])
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.7])
    removed = p > 0.5  # 0, 10 and 11
    boxes = np.full((6, 4), np.nan)
    boxes[4] = [15, 10, 10, 10]  # half of the true box: IoU 50 / 150
    boxes[0] = [0, 0, 5, 5]
    r = score_detection(manifest, indices, score, scored, p, removed, boxes, topk=2)
    assert r["poisoned_images"] == 2 and r["training_images"] == 6
    assert r["removed"] == {"count": 3, "true_positives": 2, "precision": 2 / 3, "recall": 1.0,
                            "poisoned_left": 0, "clean_removed": 1}
    # search order: 10 (9), 0 (5), 2 (1), then the zeros by position: 1, 3, 11
    ranks_by_index = {e["index"]: (e["search_rank"], e["classifier_rank"]) for e in r["poisoned_ranks"]}
    assert ranks_by_index == {10: (1, 2), 11: (6, 3)}
    assert r["average_precision"] == {"search": (1 + 2 / 6) / 2, "classifier": (1 / 2 + 2 / 3) / 2}
    cut = {c["k"]: c for c in r["cutoffs"]}
    assert cut[2]["search_precision"] == 0.5 and cut[2]["search_recall"] == 0.5
    assert cut[3]["classifier_precision"] == 2 / 3 and cut[3]["classifier_recall"] == 1.0
    assert r["boxes"]["iou"] == {"n": 1, "mean": 50 / 150, "median": 50 / 150, "at_least_0.5": 0.0}
    assert r["boxes"]["coverage"]["mean"] == 0.5
    assert [t["index"] for t in r["top"]] == [10, 0] and r["top"][0]["iou"] == 50 / 150 and r["top"][1]["iou"] is None


def test_ranking_helpers():
    order = ranking(np.array([1, 3, 3, 0]))
    assert order.tolist() == [1, 2, 0, 3] and ranks(order).tolist() == [3, 1, 2, 4]
    prec, rec = pr_at_cutoffs(order, np.array([True, False, True, False]))
    assert prec.tolist() == [0, 0.5, 2 / 3, 0.5] and rec.tolist() == [0, 0.5, 1, 1]
    assert average_precision(order, np.array([False] * 4)) is None
    a, c = iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 2, 2]]))
    assert a[0] == 1 / 7 and c[0] == 1 / 4


# ----- the whole defense on a toy build ------------------------------------------------------------------------

class _Match(nn.Module):
    """'layer4' of the stand-in: channel 0 is a smooth bump wherever the image matches the trigger (its
    template, normalised), times a large gain; channels 1-3 are the image's mean colour, spread flat."""

    def __init__(self, template: torch.Tensor, gain: float = 3000.0, tau: float = 0.05):
        super().__init__()
        self.register_buffer("t", template)
        self.gain, self.tau = gain, tau

    def forward(self, x):
        t, k = self.t, self.t.shape[-1]
        xp = F.pad(x, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2), mode="replicate")
        msd = (F.conv2d(xp.pow(2).sum(1, keepdim=True), torch.ones(1, 1, k, k)) - 2 * F.conv2d(xp, t[None])
               + t.pow(2).sum()).clamp_min(0) / t.numel()
        bump = self.gain * torch.exp(-msd / self.tau)
        for _ in range(2):  # smooth, as a coarse CNN map upsampled is
            bump = F.avg_pool2d(bump, 5, stride=1, padding=2, count_include_pad=False)
        return torch.cat([bump, x.mean((2, 3), keepdim=True).expand(-1, 3, *x.shape[-2:])], 1)


class TriggerEncoder(nn.Module):
    """A stand-in for a backdoored encoder: its features are dominated by the trigger."""

    def __init__(self, template):
        super().__init__()
        self.layer4 = _Match(template)

    def forward(self, x):
        return self.layer4(x).mean((2, 3))


def _template(folder, manifest) -> torch.Tensor:
    p = manifest["poisoned"][0]
    im = np.asarray(Image.open(io.BytesIO(TarSamples(folder, "train").read(p["index"]))).convert("RGB"), np.float32)
    x, y, w, h = p["box"]
    t = torch.from_numpy(im[y:y + h, x:x + w] / 255).permute(2, 0, 1)
    return (t - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    folder = root / "build"
    build(load_spec(None, TOY), folder, log=quiet)
    m = load_manifest(folder)
    run = root / "run"  # a run folder as `fastbd train` writes it, minus the encoder (the stand-in replaces it)
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  path: {folder}\n  rate: 0.5\n")
    write_json(run / "meta.json", {"data": data_record(folder, training_set(m, 0.5))})
    meta = {"arch": "toy", "model": {"arch": "resnet18", "small_input": True, "stem_stride": 2, "width": 64}}
    return {"folder": folder, "run": run, "manifest": m, "encoder": (TriggerEncoder(_template(folder, m)).eval(), meta)}


TOY_DEFENSE = ["res=48", "resize=48", "workers=0", "backend=torch", "device=cpu", "search.clusters=8",
               "search.test_images=40", "classifier.topk=5", "classifier.models=1", "classifier.max_iterations=300",
               "classifier.batch_size=32", "classifier.width=16", "classifier.eval_every=20"]


@pytest.mark.slow
def test_patchsearch_finds_the_poisoned_images_and_their_boxes(toy, tmp_path):
    out = tmp_path / "defense"
    cfg = load_config(PatchSearchConfig, None, [f"data={toy['folder']}", f"out={out}", *TOY_DEFENSE])
    rep = patchsearch(cfg, toy["run"], log=quiet, encoder=toy["encoder"])
    s = rep["scored_against_manifest"]
    assert s["training_images"] == 160 and s["poisoned_images"] == 20
    # the search ranks poisoned images first, and its windows hold their whole trigger: 13-px windows (60/224 of
    # 48 px) around 8-px triggers, so IoU is 64/169 at best, and reached
    assert all(t["poisoned"] for t in s["top"]) and all(t["score"] > 20 for t in s["top"])
    assert s["boxes"]["coverage"]["mean"] == 1.0 and s["boxes"]["iou"]["mean"] == pytest.approx(64 / 169)
    assert s["cutoffs"][0]["k"] == 5 and s["cutoffs"][0]["search_precision"] == 1.0
    # the classifier learnt the patch: it ranks the poisoned images above the clean ones
    assert s["average_precision"]["classifier"] > 0.9 and s["removed"]["recall"] >= 0.9
    files = {p.name for p in out.iterdir()}
    assert {"ranked.csv", "ranked_indices.npy", "poison_scores.npy", "removed_indices.npy", "filtered_indices.npy",
            "filtered_indices.json", "pr_curve.csv", "pr_curve.png", "report.json", "report.md", "patches"} <= files
    kept, gone = np.load(out / "filtered_indices.npy"), np.load(out / "removed_indices.npy")
    assert sorted([*kept, *gone]) == sorted(training_set(toy["manifest"], 0.5).tolist())
    assert np.array_equal(training_set(toy["manifest"], 0.5, indices=out / "filtered_indices.npy"), kept)
    assert len(list((out / "patches").glob("*.png"))) == 5
    md = (out / "report.md").read_text()
    assert "precision" in md and "training the suspect encoder" in md and "iterative search" in md
    assert set(rep["cost"]["phases"]) >= {"iterative search (Grad-CAM windows, flip test)"}
    assert json.loads((out / "report.json").read_text())["defense"] == "patchsearch"
    scores = np.load(out / "poison_scores.npy")
    cfg.classifier.max_iterations = 1  # seeded: the same search again (the classifier aside), the folder replaced
    again = patchsearch(cfg, toy["run"], log=quiet, encoder=toy["encoder"])
    assert np.array_equal(np.load(out / "poison_scores.npy"), scores)
    assert [e["search_rank"] for e in again["scored_against_manifest"]["poisoned_ranks"]] == \
        [e["search_rank"] for e in s["poisoned_ranks"]]


# ----- bad input ------------------------------------------------------------------------------------------

def _cli(*args):
    res = CliRunner().invoke(app, list(map(str, args)))
    return res.exit_code, res.output


def test_bad_input_is_one_line_naming_the_field(toy, tmp_path):
    run, folder = toy["run"], toy["folder"]
    for args, expect in [
        (["defend", "nosuch", "--run", run, "--data", folder], "defense: 'nosuch'"),
        (["defend", "patchsearch", "--run", tmp_path / "none", "--data", folder], "config.yaml not found"),
        (["defend", "patchsearch", "--run", run, "--data", folder, "search.colour=1"], "search.colour"),
        (["defend", "patchsearch", "--run", run, "--data", folder, "res=48", "resize=48", "search.window=48",
          "verify_files=false"], "search.window"),
        (["defend", "patchsearch", "--run", run, "--data", folder, "res=48", "resize=40"], "resize"),
        (["defend", "patchsearch", "--run", run, "--data", folder, "classifier.topk=80"], "classifier.topk"),
        (["defend", "patchsearch", "--run", run, "--data", folder, f"out={run}"], "holds the run folder"),
        (["defend", "patchsearch", "--run", run, "--data", tmp_path], "no manifest"),
    ]:
        code, out = _cli(*args)
        errors = [ln for ln in out.splitlines() if ln.startswith("error:")]  # beside the progress lines
        assert code == 2 and len(errors) == 1 and expect in errors[0], (args, out)
        assert "Traceback" not in out
    code, out = _cli("config", "patchsearch", "search.clusters=100")
    assert code == 0 and "clusters: 100" in out and "window" in out
