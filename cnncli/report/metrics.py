"""Evaluation metrics: confusion matrix, classification report, ROC.

Threshold rules live in report/thresholds.py, confidence intervals in report/intervals.py.

Pure numpy and exact (no sampling, no interpolation). Conventions used throughout:

* Labels are integer class indices ``0 .. K-1``; ``proba`` is float ``(N, K)`` with one row per example.
* Predictions: for K == 2 an example is predicted positive (class index 1, the *positive class*)
  when ``proba[:, 1] >= threshold`` (default 0.5); for K > 2 the prediction is ``argmax(proba)``.
* A ratio whose denominator is zero (precision of a never-predicted class, recall of a class with
  no examples, F1 when precision + recall == 0) is defined as 0.0.
* ROC AUC, sensitivity and specificity are ``None`` when the data holds only one of the two classes,
  because they are undefined there rather than zero.

Bad arguments raise ValueError. How eval's options spell metrics and bars (`--fail-under`) is the command's
business: commands/gates.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnncli.engine.decision import DEFAULT_THRESHOLD, decide
from cnncli.errors import DataError

# The report's top-level metrics; per-class ones are in report["per_class"][CLASS].
TOP_LEVEL_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "roc_auc",
    "sensitivity",
    "specificity",
)
PER_CLASS_METRICS = ("precision", "recall", "f1")
BINARY_ONLY_METRICS = ("roc_auc", "sensitivity", "specificity")
# Metrics with a confidence interval (report["ci"][METRIC], report["per_class"][CLASS]["ci"][METRIC]).
INTERVAL_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "precision", "recall")


# --------------------------------------------------------------------------- basics


def _as_labels(y, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer class indices")
    return a.astype(np.int64, copy=False)


def check_binary(y_true01, score) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true01, "y_true01")
    s = np.asarray(score, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"score shape {s.shape} does not match y_true01 shape {y.shape}")
    if np.any((y != 0) & (y != 1)):
        raise ValueError("y_true01 must hold only 0 and 1")
    if not np.all(np.isfinite(s)):
        raise ValueError("score must be finite")
    return y, s


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def confusion_matrix(y_true, y_pred, k: int) -> np.ndarray:
    """Count matrix, int64 ``(k, k)``: ``cm[i, j]`` = examples of true class i predicted as j.

    ``y_true``, ``y_pred``: int ``(N,)`` with values in ``0 .. k-1``.
    """
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true shape {t.shape} does not match y_pred shape {p.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if t.size and (t.min() < 0 or t.max() >= k or p.min() < 0 or p.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def predict_labels(proba, threshold: float | None = None) -> np.ndarray:
    """Predicted class indices, int64 ``(N,)``, from probabilities float ``(N, K)``: engine.decision.decide,
    the rule training and predict use too. K == 2: ``proba[:, 1] >= threshold`` (default 0.5) -> 1 else 0.
    K > 2: argmax (a threshold is a ValueError).
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] not in (1, 2) and threshold is not None:
        raise ValueError(f"a decision threshold needs exactly two classes, got {p.shape[1]}")
    return decide(p, threshold)


# --------------------------------------------------------------------------- ROC


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of float ``(N,)`` with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(y_true01, score) -> float | None:
    """Exact area under the ROC curve (Mann-Whitney U / (n_pos * n_neg), ties count one half).

    ``y_true01``: int ``(N,)`` of 0/1; ``score``: float ``(N,)``, higher = more positive.
    Returns None when either class is absent.
    """
    y, s = check_binary(y_true01, score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    r = _average_ranks(s)
    u = r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true01, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve: ``(fpr, tpr, thresholds)``, each float64 ``(M,)``.

    ``thresholds`` are ``+inf`` followed by the distinct scores in descending order; point i is the
    rate of examples with ``score >= thresholds[i]``, so the curve runs from (0, 0) to (1, 1).
    Raises DataError when ``y_true01`` holds only one class (the curve is undefined).
    """
    y, s = check_binary(y_true01, score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError("cannot compute a ROC curve: the labels hold only one class")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    # Last index of each run of equal scores: all tied examples switch together.
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[np.inf, ss[last]]
    return fpr, tpr, thresholds


# --------------------------------------------------------------------------- report


def classification_report(y_true, proba, classes: Sequence[str], threshold: float | None = None,
                          intervals: bool = True) -> dict:
    """Summary metrics as a JSON-able dict.

    ``y_true``: int ``(N,)`` in ``0 .. K-1``; ``proba``: float ``(N, K)``; ``classes``: K names.
    ``threshold`` applies to K == 2 only (positive class = index 1; default 0.5) and drives the
    predictions behind every count-based metric.

    Keys: ``n``, ``classes``, ``accuracy``, ``balanced_accuracy`` (mean recall over the classes that
    occur in ``y_true``), ``macro_precision``/``macro_recall``/``macro_f1`` (unweighted mean over the classes
    present in the labels or the predictions, as scikit-learn averages), ``absent_classes`` (names of the
    classes in neither, left out of the macro averages), ``per_class`` {name: {precision, recall, f1,
    support}}, ``confusion_matrix`` {"classes", "rows": "true", "columns": "predicted", "matrix"}; for K == 2
    also ``positive_class``, ``threshold``, ``roc_auc``, ``sensitivity``, ``specificity`` (None when
    undefined). With ``intervals``: ``ci`` {metric: {"lo", "hi"} or None} for accuracy, sensitivity,
    specificity (Wilson 95%) and roc_auc (report.intervals.bootstrap_auc), each per-class entry's ``ci``
    {"precision", "recall"}, and ``ci_method`` describing both.
    """
    from cnncli.report import intervals as iv

    classes = [str(c) for c in classes]
    p = np.asarray(proba, dtype=np.float64)
    t = _as_labels(y_true, "y_true")
    k = len(classes)
    if p.ndim != 2 or p.shape != (t.size, k):
        raise ValueError(f"proba must have shape ({t.size}, {k}), got {p.shape}")
    if t.size == 0:
        raise DataError("no examples to evaluate")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba must be finite")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    pred = predict_labels(p, threshold)
    cm = confusion_matrix(t, pred, k)

    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class = {}
    precisions, recalls, f1s = [], [], []
    for i, name in enumerate(classes):
        prec = _ratio(tp[i], predicted[i])
        rec = _ratio(tp[i], support[i])
        f1 = _ratio(2 * prec * rec, prec + rec)
        per_class[name] = {"precision": prec, "recall": rec, "f1": f1, "support": int(support[i])}
        if intervals:
            per_class[name]["ci"] = {"precision": iv.interval(tp[i], predicted[i]),
                                     "recall": iv.interval(tp[i], support[i])}
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(f1)
    in_labels = support > 0
    present = in_labels | (predicted > 0)
    report: dict = {
        "n": int(t.size),
        "classes": classes,
        "accuracy": float(tp.sum() / t.size),
        "balanced_accuracy": float(np.mean(np.asarray(recalls)[in_labels])),
        "macro_precision": float(np.mean(np.asarray(precisions)[present])),
        "macro_recall": float(np.mean(np.asarray(recalls)[present])),
        "macro_f1": float(np.mean(np.asarray(f1s)[present])),
        "absent_classes": [c for c, here in zip(classes, present) if not here],
        "per_class": per_class,
        "confusion_matrix": {
            "classes": classes,
            "rows": "true",
            "columns": "predicted",
            "matrix": cm.tolist(),
        },
    }
    if k == 2:
        y01 = (t == 1).astype(np.int64)
        report["positive_class"] = classes[1]
        report["threshold"] = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        report["roc_auc"] = roc_auc(y01, p[:, 1])
        report["sensitivity"] = float(recalls[1]) if support[1] else None
        report["specificity"] = float(recalls[0]) if support[0] else None
    if intervals:
        ci = {"accuracy": iv.interval(tp.sum(), t.size)}
        if k == 2:
            ci["sensitivity"] = iv.interval(tp[1], support[1])
            ci["specificity"] = iv.interval(tp[0], support[0])
            auc = iv.bootstrap_auc(y01, p[:, 1])
            ci["roc_auc"] = None if auc is None else {"lo": auc[0], "hi": auc[1]}
        report["ci"] = ci
        report["ci_method"] = {
            "rates": "Wilson score interval, 95%",
            "roc_auc": f"stratified percentile bootstrap, 95%, {iv.BOOTSTRAP_RESAMPLES} resamples, "
                       f"seed {iv.BOOTSTRAP_SEED}",
        }
    return report


# --------------------------------------------------------------------------- errors


def most_confident_errors(paths: Sequence, y_true, proba, n: int, threshold: float | None = None) -> list[tuple]:
    """The n misclassified examples the model was most sure about.

    ``paths``: N items (returned as given); ``y_true``: int ``(N,)``; ``proba``: float ``(N, K)``;
    predictions follow ``predict_labels(proba, threshold)``. Returns
    ``[(path, true_idx, pred_idx, p_pred), ...]`` sorted by ``p_pred`` (probability of the wrong
    predicted class) descending; ties keep input order.
    """
    t = _as_labels(y_true, "y_true")
    p = np.asarray(proba, dtype=np.float64)
    if len(paths) != t.size or p.shape[0] != t.size:
        raise ValueError("paths, y_true and proba must have the same length")
    if n <= 0 or t.size == 0:
        return []
    pred = predict_labels(p, threshold)
    wrong = np.flatnonzero(pred != t)
    conf = p[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="mergesort")][:n]
    return [(paths[i], int(t[i]), int(pred[i]), float(p[i, pred[i]])) for i in order]
