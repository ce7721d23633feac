"""Threshold rules (report/thresholds.py) against brute force over every possible cut."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.errors import DataError
from cnncli.report import thresholds as th
from cnncli.report.intervals import wilson


def _data(seed, n=80, decimals=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), decimals)  # rounding forces ties
    return y, s


def _brute(y, s):
    """[(cut index j, sensitivity, specificity)] for 'positive iff score >= u_j', j = 0 .. m (m: none)."""
    u = sorted(set(s.tolist()))
    out = []
    for j in range(len(u) + 1):
        pred = s >= u[j] if j < len(u) else np.zeros_like(s, bool)
        out.append((j, (pred & (y == 1)).sum() / (y == 1).sum(), (~pred & (y == 0)).sum() / (y == 0).sum()))
    return u, out


def _cut_of(t, u):
    """Index j of the cut a threshold t makes among the distinct scores u."""
    return sum(1 for v in u if v < t)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_sensitivity_rule_best_specificity_then_lowest_cut_with_margin(seed, target):
    y, s = _data(seed)
    t, got = th.pick_threshold(y, s, "sensitivity", target)
    u, cuts = _brute(y, s)
    j = _cut_of(t, u)
    feasible = [c for c in cuts if c[1] >= target - 1e-12]
    best = max(c[2] for c in feasible)
    assert cuts[j][1] >= target and cuts[j][2] == best
    assert j == min(c[0] for c in feasible if c[2] == best)
    assert got["sensitivity"] == pytest.approx(cuts[j][1]) and got["specificity"] == pytest.approx(cuts[j][2])
    if 0 < j < len(u):  # strictly inside the gap, at its midpoint
        assert t == pytest.approx((u[j - 1] + u[j]) / 2) and u[j - 1] < t < u[j]
    assert got["scores_around"] == [u[j - 1] if j else None, u[j] if j < len(u) else None]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.5, 0.9, 1.0])
def test_specificity_rule_best_sensitivity_then_highest_cut(seed, target):
    y, s = _data(seed)
    t, got = th.pick_threshold(y, s, "specificity", target)
    assert math.isfinite(t)
    u, cuts = _brute(y, s)
    j = _cut_of(t, u)
    feasible = [c for c in cuts if c[2] >= target - 1e-12]
    best = max(c[1] for c in feasible)
    assert cuts[j][2] >= target and cuts[j][1] == best
    assert j == max(c[0] for c in feasible if c[1] == best)


@pytest.mark.parametrize("seed", range(6))
def test_youden_is_the_maximum(seed):
    y, s = _data(seed)
    t, got = th.pick_threshold(y, s, "youden")
    u, cuts = _brute(y, s)
    j = _cut_of(t, u)
    best = max(c[1] + c[2] - 1 for c in cuts)
    assert cuts[j][1] + cuts[j][2] - 1 == pytest.approx(best) and got["youden"] == pytest.approx(best)


def test_separable_scores_keep_every_positive_and_sit_mid_gap():
    # The case: 0.5 already separated the classes. The old rule took the highest threshold with
    # sensitivity >= 0.95 and dropped positives; the new one keeps all and sits between the classes.
    neg = np.linspace(0.01, 0.30, 30)
    pos = np.linspace(0.62, 0.999, 40)
    y = np.r_[np.zeros(30, int), np.ones(40, int)]
    t, got = th.pick_threshold(y, np.r_[neg, pos], "sensitivity", 0.95)
    assert t == pytest.approx((0.30 + 0.62) / 2)
    assert got["sensitivity"] == 1.0 and got["specificity"] == 1.0
    assert got["target_lo"] == pytest.approx(wilson(40, 40)[0]) and got["warning"] is None


def test_too_few_positives_warns_with_numbers():
    y = np.r_[np.zeros(30, int), np.ones(15, int)]
    s = np.r_[np.linspace(0, 0.5, 30), np.linspace(0.6, 1, 15)]
    _, got = th.pick_threshold(y, s, "sensitivity", 0.95)
    assert "15 positive" in got["warning"] and "at least 20" in got["warning"]
    _, got = th.pick_threshold(y, s, "sensitivity", 0.9)  # needs 10: 15 is enough
    assert got["warning"] is None
    _, got = th.pick_threshold(y, s, "specificity", 0.99)  # needs 100 negatives
    assert "30 negative" in got["warning"] and "at least 100" in got["warning"]
    _, got = th.pick_threshold(y, s, "sensitivity", 1.0)
    assert "below 1" in got["warning"]


def test_ends_are_finite_and_inside_unit_interval_when_scores_are():
    y = [0, 1, 0, 1]
    s = [0.9, 0.8, 0.2, 0.1]  # the top score is a negative: specificity 1 predicts nothing positive
    t, got = th.pick_threshold(y, s, "specificity", 1.0)
    assert 0.9 < t <= 1.0 and got["sensitivity"] == 0.0 and got["specificity"] == 1.0
    t, got = th.pick_threshold([0, 1], [1.0, 1.0], "specificity", 1.0)
    assert math.isfinite(t) and t > 1.0 and got["specificity"] == 1.0
    t, got = th.pick_threshold(y, s, "sensitivity", 1.0)
    assert 0.0 < t < 0.1 and got["sensitivity"] == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20)), min_size=2, max_size=40),
       st.sampled_from([("sensitivity", 0.8), ("sensitivity", 0.95), ("specificity", 0.9), ("youden", None)]))
def test_threshold_never_equals_a_score_and_reproduces_the_figures(pairs, rule):
    y = np.array([p[0] for p in pairs])
    if y.min() == y.max():
        return
    s = np.array([p[1] / 20 for p in pairs])
    t, got = th.pick_threshold(y, s, *rule)
    assert not np.any(s == t) or t == s.min()  # only cut 0 may sit on the lowest score (0 has no room below)
    pred = s >= t
    assert got["sensitivity"] == pytest.approx((pred & (y == 1)).sum() / (y == 1).sum())
    assert got["specificity"] == pytest.approx((~pred & (y == 0)).sum() / (y == 0).sum())


@pytest.mark.parametrize("kind, target", [("sens", 0.9), ("sensitivity", 1.5), ("specificity", 0.0),
                                          ("sensitivity", None), ("sensitivity", math.nan), ("yoden", None)])
def test_bad_rules_are_value_errors(kind, target):
    with pytest.raises(ValueError):
        th.pick_threshold([0, 1], [0.2, 0.7], kind, target)


def test_single_class_is_data_error():
    with pytest.raises(DataError):
        th.pick_threshold([0, 0], [0.2, 0.7], "youden")
