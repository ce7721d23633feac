"""Wilson intervals and the bootstrap AUC interval (report/intervals.py)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.report import intervals as iv
from cnncli.report.metrics import roc_auc


def test_wilson_known_values():
    # Textbook values (Newcombe 1998, table I): 81/263 -> 0.2553..0.3662; 0/10 -> 0..0.2775; 10/10 -> 0.7225..1
    assert iv.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert iv.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert iv.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert iv.wilson(0, 0) is None and iv.interval(3, 0) is None
    with pytest.raises(ValueError):
        iv.wilson(5, 4)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_bounds_solve_the_score_test(kn):
    # Each bound p0 is where the score statistic |p - p0| / sqrt(p0 (1 - p0) / n) equals z.
    k, n = kn
    lo, hi = iv.wilson(k, n)
    p = k / n
    assert 0.0 <= lo <= p <= hi <= 1.0
    for b in (lo, hi):
        if 0.0 < b < 1.0:
            assert abs(p - b) == pytest.approx(iv.Z95 * math.sqrt(b * (1 - b) / n), rel=1e-6, abs=1e-12)


def test_weighted_auc_equals_auc_of_the_expanded_sample():
    rng = np.random.default_rng(3)
    pos, neg = np.round(rng.random(7), 1), np.round(rng.random(9), 1)  # ties
    both = np.r_[pos, neg]
    _, group = np.unique(both, return_inverse=True)
    pw = rng.integers(0, 4, (5, 7)).astype(float)
    nw = rng.integers(0, 4, (5, 9)).astype(float)
    pw[:, 0] += 1
    nw[:, 0] += 1
    got = iv._weighted_auc(group, int(group.max()) + 1, pw, nw)
    for b in range(5):
        s = np.r_[np.repeat(pos, pw[b].astype(int)), np.repeat(neg, nw[b].astype(int))]
        y = np.r_[np.ones(int(pw[b].sum()), int), np.zeros(int(nw[b].sum()), int)]
        assert got[b] == pytest.approx(roc_auc(y, s))


def test_bootstrap_auc_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.6 * y
    a = iv.bootstrap_auc(y, s)
    assert a == iv.bootstrap_auc(y, s)  # same seed, same interval
    assert a != iv.bootstrap_auc(y, s, seed=1)
    auc = roc_auc(y, s)
    assert a[0] < auc < a[1] and a[1] - a[0] < 0.2
    assert iv.bootstrap_auc([1, 1], [0.2, 0.3]) is None
    assert iv.bootstrap_auc([0, 1], [0.2, 0.3]) == (1.0, 1.0)
