"""Do the probabilities mean what they say? Calibration error, Brier score, and temperature scaling.

* ``ece``: expected calibration error of the top class: images are put in BINS equal-width bins by their
  top probability; ECE is the image-weighted mean over bins of |accuracy in bin - mean top probability in
  bin|. 0 is perfectly calibrated.
* ``brier``: the mean over images of sum_k (p_k - [k is the true class])^2, from 0 (perfect) to 2. (For two
  classes it is twice the one-column binary Brier score.)
* Temperature scaling divides the logits by one number T > 0 before the softmax: T > 1 softens
  over-confident probabilities, T < 1 sharpens them. It never changes which class is on top, so accuracy
  and every argmax metric stay the same. ``fit_temperature`` finds the T that minimises the negative
  log-likelihood on labeled images (the validation split).

Pure numpy.
"""

from __future__ import annotations

import numpy as np

BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # fitted temperatures are clamped here: a separable set would drive T to 0


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of float ``(N, K)`` logits divided by ``temperature``; float64 ``(N, K)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(y, proba) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"need y (N,) and proba (N, K), got {y.shape} and {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}")
    return y, p


def brier(y, proba) -> float:
    """Multi-class Brier score of int labels ``(N,)`` against probabilities float ``(N, K)``; see module doc."""
    y, p = _check(y, proba)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def ece(y, proba, bins: int = BINS) -> float:
    """Top-label expected calibration error of labels ``(N,)`` and probabilities ``(N, K)``; see module doc.

    Bin b holds top probabilities in (b/bins, (b+1)/bins] (the first bin also takes 0).
    """
    y, p = _check(y, proba)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, correct, bins) - np.bincount(which, conf, bins))
    return float(gap.sum() / max(1, y.size)) if n.any() else 0.0


def nll(y, logits, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of labels ``(N,)`` under softmax(logits ``(N, K)`` / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), np.asarray(y, dtype=np.int64)].mean())


def fit_temperature(y, logits) -> float:
    """The temperature in [T_MIN, T_MAX] minimising ``nll(y, logits, T)``; labels ``(N,)``, logits ``(N, K)``.

    The NLL is convex in 1/T, so its derivative in 1/T is increasing: bisection on that derivative (in
    log space) finds the minimum to ~1e-9 relative. Raises ValueError on empty input.
    """
    y = np.asarray(y, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or y.size == 0:
        raise ValueError(f"need labels (N,) and logits (N, K) with N > 0, got {y.shape} and {z.shape}")
    zy = z[np.arange(y.size), y]

    def slope(beta):  # d NLL / d beta, beta = 1 / T
        p = softmax(z * beta)
        return float(((p * z).sum(axis=1) - zy).mean())

    lo, hi = np.log(1 / T_MAX), np.log(1 / T_MIN)
    if slope(np.exp(lo)) >= 0:
        return T_MAX
    if slope(np.exp(hi)) <= 0:
        return T_MIN
    for _ in range(100):
        mid = (lo + hi) / 2
        if slope(np.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return float(1 / np.exp((lo + hi) / 2))
