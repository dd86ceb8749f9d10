"""PatchSearch's poison classifier (Tejankar et al., CVPR 2023, Sec. 3.5; reference code
UCDvision/PatchSearch, patch_search_poison_classifier.py, run as its run_pipeline.sh runs it).

The search ranks the training set by poison score; its top-k images' candidate patches are the trigger's
best guesses. A small ResNet (one BasicBlock per stage, 2 outputs) learns to tell an image with one of
those patches pasted on it from one without: training images come from the ranked set minus its top
`top_p` = 10% (likely poisoned) and its bottom k; each is a RandomResizedCrop(224, scale 0.2-1) that gets,
with probability 1/2, a random top-k patch resized to 20-80 px and pasted with a 10-px margin (label 1),
then colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8), grayscale (p 0.2) and a flip. SGD (lr 0.01, momentum
0.9, wd 1e-4), cosine over 2,000 steps of 32 images; every 20 steps it is checked on the top-k (label 1)
against the bottom-k (label 0) centre crops and stops once the F1 (in whole percent) was the same at the
last 10 checks. Five such models average their logits; every training image they call poisoned is
removed. Pixel sizes scale with res / 224.
Crops come from fastbd's own loaders (make_loader: ffcv, dali or torch) with a crop-only recipe; the paste
and the colour augmentation then run batched on the device (fastbd.data.gpu_aug).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastbd.data import DataConfig, Recipe, make_loader
from fastbd.data import aug_impl as resolve_impl
from fastbd.data.base import IMAGENET_MEAN, IMAGENET_STD
from fastbd.data.gpu_aug import augment, step_generator
from fastbd.defenses.images import CropReader, normalise
from fastbd.device import autocast
from fastbd.models import ModelConfig, make_backbone

CROP = "patchsearch_crop"  # the loader's recipe: RandomResizedCrop only; the rest follows the paste
COLOUR = Recipe(flip=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, gray_p=0.2, blur_p=0.0)


def make_classifier(model: ModelConfig) -> nn.Module:
    net, dim = make_backbone(model)
    return nn.Sequential(net, nn.Linear(dim, 2))


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


def paste_random(x: torch.Tensor, patches: torch.Tensor, cc, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Half of the images (0-1 floats) get a random patch, resized to a random side in [patch_min, patch_max)
    and placed with `margin` px to spare (all at 224 px, scaled to the crop); returns (images, labels)."""
    n, r = len(x), x.shape[-1]
    k = r / 224
    lo, hi, margin = max(1, round(cc.patch_min * k)), max(2, round(cc.patch_max * k)), round(cc.margin * k)
    hi = min(hi, r - 2 * margin)  # the reference's 224 - (s + margin) > margin for every s it draws
    label = (torch.rand(n, generator=gen) < 0.5).long()
    which = torch.randint(0, len(patches), (n,), generator=gen)
    side = torch.randint(lo, max(lo + 1, hi), (n,), generator=gen)
    u = torch.rand(n, 2, generator=gen)
    x = x.clone()
    for i in torch.nonzero(label).flatten().tolist():
        s = int(side[i])
        span = max(1, r - s - 2 * margin)  # corners in [margin, r - (s + margin))
        top, left = margin + int(u[i, 0] * span), margin + int(u[i, 1] * span)
        p = F.interpolate(patches[which[i]][None], size=(s, s), mode="bicubic", align_corners=False)
        x[i, :, top:top + s, left:left + s] = p[0].clamp(0, 1)
    return x, label.to(x.device)


@torch.no_grad()
def predict(models: list[nn.Module], images: torch.Tensor, amp, batch: int) -> torch.Tensor:
    """The ensemble's mean logits (N, 2) on uint8 centre crops."""
    out = []
    for s in range(0, len(images), batch):
        x = normalise(images[s:s + batch])
        with autocast(images.device, amp):
            out.append(torch.stack([m(x).float() for m in models]).mean(0))
    return torch.cat(out) if out else torch.zeros(0, 2)


def _f1(logits: torch.Tensor, truth: torch.Tensor) -> float:
    pred = logits.argmax(1).cpu()
    tp = int((pred & truth).sum())
    recall = tp / max(1, int(truth.sum()))
    precision = tp / int(pred.sum()) if int(pred.sum()) else 0.0
    return 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)


def train_ensemble(cfg, folder, pool: np.ndarray, val: tuple[torch.Tensor, torch.Tensor], patches: torch.Tensor,
                   model: ModelConfig, device: torch.device, amp, log: Callable[[str], None]) -> tuple[list, list]:
    """`cfg.classifier.models` classifiers on `pool` (.beton indices) with `patches` (k, 3, w, w) in 0-1;
    `val` = (uint8 crops, 0/1 labels). Returns (models in eval mode, per model {steps, f1})."""
    cc = cfg.classifier
    batch = min(cc.batch_size, len(pool))
    dcfg = DataConfig(path=str(folder), backend=cfg.backend, res=cfg.res, batch_size=batch, workers=cfg.workers,
                      verify_files=False, drop_last=True,
                      recipes={CROP: Recipe(scale_min=cc.scale_min, flip=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)})
    loader = make_loader(dcfg, [CROP], device=device, seed=cfg.seed, subset=pool)
    impl = resolve_impl("auto", device)
    models, history = [], []
    for m in range(cc.models):
        torch.manual_seed(cfg.seed * 1000 + m)
        net = make_classifier(model).to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=cc.lr, momentum=cc.momentum, weight_decay=cc.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cc.max_iterations)
        step, epoch, f1s, settled = 0, 0, [], False
        net.train()
        while step < cc.max_iterations and not settled:
            loader.set_epoch(m * 100_000 + epoch)  # each model its own order and crops
            epoch += 1
            for b in loader:
                if step % cc.eval_every == 0:  # the reference checks at step 0 too
                    net.eval()
                    f1s.append(round(100 * _f1(predict([net], val[0], amp, cfg.batch_size), val[1])))
                    net.train()
                    settled = len(f1s) > cc.patience and len(set(f1s[-cc.patience:])) == 1
                    if settled:  # the F1 has not moved for `patience` checks
                        break
                gen = torch.Generator().manual_seed(cfg.seed * 7919 + m * 104_729 + step)
                x, y = paste_random(_unnormalise(b.views[0]), patches, cc, gen)
                x = augment(x.mul_(255), COLOUR, step_generator(device, cfg.seed + m, epoch, step), impl)
                with autocast(device, amp):
                    loss = F.cross_entropy(net(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if step >= cc.max_iterations:
                    break
        net.eval()
        models.append(net)
        history.append({"steps": step, "checks": len(f1s), "settled": settled, "f1": f1s[-1] if f1s else None})
        log(f"[patchsearch] classifier {m + 1}/{cc.models}: {history[-1]['steps']} steps, "
            f"F1 {history[-1]['f1']}% on the top-{cc.topk} vs bottom-{cc.topk} images")
    return models, history


def filter_set(models: list, reader: CropReader, indices: np.ndarray, device, amp, batch: int) -> np.ndarray:
    """p(poisoned) (N,) of every training image under the ensemble (softmax of its mean logits)."""
    out = []
    for images, _ in reader.batches(indices, batch):
        out.append(F.softmax(predict(models, images.to(device), amp, batch), 1)[:, 1].cpu())
    return torch.cat(out).numpy().astype(np.float64)
