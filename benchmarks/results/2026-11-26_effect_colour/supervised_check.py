"""Supervised sanity check: are the shape-only (shared_hues=1) classes learnable at 32 px by the effect
recipe's backbone? Renders 3,000 images directly, trains the half-width ResNet-18 with labels, 15 epochs.
    python benchmarks/results/2026-11-26_effect_colour/supervised_check.py SHARED_HUES DISTRACTORS   (logs: epoch, loss, val top-1 %, s)"""
import sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from beton_builders.synthetic import render
from fastbd.models import ModelConfig, make_backbone
torch.manual_seed(0); torch.set_num_threads(2)
K = int(sys.argv[1]); DIS = int(sys.argv[2]); NTR, NVA = 300, 50
def imgs(split, n):
    X, Y = [], []
    for i in range(n * 10):
        a = render(0, split, i, i % 10, 10, 112, 112, 0.0, distractors=DIS, shared_hues=K)
        X.append(np.asarray(Image.fromarray(a).resize((36, 36), Image.BILINEAR))); Y.append(i % 10)
    return torch.tensor(np.stack(X)).permute(0, 3, 1, 2).float() / 255, torch.tensor(Y)
xtr, ytr = imgs("train", NTR); xva, yva = imgs("val", NVA)

net, dim = make_backbone(ModelConfig(small_input=True, stem_stride=2, width=32))
head = nn.Linear(dim, 10); model = nn.Sequential(net, head)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]; std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
t = time.time()
for ep in range(15):
    model.train(); perm = torch.randperm(len(xtr))
    for b in range(0, len(xtr), 64):
        idx = perm[b:b + 64]; x = xtr[idx]
        i, j = np.random.randint(0, 5, 2); x = x[:, :, i:i + 32, j:j + 32]
        if np.random.rand() < 0.5: x = x.flip(3)
        loss = F.cross_entropy(model((x - mean) / std), ytr[idx]); opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model((xva[:, :, 2:34, 2:34] - mean) / std).argmax(1) == yva).float().mean().item()
    print(ep, round(loss.item(), 3), round(acc * 100, 1), round(time.time() - t), flush=True)
