"""Pictures for `cnncli show`: first-layer filters, feature maps per layer and the saliency overlay.

Each `draw_*` function fills a matplotlib (sub)figure and returns the height in inches it wants, so the
parts can be stacked into one picture or written one per file."""

from __future__ import annotations

import math

import numpy as np

from cnncli.report import charts
from cnncli.report.mosaic import tile_image

COLS = 8
TILE = 0.95  # inches per small image


def _grid(sub, n, cols=COLS):
    rows = max(1, math.ceil(n / cols))
    axes = np.atleast_1d(sub.subplots(rows, min(cols, max(n, 1)), squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    return axes


def filters_height(weights) -> float:
    return 0.6 + TILE * math.ceil(min(len(weights), 64) / COLS)


def draw_filters(sub, weights, token: str) -> None:
    """Up to 64 filters of a conv layer, ``weights`` float (F, C, KH, KW): gray or RGB images for 1 or 3
    input channels (one colour scale shared by all filters, so strong and weak filters compare), else the
    mean over channels on a blue-white-red scale centred at zero."""
    f, c = weights.shape[:2]
    shown = weights[:64]
    lim = float(np.abs(shown).max()) or 1.0
    for k, ax in zip(range(len(shown)), _grid(sub, len(shown))):
        w = shown[k]
        if c == 3:
            ax.imshow(np.clip(w.transpose(1, 2, 0) / (2 * lim) + 0.5, 0, 1), interpolation="nearest")
        else:
            ax.imshow(w.mean(axis=0), cmap="RdBu_r" if c != 1 else "gray", vmin=-lim, vmax=lim,
                      interpolation="nearest")
        ax.set_title(str(k), fontsize=7, pad=1)
    what = "RGB" if c == 3 else "gray, dark = negative" if c == 1 else f"mean over {c} channels"
    sub.suptitle(f"{token}: {min(f, 64)} of {f} filters, {weights.shape[2]}x{weights.shape[3]} ({what})",
                 fontsize=10)


def maps_height(n_layers: int, max_maps: int) -> float:
    return n_layers * (0.55 + TILE * math.ceil(max_maps / COLS))


def map_mosaic(maps, n: int, cols: int = COLS):
    """The first ``n`` of ``maps`` float (C, H, W) tiled ``cols`` to a row into one float array, each map
    scaled to [0, 1] by its own range (a constant map is 0), with one-pixel NaN gaps between tiles."""
    c, h, w = maps.shape
    rows = max(1, math.ceil(n / cols))
    width = min(n, cols)
    out = np.full((rows * (h + 1) - 1, width * (w + 1) - 1), np.nan, np.float32)
    for k in range(n):
        m = maps[k].astype(np.float32)
        lo, hi = float(m.min()), float(m.max())
        r, col = divmod(k, cols)
        out[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = (m - lo) / (hi - lo) if hi > lo else 0
    return out


def draw_maps(sub, layers: list, max_maps: int) -> None:
    """One band per layer: ``layers`` = [(index, token, maps float (C, H, W))]; the first ``max_maps``
    channels tiled into one picture (viridis, each map scaled to its own range: bright = strong)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    axes = np.atleast_1d(sub.subplots(len(layers), 1, squeeze=False)).ravel()
    for ax, (i, token, maps) in zip(axes, layers):
        c, h, w = maps.shape
        n = min(c, max_maps)
        ax.imshow(map_mosaic(maps, n), cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        ax.axis("off")
        ax.set_title(f"layer {i + 1} {token}: {c}x{h}x{w}" + (f" (first {n} maps)" if n < c else ""),
                     fontsize=9, loc="left")


def draw_saliency(sub, image_chw, heat, method: str, label: str, probability: float) -> None:
    """The input image, the heat map and the two overlaid; ``image_chw`` uint8 (C, H, W), ``heat`` (H, W)."""
    img, kw = tile_image(image_chw)
    axes = sub.subplots(1, 3)
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(img, interpolation="nearest", **kw)
    axes[0].set_title("input (as the model sees it)", fontsize=8)
    axes[1].imshow(heat, cmap="inferno", vmin=0, vmax=1, interpolation="bilinear")
    axes[1].set_title(method, fontsize=8)
    axes[2].imshow(img, interpolation="nearest", **kw)
    axes[2].imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.55, interpolation="bilinear")
    axes[2].set_title("overlay", fontsize=8)
    sub.suptitle(f"saliency for the prediction: {label} ({probability:.3f})", fontsize=10)


SALIENCY_HEIGHT = 2.6


def combined(parts: list) -> object:
    """One figure stacking ``parts`` = [(height inches, draw(subfigure))] top to bottom."""
    with charts.style():
        heights = [h for h, _ in parts]
        fig = charts.figure(COLS * TILE + 0.6, sum(heights) + 0.2)
        subs = fig.subfigures(len(parts), 1, height_ratios=heights) if len(parts) > 1 else [fig]
        for sub, (_, draw) in zip(np.atleast_1d(subs), parts):
            draw(sub)
    return fig
