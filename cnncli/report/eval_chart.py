"""The `eval --plot` picture: confusion matrix as counts and row-normalised, and for two classes the ROC
curve with the operating point labelled and the precision-recall curve; a reliability diagram when the
report carries calibration. Drawn with matplotlib through `cnncli.report.charts`."""

from __future__ import annotations

import numpy as np

from cnncli.report import charts, metrics

# Beyond this many classes a K x K matrix is unreadable at any size; `eval --plot` refuses up front.
MAX_MATRIX_CLASSES = 100
# Up to this many classes every cell is written out; above, colour only.
MAX_ANNOTATED_CLASSES = 20
MAX_LABEL_CHARS = 16


def check_plottable(num_classes: int, option: str = "--plot") -> None:
    """ValueError when a model has too many classes for a confusion-matrix picture (checked before decoding)."""
    if num_classes > MAX_MATRIX_CLASSES:
        raise ValueError(f"{option}: a confusion matrix of {num_classes} classes cannot be drawn readably "
                         f"(at most {MAX_MATRIX_CLASSES}); use --format json for the numbers")


def precision_recall_curve(y_true01, score) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact precision-recall points and average precision.

    ``y_true01``: int ``(N,)`` of 0/1 with at least one positive; ``score``: float ``(N,)``. Returns
    ``(recall, precision, ap)``: float64 ``(M,)`` arrays, one point per distinct score threshold (all tied
    scores switch together) from the highest down, starting at recall 0 with precision 1; ``ap`` is
    sum over points of (recall step) x precision, the step-wise area under the curve.
    """
    y = np.asarray(y_true01, dtype=np.int64)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("a precision-recall curve needs at least one positive example")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    tp = np.cumsum(ys)[last].astype(np.float64)
    recall = np.r_[0.0, tp / n_pos]
    precision = np.r_[1.0, tp / (last + 1)]
    ap = float(np.sum(np.diff(recall) * precision[1:]))
    return recall, precision, ap


def reliability_bins(y_true, proba, bins: int | None = None) -> dict:
    """Top-class confidence against accuracy in ``bins`` equal-width bins (default: calibration.BINS), binned
    as ``calibration.ece`` bins them (bin b holds confidences in (b/bins, (b+1)/bins]), so the ECE here is
    the report's.

    ``y_true`` int ``(N,)``, ``proba`` float ``(N, K)``. Returns {"confidence", "accuracy", "count"} (lists of
    ``bins`` floats / ints, NaN for empty bins) and "ece" (the count-weighted mean gap between confidence
    and accuracy).
    """
    from cnncli.report import calibration

    bins = bins or calibration.BINS
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, bins) / count
        acc = np.bincount(idx, hit, bins) / count
    ece = float(np.nansum(count * np.abs(mean_conf - acc)) / max(1, len(y)))
    return {"confidence": mean_conf.tolist(), "accuracy": acc.tolist(), "count": count.tolist(), "ece": ece}


def _percent(v: float) -> str:
    return "0" if v == 0 else "<1%" if v < 0.005 else f"{100 * v:.0f}%"


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "…"


def _matrix(fig, ax, values, classes, title, fmt, vmax, cbar_label):
    """One confusion-matrix panel: colour by a square-root scale (so a few errors off the diagonal show),
    every cell written out for up to MAX_ANNOTATED_CLASSES classes, a colour bar."""
    from matplotlib.colors import PowerNorm

    k = len(classes)
    norm = PowerNorm(0.5, vmin=0, vmax=max(vmax, 1e-12))
    im = ax.imshow(values, cmap="Blues", norm=norm, interpolation="nearest")
    ax.grid(False)
    ax.set_title(title)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    labels = [_short(c) for c in classes]
    turn = k > 3 and max(map(len, labels)) > 3
    ax.set_xticks(range(k), labels, rotation=45 if turn else 0, ha="right" if turn else "center",
                  fontsize=9 if k <= 10 else max(4, 9 - k // 8))
    ax.set_yticks(range(k), labels, fontsize=9 if k <= 10 else max(4, 9 - k // 8))
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    if k <= MAX_ANNOTATED_CLASSES:
        size = 10 if k <= 4 else 8 if k <= 12 else 6 if k <= 20 else 5
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                if v == 0 and k > 12:
                    continue  # blank zeros keep a crowded matrix readable
                dark = norm(v) > 0.6
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=size,
                        color="white" if dark else ("#222222" if v else "#9a9a9a"))
    fig.colorbar(im, ax=ax, shrink=0.8, label=cbar_label)


def _roc(ax, y01, score, report):
    fpr, tpr, _ = metrics.roc_curve(y01, score)
    auc = report.get("roc_auc")
    ax.plot([0, 1], [0, 1], color=charts.GREY, linestyle=":", linewidth=1, label="chance")
    # Straight segments: a run of tied scores moves diagonally, as the exact curve does.
    ax.plot(fpr, tpr, color=charts.BLUE, linewidth=1.8,
            label=f"ROC, AUC = {auc:.3f}" if auc is not None else "ROC")
    sens, spec = report.get("sensitivity"), report.get("specificity")
    if sens is not None and spec is not None:
        x, y = 1 - spec, sens
        ax.plot([x], [y], "o", color=charts.RED, markersize=7, markerfacecolor="none", markeredgewidth=2,
                label="operating point")
        _point_label(ax, x, y, f"threshold {report['threshold']:.3g}\nsensitivity {sens:.3f}\n"
                               f"specificity {spec:.3f}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="false positive rate (1 − specificity)",
           ylabel="true positive rate (sensitivity)", title=f"ROC curve (positive: {_short(report['positive_class'])})")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")


def _point_label(ax, x, y, text):
    """A boxed label beside point (x, y) in a unit square, placed towards the emptier side."""
    dx = 14 if x < 0.55 else -14
    dy = -16 if y > 0.45 else 16
    ax.annotate(text, xy=(x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                ha="left" if dx > 0 else "right", va="top" if dy < 0 else "bottom",
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": charts.RED, "lw": 0.8},
                arrowprops={"arrowstyle": "-", "color": charts.RED, "lw": 0.8})


def _pr(ax, y01, score, report):
    recall, precision, ap = precision_recall_curve(y01, score)
    prevalence = float(np.mean(y01))
    ax.axhline(prevalence, color=charts.GREY, linestyle=":", linewidth=1, label=f"chance ({prevalence:.2f})")
    # Each point's precision holds over the recall step that leads to it: the area is the average precision.
    ax.plot(recall, precision, color=charts.BLUE, linewidth=1.8, drawstyle="steps-pre",
            label=f"average precision = {ap:.3f}")
    pos = report["positive_class"]
    prec = report["per_class"][pos]["precision"]
    rec = report["per_class"][pos]["recall"]
    if report["per_class"][pos]["support"]:
        ax.plot([rec], [prec], "o", color=charts.RED, markersize=7, markerfacecolor="none", markeredgewidth=2,
                label="operating point")
        _point_label(ax, rec, prec, f"threshold {report['threshold']:.3g}\nrecall {rec:.3f}\nprecision {prec:.3f}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="recall (sensitivity)", ylabel="precision",
           title=f"Precision-recall (positive: {_short(pos)})")
    ax.set_aspect("equal")
    ax.legend(loc="lower left")


def _reliability(ax, cal):
    bins = len(cal["count"])
    centers = (np.arange(bins) + 0.5) / bins
    acc = np.asarray(cal["accuracy"], dtype=np.float64)
    ax.plot([0, 1], [0, 1], color=charts.GREY, linestyle=":", linewidth=1, label="perfect calibration")
    ax.bar(centers, np.nan_to_num(acc), width=1 / bins, edgecolor="white", color=charts.BLUE, alpha=0.35,
           label="accuracy in bin", zorder=1)
    before = cal.get("before")
    if before is not None:
        ax.plot(before["confidence"], before["accuracy"], "s--", color=charts.GREY, markersize=3, linewidth=1,
                zorder=2, label=f"before calibration (ECE {before['ece']:.3f})")
    ax.plot(cal["confidence"], acc, "o-", color=charts.ORANGE, markersize=4, linewidth=1, zorder=3,
            label=f"after calibration (ECE {cal['ece']:.3f})" if before is not None else "accuracy at mean confidence")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top-class probability)", ylabel="accuracy",
           title=f"Reliability (ECE = {cal['ece']:.3f})")
    ax.set_aspect("equal")
    ax.legend(loc="upper left")


def eval_figure(report: dict, y_true, proba, calibration: dict | None = None):
    """The evaluation picture for ``metrics.classification_report`` output.

    ``y_true`` int ``(N,)`` and ``proba`` float ``(N, K)`` are the scored labels and probabilities (for the
    curves). ``calibration``: ``reliability_bins`` output, drawn as a reliability diagram when given; its
    optional "before" entry (the same for the uncalibrated probabilities) is drawn beside it.
    Row 1: the confusion matrix as counts and as row percentages. Row 2 (two classes with both present, or
    calibration): ROC with the operating point labelled, precision-recall, reliability.
    """
    cm = np.asarray(report["confusion_matrix"]["matrix"], dtype=np.int64)
    classes = report["confusion_matrix"]["classes"]
    k = len(classes)
    check_plottable(k)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    y = np.asarray(y_true)
    y01 = (y == 1).astype(np.int64)
    curves = k == 2 and 0 < y01.sum() < len(y01)
    lower = (2 if curves else 0) + (calibration is not None)
    side = min(7.5, max(3.6, 0.42 * k + 2.0))  # one matrix panel, inches
    width = max(2 * side + 1.2, 3.7 * lower)
    with charts.style():
        fig = charts.figure(width, side + (3.9 if lower else 0) + 0.5)
        top, bottom = fig.subfigures(2, 1, height_ratios=[side, 3.9]) if lower else (fig, None)
        ax_raw, ax_norm = top.subplots(1, 2)
        _matrix(top, ax_raw, cm, classes, "Confusion matrix (counts)", lambda v: f"{int(v)}",
                float(cm.max()), "images")
        _matrix(top, ax_norm, share, classes, "Row-normalised (% of true class)",
                _percent, 1.0, "share of row")
        if lower:
            axes = list(np.atleast_1d(bottom.subplots(1, lower)))
            if curves:
                _roc(axes[0], y01, np.asarray(proba)[:, 1], report)
                _pr(axes[1], y01, np.asarray(proba)[:, 1], report)
            if calibration is not None:
                _reliability(axes[-1], calibration)
        summary = (f"n = {report['n']}   accuracy {report['accuracy']:.4f}   balanced accuracy "
                   f"{report['balanced_accuracy']:.4f}   macro F1 {report['macro_f1']:.4f}")
        fig.suptitle(summary)
    return fig


def plot_eval(path, report: dict, y_true, proba, calibration: dict | None = None) -> None:
    """Write ``eval_figure(...)`` to ``path``; the format follows its suffix."""
    charts.save(eval_figure(report, y_true, proba, calibration), path)
