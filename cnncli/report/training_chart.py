"""Training curves: loss (log scale), accuracy (axis fitted to the data) and learning rate per epoch, with
the best epoch marked. Drawn with matplotlib through `cnncli.report.charts`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from cnncli.report import charts


def _series(history: Sequence[dict], key: str) -> list[float] | None:
    """Values of ``key`` per epoch, NaN where missing or not finite; None when no epoch has a finite value."""
    out = []
    for h in history:
        v = h.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        out.append(float(v) if ok else math.nan)
    return out if any(math.isfinite(v) for v in out) else None


def accuracy_limits(values: Sequence[float]) -> tuple[float, float]:
    """A y range that fits the finite accuracies in ``values`` with a small margin, inside [0, 1] plus room
    for the line at 1.0 to show: 0.967 vs 1.0 is a visible gap, not a hair's width."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = max(0.01, 0.08 * (hi - lo))
    return max(0.0, lo - pad), min(1.0 + pad / 2, hi + pad)


def history_figure(history: Sequence[dict], best_epoch: int | None = None, title: str | None = None):
    """Figure with three panels: loss (log y), accuracy (fitted y, as percent), learning rate.

    ``history``: one dict per epoch with ``epoch`` (default 1, 2, ...) and any of ``train_loss``,
    ``val_loss``, ``train_accuracy``, ``val_accuracy``, ``lr``; missing or non-finite values leave gaps.
    ``best_epoch`` (the epoch whose weights were kept) gets a dashed marker on every panel.
    """
    if not history:
        raise ValueError("history is empty")
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    epochs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    markers = "o" if len(epochs) <= 30 else None
    with charts.style():
        fig = charts.figure(11.5, 3.5)
        ax_loss, ax_acc, ax_lr = fig.subplots(1, 3, width_ratios=[1, 1, 0.7])
        panels = ((ax_loss, "loss", "Loss (log scale)"), (ax_acc, "accuracy", "Accuracy"))
        for ax, what, name in panels:
            drawn = []
            for part, color in (("train", charts.BLUE), ("val", charts.ORANGE)):
                s = _series(history, f"{part}_{what}")
                if s:
                    ax.plot(epochs, s, color=color, marker=markers, markersize=3, linewidth=1.6,
                            label="train" if part == "train" else "validation")
                    drawn += [v for v in s if math.isfinite(v)]
            ax.set_title(name)
            ax.set_xlabel("epoch")
            if not drawn:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color=charts.GREY)
            elif what == "loss" and min(drawn) > 0:
                ax.set_yscale("log")  # the first epoch's spike no longer flattens the rest
            if what == "accuracy":
                ax.set_ylim(*accuracy_limits(drawn))
                ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
            if drawn:
                ax.legend(loc="best")
        lr = _series(history, "lr")
        ax_lr.set_title("Learning rate")
        ax_lr.set_xlabel("epoch")
        if lr:
            ax_lr.plot(epochs, lr, color=charts.GREEN, linewidth=1.6)
            ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            ax_lr.set_ylim(bottom=0)
        else:
            ax_lr.text(0.5, 0.5, "not recorded", transform=ax_lr.transAxes, ha="center", color=charts.GREY)
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if best_epoch:
                ax.axvline(best_epoch, color=charts.GREY, linestyle="--", linewidth=1)
        if best_epoch:
            _label_best(ax_acc, history, epochs, best_epoch)
        if title:
            fig.suptitle(title)
    return fig


def _label_best(ax, history, epochs, best_epoch):
    """Write 'best epoch N' (and its validation accuracy) beside the marker on the accuracy panel."""
    val = _series(history, "val_accuracy")
    text = f"best epoch {best_epoch}"
    if val and best_epoch in epochs and math.isfinite(val[epochs.index(best_epoch)]):
        text += f"\nval {100 * val[epochs.index(best_epoch)]:.2f}%"
    right = best_epoch > (epochs[0] + epochs[-1]) / 2  # keep the label inside the panel
    ax.annotate(text, xy=(best_epoch, 0.04), xycoords=("data", "axes fraction"), xytext=(-4 if right else 4, 0),
                textcoords="offset points", ha="right" if right else "left", va="bottom", fontsize=8,
                color="#444444")


def plot_history(path, history: Sequence[dict], best_epoch: int | None = None, title: str | None = None) -> None:
    """Write the training curves (see ``history_figure``) to ``path``; the format follows its suffix."""
    charts.save(history_figure(history, best_epoch, title), path)
