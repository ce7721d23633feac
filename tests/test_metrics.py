"""Metrics checked against plain-loop / definition-level computations on random data."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.report import metrics as m
from cnncli.errors import DataError


def _pairwise_auc(y, s):
    """AUC by definition: P(score_pos > score_neg) + 0.5 * P(tie), over all pairs."""
    pos = [a for a, t in zip(s, y) if t == 1]
    neg = [b for b, t in zip(s, y) if t == 0]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def _rates(y, s, t):
    pred = [1 if v >= t else 0 for v in s]
    tp = sum(1 for p, v in zip(pred, y) if p == 1 and v == 1)
    fp = sum(1 for p, v in zip(pred, y) if p == 1 and v == 0)
    npos = sum(y)
    nneg = len(y) - npos
    return tp / npos, fp / nneg  # sensitivity, false positive rate


def _binary_data(seed, n=80, decimals=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes present
    s = np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), decimals)  # rounding forces ties
    return y, s


# ----------------------------------------------------------------- confusion matrix / report


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_matches_loops(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 7))
    n = int(rng.integers(0, 60))
    t, p = rng.integers(0, k, n), rng.integers(0, k, n)
    expected = np.zeros((k, k), dtype=np.int64)
    for a, b in zip(t, p):
        expected[a, b] += 1
    cm = m.confusion_matrix(t, p, k)
    assert cm.dtype == np.int64 and cm.shape == (k, k)
    np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        m.confusion_matrix([0, 3], [0, 1], 3)


@pytest.mark.parametrize("seed", range(6))
def test_report_matches_loops(seed):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(3, 6))
    n = 70
    y = rng.integers(0, k - 1, n)  # the last class never occurs: exercises 0/0 and balanced accuracy
    proba = rng.dirichlet(np.ones(k), n)
    classes = [f"c{i}" for i in range(k)]
    r = m.classification_report(y, proba, classes)
    pred = [int(np.argmax(row)) for row in proba]

    assert r["accuracy"] == pytest.approx(sum(a == b for a, b in zip(y, pred)) / n)
    recalls = []
    for c in range(k):
        tp = sum(1 for a, b in zip(y, pred) if a == c and b == c)
        npred = sum(1 for b in pred if b == c)
        ntrue = sum(1 for a in y if a == c)
        prec = tp / npred if npred else 0.0
        rec = tp / ntrue if ntrue else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        got = r["per_class"][classes[c]]
        assert got["precision"] == pytest.approx(prec)
        assert got["recall"] == pytest.approx(rec)
        assert got["f1"] == pytest.approx(f1)
        assert got["support"] == ntrue
        if ntrue:
            recalls.append(rec)
    assert r["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    present = [classes[c] for c in range(k) if c in set(y.tolist()) | set(pred)]
    assert r["macro_f1"] == pytest.approx(np.mean([r["per_class"][c]["f1"] for c in present]))
    assert r["absent_classes"] == [c for c in classes if c not in present]
    assert r["confusion_matrix"]["matrix"] == m.confusion_matrix(y, pred, k).tolist()
    assert r["confusion_matrix"]["classes"] == classes
    assert "roc_auc" not in r and "threshold" not in r
    json.dumps(r, allow_nan=False)


def test_binary_report_threshold_drives_predictions():
    y, s = _binary_data(7)
    proba = np.c_[1 - s, s]
    for t in (0.3, 0.5, 0.8):
        r = m.classification_report(y, proba, ["neg", "pos"], threshold=t)
        sens, fpr = _rates(list(y), list(s), t)
        pred = (s >= t).astype(int)
        assert r["threshold"] == t
        assert r["positive_class"] == "pos"
        assert r["sensitivity"] == pytest.approx(sens)
        assert r["specificity"] == pytest.approx(1 - fpr)
        assert r["accuracy"] == pytest.approx(np.mean(pred == y))
        assert r["roc_auc"] == pytest.approx(_pairwise_auc(list(y), list(s)))
        json.dumps(r, allow_nan=False)
    assert m.classification_report(y, proba, ["neg", "pos"])["threshold"] == 0.5


def test_single_class_report_does_not_crash():
    y = np.zeros(6, dtype=int)
    proba = np.array([[0.9, 0.1]] * 3 + [[0.2, 0.8]] * 3)
    r = m.classification_report(y, proba, ["a", "b"])
    assert r["roc_auc"] is None and r["sensitivity"] is None
    assert r["specificity"] == pytest.approx(0.5)
    assert r["balanced_accuracy"] == pytest.approx(0.5)  # only class a counts
    assert r["per_class"]["b"]["precision"] == 0.0  # predicted 3 times, never right
    json.dumps(r, allow_nan=False)


def test_threshold_needs_two_classes():
    with pytest.raises(ValueError):
        m.classification_report([0, 1, 2], np.eye(3), ["a", "b", "c"], threshold=0.5)


# ----------------------------------------------------------------- ROC


@pytest.mark.parametrize("seed", range(8))
def test_auc_matches_pairwise_definition_with_ties(seed):
    y, s = _binary_data(seed, n=60, decimals=seed % 3)
    assert m.roc_auc(y, s) == pytest.approx(_pairwise_auc(list(y), list(s)), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 4)), min_size=2, max_size=25))
def test_auc_property(pairs):
    y = [a for a, _ in pairs]
    s = [float(b) for _, b in pairs]
    if len(set(y)) < 2:
        assert m.roc_auc(y, s) is None
    else:
        assert m.roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_points_are_exact(seed):
    y, s = _binary_data(seed)
    fpr, tpr, thr = m.roc_curve(y, s)
    assert thr[0] == np.inf and np.all(np.diff(thr) < 0)
    assert sorted(thr[1:].tolist()) == sorted(set(s.tolist()))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    for f, t, th in zip(fpr, tpr, thr):
        sens, fp = _rates(list(y), list(s), th)
        assert t == pytest.approx(sens) and f == pytest.approx(fp)
    # Trapezoids under the exact curve give the Mann-Whitney AUC, ties included.
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(m.roc_auc(y, s))


def test_roc_curve_single_class_is_a_data_error():
    with pytest.raises(DataError):
        m.roc_curve([1, 1, 1], [0.1, 0.2, 0.3])


# ----------------------------------------------------------------- most confident errors


@pytest.mark.parametrize("seed", range(4))
def test_most_confident_errors_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = 40, 3
    y = rng.integers(0, k, n)
    proba = rng.dirichlet(np.ones(k), n)
    paths = [f"img{i}.png" for i in range(n)]
    wrong = []
    for i in range(n):
        pred = int(np.argmax(proba[i]))
        if pred != y[i]:
            wrong.append((paths[i], int(y[i]), pred, float(proba[i, pred])))
    wrong.sort(key=lambda w: -w[3])
    assert m.most_confident_errors(paths, y, proba, 5) == wrong[:5]
    assert m.most_confident_errors(paths, y, proba, 10_000) == wrong
    assert m.most_confident_errors(paths, y, proba, 0) == []


def test_most_confident_errors_binary_threshold():
    y = [0, 1, 0]
    proba = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
    assert m.most_confident_errors(["a", "b", "c"], y, proba, 5) == []
    assert m.most_confident_errors(["a", "b", "c"], y, proba, 5, threshold=0.3) == [("a", 0, 1, 0.4)]
