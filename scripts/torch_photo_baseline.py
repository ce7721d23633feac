"""A plain PyTorch script on the same photo set, as a yardstick: python torch_photo_baseline.py PHOTOS [SEED]

Three conv blocks like cnncli's default preset, Adam 1e-3, batch 64, 64 px (whole image squashed), pixels / 255
without mean/std normalisation, 50 epochs (cnncli's auto epoch count for 240 photos), last epoch scored on test/.
"""
import sys, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

root, seed, size, epochs = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0, 64, 50
torch.manual_seed(seed)
torch.set_num_threads(2)
classes = sorted(d.name for d in (root / "train").iterdir())


def load(part):
    xs, ys = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / part / c).glob("*.jpg")):
            im = ImageOps.exif_transpose(Image.open(f)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            xs.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255)
            ys.append(k)
    return torch.tensor(np.stack(xs)), torch.tensor(ys)


t0 = time.monotonic()
(x, y), (xt, yt) = load("train"), load("test")
block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
net = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 64), nn.Flatten(),
                    nn.Linear(64 * (size // 8) ** 2, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, len(classes)))
opt = torch.optim.Adam(net.parameters(), 1e-3)
for epoch in range(epochs):
    net.train()
    for idx in torch.randperm(len(x)).split(64):
        xb = x[idx]
        flip = torch.rand(len(idx)) < 0.5  # random horizontal flips, as a typical script does
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), y[idx]).backward()
        opt.step()
net.eval()
with torch.no_grad():
    acc = (net(xt).argmax(1) == yt).float().mean().item()
print(f"seed {seed}: test accuracy {acc:.4f}, {time.monotonic() - t0:.1f} s")
