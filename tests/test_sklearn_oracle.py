"""Metrics against scikit-learn as an oracle, on random labels and scores (hypothesis)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sklearn.metrics as sk

from cnncli.report import calibration, metrics


@st.composite
def _labels_and_proba(draw):
    k = draw(st.integers(2, 5))
    n = draw(st.integers(1, 60))
    y = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    # Coarse values make ties between classes and between examples common.
    raw = np.array(draw(st.lists(st.integers(1, 4), min_size=n * k, max_size=n * k)), float).reshape(n, k)
    return k, y, raw / raw.sum(axis=1, keepdims=True)


@settings(max_examples=150, deadline=None)
@given(_labels_and_proba())
def test_report_matches_sklearn(case):
    k, y, proba = case
    classes = [f"c{i}" for i in range(k)]
    threshold = 0.5 if k == 2 else None
    r = metrics.classification_report(y, proba, classes, threshold, intervals=False)
    pred = metrics.predict_labels(proba, threshold)
    labels = list(range(k))
    assert r["confusion_matrix"]["matrix"] == sk.confusion_matrix(y, pred, labels=labels).tolist()
    p, rc, f, s = sk.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(classes):
        got = r["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], rc[i], f[i], s[i]))
    mp, mr, mf, _ = sk.precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert (r["macro_precision"], r["macro_recall"], r["macro_f1"]) == pytest.approx((mp, mr, mf))
    assert r["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
        assert r["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=80))
def test_roc_auc_with_ties_matches_sklearn(pairs):
    y = np.array([a for a, _ in pairs])
    s = np.array([b / 6 for _, b in pairs])  # 7 distinct values: many ties
    if y.min() == y.max():
        assert metrics.roc_auc(y, s) is None
        return
    assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
    fpr, tpr, thr = metrics.roc_curve(y, s)
    sf, st_, sthr = sk.roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, sf) and np.allclose(tpr, st_) and np.allclose(thr[1:], sthr[1:])


@settings(max_examples=100, deadline=None)
@given(_labels_and_proba())
def test_brier_matches_sklearn(case):
    k, y, proba = case
    want = sk.brier_score_loss(y, proba, labels=list(range(k)), scale_by_half=False)
    assert calibration.brier(y, proba) == pytest.approx(want)
