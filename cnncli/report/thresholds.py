"""Choosing a two-class decision threshold that holds up on new data.

The score is P(positive), float ``(N,)``; an example is predicted positive when ``score >= threshold``.
Only the order of the scores matters, so the candidates are the *cuts* between neighbouring distinct scores
u_0 < u_1 < ... < u_{m-1}: cut j predicts positive exactly the scores >= u_j (cut 0: everything, cut m:
nothing). Each cut's threshold is the midpoint of its gap, never a score itself, so a new example scoring a
hair below the lowest positive seen is still caught: the old rule (the highest threshold meeting the target)
sat exactly on a score, and lost that example.

Among the cuts that meet the target, the rule takes the best figure on the other side, and then the most
conservative cut for the stated target:

* ``sensitivity=X``: the best specificity, then the LOWEST threshold with it (as much room below the
  positives as the negatives allow);
* ``specificity=X``: the best sensitivity, then the HIGHEST threshold with it;
* ``youden``: the largest sensitivity + specificity - 1, then the widest gap (most margin), then the lowest.

The result also carries the Wilson 95% lower bound of the achieved target rate, and a warning when there are
too few examples on the target's side for the target to mean anything (fewer than 1 / (1 - X): a single miss
already breaks it).
"""

from __future__ import annotations

import math

import numpy as np

from cnncli.errors import DataError
from cnncli.report.intervals import wilson
from cnncli.report.metrics import check_binary

RULES = ("sensitivity", "specificity", "youden")


def cuts(y_true01, score) -> dict:
    """Every cut between distinct scores, as float64 / int64 arrays of length m + 1 (m distinct scores):

    ``threshold`` (midpoint of the cut's gap; below the lowest score: halfway down to min(0, lowest); above
    the highest: halfway up to max(1, highest), or the next float when the highest score is 1), ``tp``,
    ``fp`` (examples predicted positive), ``gap`` (width of the gap the cut sits in), and ``n_pos``, ``n_neg``.
    Raises DataError when ``y_true01`` holds only one class.
    """
    y, s = check_binary(y_true01, score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError("cannot pick a threshold: the labels hold only one class")
    u, group = np.unique(s, return_inverse=True)
    pos = np.bincount(group.ravel(), weights=y, minlength=u.size)
    tot = np.bincount(group.ravel(), minlength=u.size)
    # Cut j predicts positive the groups j..m-1: suffix sums, plus the empty cut m.
    tp = np.r_[np.cumsum(pos[::-1])[::-1], 0].astype(np.int64)
    pred = np.r_[np.cumsum(tot[::-1])[::-1], 0].astype(np.int64)
    below = np.r_[min(0.0, u[0]), u]
    above = np.r_[u, max(1.0, u[-1])]
    mid = below + (above - below) / 2
    # A midpoint that rounds onto the score below it would predict that score positive: use the score above.
    mid = np.where(mid <= below, above, mid)
    mid[0] = min(mid[0], u[0])  # cut 0 must keep every score positive
    if mid[-1] <= u[-1]:
        mid[-1] = np.nextafter(u[-1], np.inf)
    return {"threshold": mid, "tp": tp, "fp": pred - tp, "gap": above - below, "n_pos": n_pos, "n_neg": n_neg}


def _choose(kind: str, target: float | None, c: dict) -> int:
    sens = c["tp"] / c["n_pos"]
    spec = 1.0 - c["fp"] / c["n_neg"]
    if kind == "sensitivity":
        ok = np.flatnonzero(sens >= target - 1e-12)  # cut 0 always qualifies (sensitivity 1)
        best = spec[ok].max()
        return int(ok[spec[ok] >= best - 1e-12].min())
    if kind == "specificity":
        ok = np.flatnonzero(spec >= target - 1e-12)  # the last cut always qualifies (specificity 1)
        best = sens[ok].max()
        return int(ok[sens[ok] >= best - 1e-12].max())
    j = sens - (1.0 - spec)
    top = np.flatnonzero(j >= j.max() - 1e-12)
    widest = top[c["gap"][top] >= c["gap"][top].max()]
    return int(widest.min())


def few_examples_warning(kind: str, target: float | None, n: int) -> str | None:
    """A sentence when n examples on the target's side cannot support the target, else None."""
    if kind == "youden" or target is None:
        return None
    side = "positive" if kind == "sensitivity" else "negative"
    if target >= 1.0:
        return (f"{kind}={target:g} is met on {n} {side} images but can never be shown to hold on new ones; "
                "give a target below 1")
    need = math.ceil(round(1.0 / (1.0 - target), 9))
    if n >= need:
        return None
    return (f"only {n} {side} images: a {kind} target of {target:g} needs at least {need} for one miss "
            f"({1 / max(n, 1):.1%} here) to stay within it, so the target means little on this data")


def pick_threshold(y_true01, score, kind: str, target: float | None = None) -> tuple[float, dict]:
    """Choose a decision threshold on ``score`` (float ``(N,)``) for labels ``y_true01`` (0/1, int ``(N,)``).

    kind is one of RULES; target, for sensitivity and specificity, is in (0, 1] (the command line spells
    the pair `sensitivity=0.95`, see commands/gates.py). Rules and tie-breaks: see the module docstring. Every target is reachable (cut 0 has sensitivity 1, the
    last cut specificity 1). Returns ``(threshold, achieved)``; the threshold is always finite, and
    ``achieved`` holds ``rule``, ``threshold``, ``sensitivity``, ``specificity``, ``youden``, ``n_positive``,
    ``n_negative``, ``scores_around`` ([highest score below, lowest score at or above] the threshold, None
    at the ends), and for target rules ``target``, ``target_lo`` (Wilson 95% lower bound of the achieved
    target rate) and ``warning`` (None, or the few_examples_warning sentence).
    Bad kind or target -> ValueError; a single-class ``y_true01`` -> DataError.
    """
    if kind not in RULES:
        raise ValueError(f"unknown threshold rule {kind!r}; expected one of {', '.join(RULES)}")
    if kind != "youden" and not (target is not None and 0.0 < target <= 1.0):
        raise ValueError(f"{kind}: the target must be a number in (0, 1], got {target}")
    c = cuts(y_true01, score)
    i = _choose(kind, target, c)
    t = float(c["threshold"][i])
    tp, fp, n_pos, n_neg = int(c["tp"][i]), int(c["fp"][i]), c["n_pos"], c["n_neg"]
    s = np.unique(np.asarray(score, dtype=np.float64))
    lower, upper = s[s < t], s[s >= t]
    achieved = {
        "rule": "youden" if kind == "youden" else f"{kind}={target:g}",
        "threshold": t,
        "sensitivity": tp / n_pos,
        "specificity": 1.0 - fp / n_neg,
        "youden": tp / n_pos - fp / n_neg,
        "n_positive": n_pos,
        "n_negative": n_neg,
        "scores_around": [float(lower[-1]) if lower.size else None, float(upper[0]) if upper.size else None],
    }
    if kind != "youden":
        k, n = (tp, n_pos) if kind == "sensitivity" else (n_neg - fp, n_neg)
        achieved.update({"target": target, "target_lo": wilson(k, n)[0],
                         "warning": few_examples_warning(kind, target, n)})
    return t, achieved
