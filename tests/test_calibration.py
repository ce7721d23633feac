"""ECE, Brier and temperature fitting (report/calibration.py) against definitions and brute force."""

import numpy as np
import pytest

from cnncli.report import calibration as cal


def test_ece_by_hand():
    # Two bins used (15 bins): 0.9 (two images, one right) and 0.6 (two images, both right).
    proba = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 1])
    assert cal.ece(y, proba) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    assert cal.ece([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


def test_ece_loops():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), 300)
    y = rng.integers(0, 4, 300)
    conf, right = p.max(1), p.argmax(1) == y
    total = 0.0
    for b in range(cal.BINS):
        lo, hi = b / cal.BINS, (b + 1) / cal.BINS
        m = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if m.any():
            total += m.sum() / 300 * abs(right[m].mean() - conf[m].mean())
    assert cal.ece(y, p) == pytest.approx(total)


def test_fit_temperature_recovers_a_known_scale_and_beats_a_grid():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4000, 3))
    p = cal.softmax(z)
    y = np.array([rng.choice(3, p=row) for row in p])  # labels drawn from softmax(z): the true T for 3z is 3
    t = cal.fit_temperature(y, 3 * z)
    assert t == pytest.approx(3.0, rel=0.1)
    grid = np.exp(np.linspace(np.log(cal.T_MIN), np.log(cal.T_MAX), 2000))
    best = min(grid, key=lambda g: cal.nll(y, 3 * z, g))
    assert cal.nll(y, 3 * z, t) <= cal.nll(y, 3 * z, best) + 1e-9
    assert cal.ece(y, cal.softmax(3 * z, t)) < cal.ece(y, cal.softmax(3 * z))


def test_fit_temperature_is_clamped_on_separable_data():
    z = np.array([[2.0, -2.0], [-2.0, 2.0]])
    assert cal.fit_temperature([0, 1], z) == cal.T_MIN  # always right: sharper is always better
    assert cal.fit_temperature([1, 0], z) == cal.T_MAX  # always wrong: as flat as allowed
    with pytest.raises(ValueError):
        cal.fit_temperature([], np.zeros((0, 2)))
