"""Confidence intervals for the figures in an evaluation report.

* Rates (accuracy, sensitivity, specificity, per-class precision and recall) get the Wilson score interval,
  which stays inside [0, 1] and behaves at 0/n and n/n, where the normal approximation collapses to a point.
* ROC AUC gets a stratified percentile bootstrap: positives and negatives are resampled separately (so every
  resample has both classes), BOOTSTRAP_RESAMPLES times, from a fixed seed, so the same data always gives the
  same interval.

Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval ``(lo, hi)`` for k successes out of n trials (two-sided, 95% by default).

    Returns None when n == 0 (no trials, no interval). Raises ValueError unless 0 <= k <= n.
    """
    k, n = int(k), int(n)
    if n == 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    den = 1 + z2 / n
    # Clamp rounding: at k == 0 the lower bound is exactly 0, at k == n the upper bound exactly 1.
    lo = 0.0 if k == 0 else max(0.0, (centre - half) / den)
    hi = 1.0 if k == n else min(1.0, (centre + half) / den)
    return lo, hi


def interval(k: int, n: int) -> dict | None:
    """The Wilson 95% interval as a JSON-able ``{"lo", "hi"}`` dict, or None when n == 0."""
    w = wilson(k, n)
    return None if w is None else {"lo": w[0], "hi": w[1]}


def _weighted_auc(group: np.ndarray, n_groups: int, pos_w: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """AUC for B weightings at once: ``pos_w`` (B, P) and ``neg_w`` (B, Q) are resample counts of the
    positives and negatives, whose tie groups (0 = lowest score) are ``group[:P]`` and ``group[P:]``."""
    b = pos_w.shape[0]
    n_pos = pos_w.shape[1]
    offsets = (np.arange(b) * n_groups)[:, None]
    gp = np.bincount((group[None, :n_pos] + offsets).ravel(), pos_w.ravel(), b * n_groups).reshape(b, n_groups)
    gn = np.bincount((group[None, n_pos:] + offsets).ravel(), neg_w.ravel(), b * n_groups).reshape(b, n_groups)
    below = np.cumsum(gn, axis=1) - gn  # negatives strictly below each group
    wins = (gp * (below + 0.5 * gn)).sum(axis=1)  # ties count one half, as in metrics.roc_auc
    return wins / (gp.sum(axis=1) * gn.sum(axis=1))


def bootstrap_auc(y_true01, score, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                  level: float = 0.95) -> tuple[float, float] | None:
    """Stratified percentile bootstrap interval ``(lo, hi)`` for ROC AUC.

    ``y_true01``: int ``(N,)`` of 0/1; ``score``: float ``(N,)``. Each resample draws the positives and the
    negatives with replacement, separately, so its counts of each stay fixed. Deterministic for a given seed.
    Returns None when either class is absent.
    """
    y = np.asarray(y_true01).astype(np.int64)
    s = np.asarray(score, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return None
    both = np.concatenate([pos, neg])
    _, group = np.unique(both, return_inverse=True)
    n_groups = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    aucs = []
    chunk = max(1, min(resamples, 2_000_000 // max(1, both.size)))  # bound memory to a few tens of MB
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        pw = rng.multinomial(pos.size, np.full(pos.size, 1.0 / pos.size), size=b).astype(np.float64)
        nw = rng.multinomial(neg.size, np.full(neg.size, 1.0 / neg.size), size=b).astype(np.float64)
        aucs.append(_weighted_auc(group.ravel(), n_groups, pw, nw))
    a = np.concatenate(aucs)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(a, [tail, 100 - tail])
    return float(lo), float(hi)
