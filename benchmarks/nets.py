"""The benchmark networks, their data, and their PyTorch twin: shared by every side of the side-by-side benchmarks.

This module imports neither cnncli nor torch at import time, so a PyTorch process that uses it runs exactly as a
PyTorch user's would (no cnncli.config, no thread variables of ours).
"""

import gzip
import os
import struct
from pathlib import Path

import numpy as np

M1 = "conv16k3-relu-pool2-conv32k3-relu-pool2-fc64-relu-fc"
# cnncli's default preset, spelled out so the PyTorch side need not import cnncli (side.py checks that it matches).
DEFAULT = "conv32k3p1-relu-pool2-conv64k3p1-relu-pool2-conv64k3p1-relu-pool2-fc128-relu-drop0.25-fc"

# name: (spec, input (C, H, W), classes, training batch, inference batch)
NETS = {
    "m1": (M1, (1, 28, 28), 10, 64, 256),
    "default28": (DEFAULT, (1, 28, 28), 10, 64, 256),
    "default64": (DEFAULT, (3, 64, 64), 10, 32, 32),
    "default128": (DEFAULT, (3, 128, 128), 10, 32, 32),
}

# Where Debian's dataset-fashion-mnist package puts the IDX files; FASHION_MNIST_IDX overrides it.
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_dir():
    return Path(os.environ.get("FASHION_MNIST_IDX") or FASHION_MNIST_DEFAULT)


def _idx(path):
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fm_file(name):
    for cand in (fashion_mnist_dir() / (name + ".gz"), fashion_mnist_dir() / name):
        if cand.exists():
            return cand
    return None


def data(net, n, part="train"):
    """(x (n, C, H, W) float32, y (n,) int64, source): real Fashion-MNIST for 28x28x1 nets when its IDX files
    are found, else seeded random images (the arithmetic, and so the speed, does not depend on the values)."""
    _, shape, classes, _, _ = NETS[net]
    prefix = "train" if part == "train" else "t10k"
    img, lab = _fm_file(f"{prefix}-images-idx3-ubyte"), _fm_file(f"{prefix}-labels-idx1-ubyte")
    if shape == (1, 28, 28) and img and lab:
        x = _idx(img)[:n].astype(np.float32)[:, None] / 255.0
        return np.ascontiguousarray(x), _idx(lab)[:n].astype(np.int64), "fashion-mnist"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    return x, rng.integers(0, classes, n), "random"


def torch_net(torch, net, softmax=False):
    """nn.Sequential with the same layers as cnncli builds from the net's spec (PyTorch's default init)."""
    nn = torch.nn
    spec, (c, h, w), classes, _, _ = NETS[net]
    mods, flat = [], False
    for tok in spec.split("-"):
        if tok.startswith("conv"):
            f, rest = tok[4:].split("k")
            k, _, p = rest.partition("p")
            mods.append(nn.Conv2d(c, int(f), int(k), padding=int(p or 0)))
            c, h, w = int(f), h - int(k) + 1 + 2 * int(p or 0), w - int(k) + 1 + 2 * int(p or 0)
        elif tok == "relu":
            mods.append(nn.ReLU())
        elif tok == "pool2":
            mods.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        elif tok.startswith("drop"):
            mods.append(nn.Dropout(float(tok[4:])))
        elif tok.startswith("fc"):
            if not flat:
                mods.append(nn.Flatten())
                c, flat = c * h * w, True
            units = int(tok[2:]) if tok != "fc" else classes
            mods.append(nn.Linear(c, units))
            c = units
        else:
            raise ValueError(f"nets.torch_net: unknown token {tok}")
    if softmax:
        mods.append(nn.Softmax(1))
    return nn.Sequential(*mods)
