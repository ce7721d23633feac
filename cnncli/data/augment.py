"""Random changes to uint8 training batches (N, C, H, W), one mode per `train --augment`.

- "flip": random horizontal flips only, as a typical PyTorch script does (scripts/photo_ablation.py).
- "light": horizontal flips and shifts of up to 2 pixels (engine.training.augment_batch, the old --augment).
- "photo": one affine warp per image (a random resized crop keeping 55-100 % of the area at aspect 3:4 to 4:3,
  a horizontal flip, a rotation of up to 10 degrees; bilinear, edges clamped), then brightness, contrast
  and (RGB) saturation factors of 0.8-1.2.

Everything random comes from the generator passed in, which training seeds by (seed, epoch, batch), and the
arithmetic is plain float32 numpy in a fixed order, so the same seed gives the same batches bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

MODES = ("none", "flip", "light", "photo")
AREA = (0.55, 1.0)  # fraction of the image a random resized crop keeps
ASPECT = (3 / 4, 4 / 3)
MAX_DEGREES = 10.0
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]


def _warp(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop + flip + small rotation of uint8 (N, C, H, W) as float32 (N, C, H, W)."""
    n, c, h, w = x.shape
    side = np.sqrt(rng.uniform(*AREA, n))
    aspect = np.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1]), n))
    sx, sy = np.minimum(1.0, side * np.sqrt(aspect)), np.minimum(1.0, side / np.sqrt(aspect))
    cx = rng.uniform(-1, 1, n) * (1 - sx) * (w - 1) / 2  # crop centre, as an offset from the image centre
    cy = rng.uniform(-1, 1, n) * (1 - sy) * (h - 1) / 2
    angle = np.radians(rng.uniform(-MAX_DEGREES, MAX_DEGREES, n))
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    gx, gy = gx - (w - 1) / 2, gy - (h - 1) / 2
    u = gx[None] * (sx * flip)[:, None, None]
    v = gy[None] * sy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    px = np.clip(cos * u - sin * v + cx[:, None, None] + (w - 1) / 2, 0, w - 1)
    py = np.clip(sin * u + cos * v + cy[:, None, None] + (h - 1) / 2, 0, h - 1)
    x0, y0 = np.floor(px).astype(np.intp), np.floor(py).astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (px - x0).astype(np.float32)[:, None], (py - y0).astype(np.float32)[:, None]
    img = np.arange(n)[:, None, None]
    src = x.astype(np.float32)

    def at(yy, xx):  # (N, C, H, W): src[i, :, yy[i], xx[i]]
        return np.moveaxis(src[img, :, yy, xx], -1, 1)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def _jitter(f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and (3 channels) saturation factors on float32 (N, C, H, W) pixels in 0..255."""
    n, c = f.shape[:2]
    bright, contrast, sat = (rng.uniform(1 - JITTER, 1 + JITTER, n).astype(np.float32)[:, None, None, None]
                             for _ in range(3))
    f = f * bright
    mean = f.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float32)
    f = (f - mean) * contrast + mean
    if c == 3:
        gray = f.mean(axis=1, keepdims=True, dtype=np.float32)
        f = (f - gray) * sat + gray
    return f


def photo_batch(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "photo" augmentation of a uint8 batch (N, C, H, W); returns a new uint8 (N, C, H, W)."""
    if len(x) == 0:
        return x.copy()
    f = _jitter(_warp(x, rng), rng)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def flip_batch(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "flip" augmentation: each image of a uint8 batch (N, C, H, W) mirrored left-right with probability 1/2."""
    flips = rng.random(len(x)) < 0.5
    out = x.copy()
    out[flips] = x[flips, :, :, ::-1]
    return out


def augment_function(mode: str):
    """The batch function for an --augment mode, or None where the training loop has its own ("none", "light")."""
    return {"flip": flip_batch, "photo": photo_batch}.get(mode)
