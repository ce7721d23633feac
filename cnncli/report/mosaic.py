"""The mistakes mosaic (`eval --errors-image`): the most confidently wrong images in a grid, each captioned
with its true label, the predicted label and that prediction's probability. Drawn with matplotlib."""

from __future__ import annotations

import math
import os

import numpy as np

from cnncli.report import charts, metrics

DEFAULT_TILES = 16
MAX_TILES = 64
MAX_NAME_CHARS = 18


def _short(name: str, limit: int = MAX_NAME_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def tile_image(x_chw: np.ndarray) -> tuple[np.ndarray, dict]:
    """uint8 (C, H, W) -> (array for imshow, imshow keyword arguments): gray (H, W) or RGB (H, W, 3)."""
    if x_chw.shape[0] == 1:
        return x_chw[0], {"cmap": "gray", "vmin": 0, "vmax": 255}
    return np.ascontiguousarray(x_chw.transpose(1, 2, 0)), {}


def errors_figure(x, y_true, proba, classes, paths=None, n: int = DEFAULT_TILES, threshold: float | None = None):
    """Figure of the ``n`` (at most MAX_TILES) most confidently wrong images, most confident first.

    ``x``: uint8 (N, C, H, W) as the model saw them; ``y_true``: int (N,); ``proba``: float (N, K);
    ``classes``: K names; ``paths``: N file names for the captions (optional); predictions as
    ``metrics.most_confident_errors`` makes them (``threshold`` for two classes). With no mistakes the figure
    says so.
    """
    n = max(1, min(int(n), MAX_TILES))
    wrong = metrics.most_confident_errors(list(range(len(y_true))), y_true, proba, n, threshold)
    cols = min(8, max(1, math.ceil(math.sqrt(len(wrong) * 1.6)))) if wrong else 1
    rows = max(1, math.ceil(len(wrong) / cols))
    with charts.style():
        fig = charts.figure(1.55 * cols + 0.3, 1.95 * rows + 0.5)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, (i, t, k, p) in zip(axes, wrong):
            img, kw = tile_image(np.asarray(x[i]))
            ax.imshow(img, interpolation="nearest", **kw)
            caption = f"true: {_short(classes[t])}\npred: {_short(classes[k])} {p:.2f}"
            if paths is not None:
                caption += f"\n{_short(os.path.basename(str(paths[i])))}"
            ax.set_title(caption, fontsize=7.5, color="#b00000", loc="center", pad=3)
        head = (f"{len(wrong)} most confidently wrong of {len(y_true)} images" if wrong
                else f"no mistakes among {len(y_true)} images")
        fig.suptitle(head)
    return fig


def plot_errors(path, x, y_true, proba, classes, paths=None, n: int = DEFAULT_TILES,
                threshold: float | None = None) -> None:
    """Write ``errors_figure(...)`` to ``path``; the format follows its suffix."""
    charts.save(errors_figure(x, y_true, proba, classes, paths, n, threshold), path)
