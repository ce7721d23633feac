"""PNG pictures of evaluation results and training curves, drawn with Pillow only.

Everything is drawn on a white background with Pillow's default font, and written atomically
(a reader never sees a half-written PNG).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cnncli.errors import OutputError, WriteError

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (150, 150, 150)
LIGHT = (225, 225, 225)
DARK_BLUE = (8, 48, 107)
BLUE = (31, 119, 180)
ORANGE = (255, 127, 14)
RED = (214, 39, 40)
PAD = 10
MAX_LABEL_CHARS = 18


# --------------------------------------------------------------------------- text helpers


def _font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom))


def _short(name: str) -> str:
    name = str(name)
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 2] + ".."


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill=BLACK, anchor: str = "la") -> None:
    draw.text(xy, text, fill=fill, font=font, anchor=anchor)


def _vertical_text(img: Image.Image, center_xy, text: str, font, fill=BLACK) -> None:
    """Paste ``text`` rotated 90 degrees (reading bottom to top) centred on ``center_xy``."""
    w, h = _text_size(font, text)
    tile = Image.new("L", (w + 2, h + 2), 0)
    ImageDraw.Draw(tile).text((1, 1), text, fill=255, font=font)
    tile = tile.rotate(90, expand=True)
    x = int(center_xy[0] - tile.width / 2)
    y = int(center_xy[1] - tile.height / 2)
    img.paste(Image.new("RGB", tile.size, fill), (x, y), tile)


def _vertical_text_top(img: Image.Image, x_center: float, y_top: int, text: str, font, fill=BLACK) -> None:
    """Rotated text whose first character sits at the top, right under ``y_top`` (column labels)."""
    w, h = _text_size(font, text)
    tile = Image.new("L", (w + 2, h + 2), 0)
    ImageDraw.Draw(tile).text((1, 1), text, fill=255, font=font)
    tile = tile.rotate(-90, expand=True)
    img.paste(Image.new("RGB", tile.size, fill), (int(x_center - tile.width / 2), y_top), tile)


# --------------------------------------------------------------------------- output


def _write_png(path, img: Image.Image) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    try:
        from cnncli.store.atomic import atomic_write_bytes  # shared atomic writer, when present
    except ImportError:
        atomic_write_bytes = None
    if atomic_write_bytes is not None:
        atomic_write_bytes(path, data)
        return
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(f"{path}: directory does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{path}: cannot create ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WriteError(f"{path}: cannot write ({e.strerror})") from None


# --------------------------------------------------------------------------- confusion matrix


def _shade(frac: float) -> tuple[int, int, int]:
    frac = min(1.0, max(0.0, frac))
    return tuple(int(round(w + (d - w) * frac)) for w, d in zip(WHITE, DARK_BLUE))


def _confusion_layout(classes: Sequence[str], title: str) -> dict:
    """Geometry of the confusion picture: grid origin (x0, y0), cell side, picture size."""
    font, small = _font(13), _font(11)
    k = len(classes)
    labels = [_short(c) for c in classes]
    cell = int(min(64, max(14, 480 // max(k, 1))))
    _, th = _text_size(font, "Hg")
    label_w = max(_text_size(small, s)[0] for s in labels)
    horizontal_cols = label_w <= cell - 4
    col_h = (th if horizontal_cols else label_w) + 8
    title_w, _ = _text_size(font, title)
    x0 = PAD + th + 8 + label_w + 8
    y0 = PAD + th + 10
    width = max(x0 + k * cell + PAD, title_w + 2 * PAD)
    height = y0 + k * cell + col_h + th + 8 + PAD
    return {"x0": x0, "y0": y0, "cell": cell, "width": width, "height": height,
            "horizontal_cols": horizontal_cols, "col_h": col_h}


def confusion_image(cm, classes: Sequence[str], title: str = "Confusion matrix") -> Image.Image:
    """Heat map of ``cm`` (int ``(K, K)``, rows true, columns predicted) with counts in the cells.

    A cell's shade is its share of the true class's row, so small classes stay readable.
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    if cm.ndim != 2 or cm.shape != (k, k) or len(classes) != k:
        raise ValueError(f"cm must be (K, K) with K = len(classes), got {cm.shape} and {len(classes)} names")
    font, small = _font(13), _font(11)
    labels = [_short(c) for c in classes]
    x0, y0, cell, width, height, horizontal_cols, col_h = _confusion_layout(classes, title).values()
    _, th = _text_size(font, "Hg")
    grid = k * cell
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    _text(draw, (width / 2, PAD), title, font, anchor="mt")

    rows = cm.sum(axis=1)
    for i in range(k):
        for j in range(k):
            frac = cm[i, j] / rows[i] if rows[i] else 0.0
            x, y = x0 + j * cell, y0 + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=_shade(frac), outline=LIGHT)
            count = str(int(cm[i, j]))
            cw, ch = _text_size(small, count)
            if cw <= cell - 4 and ch <= cell - 2:
                _text(draw, (x + cell / 2, y + cell / 2), count, small,
                      fill=WHITE if frac > 0.5 else BLACK, anchor="mm")
    draw.rectangle([x0 - 1, y0 - 1, x0 + grid, y0 + grid], outline=BLACK)

    for i, s in enumerate(labels):
        _text(draw, (x0 - 6, y0 + i * cell + cell / 2), s, small, anchor="rm")
        if horizontal_cols:
            _text(draw, (x0 + i * cell + cell / 2, y0 + grid + 4), s, small, anchor="mt")
        else:
            _vertical_text_top(img, x0 + i * cell + cell / 2, y0 + grid + 4, s, small)
    _text(draw, (x0 + grid / 2, y0 + grid + col_h + 2), "Predicted class", font, anchor="mt")
    _vertical_text(img, (PAD + th / 2, y0 + grid / 2), "True class", font)
    return img


def plot_confusion(path, cm, classes: Sequence[str]) -> None:
    """Write the confusion-matrix heat map (``cm`` int ``(K, K)``, rows true) as a PNG to ``path``."""
    _write_png(path, confusion_image(cm, classes))


# --------------------------------------------------------------------------- axes


def _nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> tuple[list[float], int]:
    """Round tick values covering [lo, hi] and the decimals needed to print them."""
    span = hi - lo if hi > lo else 1.0
    raw = span / n
    if integer:
        raw = max(raw, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(s * mag for s in steps if s * mag >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = first
    # Keep going until the last tick reaches hi, so every value lies inside the frame.
    while not ticks or ticks[-1] < hi - step * 1e-6 or len(ticks) < 2:
        ticks.append(round(v, 12))
        v += step
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step / 10**-decimals - round(step / 10**-decimals)) > 1e-9:
        decimals += 1
    return ticks, decimals


class _Axes:
    """A plot frame inside ``img``: maps data coordinates to pixels and draws ticks and labels."""

    def __init__(self, img, box, xticks, xdec, yticks, ydec, xlabel, ylabel, title, grid=True):
        self.img, self.draw = img, ImageDraw.Draw(img)
        self.l, self.t, self.r, self.b = box
        self.xlim = (xticks[0], xticks[-1])
        self.ylim = (yticks[0], yticks[-1])
        font, small = _font(13), _font(11)
        d = self.draw
        for v in yticks:
            y = self.py(v)
            if grid:
                d.line([(self.l, y), (self.r, y)], fill=LIGHT)
            d.line([(self.l - 4, y), (self.l, y)], fill=BLACK)
            _text(d, (self.l - 6, y), f"{v:.{ydec}f}", small, anchor="rm")
        for v in xticks:
            x = self.px(v)
            if grid:
                d.line([(x, self.t), (x, self.b)], fill=LIGHT)
            d.line([(x, self.b), (x, self.b + 4)], fill=BLACK)
            _text(d, (x, self.b + 6), f"{v:.{xdec}f}", small, anchor="mt")
        d.rectangle([self.l, self.t, self.r, self.b], outline=BLACK)
        _, th = _text_size(small, "0")
        _text(d, ((self.l + self.r) / 2, self.b + 6 + th + 6), xlabel, font, anchor="mt")
        _text(d, ((self.l + self.r) / 2, self.t - 8), title, font, anchor="mb")
        ytick_w = max(_text_size(small, f"{v:.{ydec}f}")[0] for v in yticks)
        _vertical_text(img, (self.l - 6 - ytick_w - 12, (self.t + self.b) / 2), ylabel, font)

    def px(self, x: float) -> float:
        x0, x1 = self.xlim
        return self.l + (x - x0) / (x1 - x0) * (self.r - self.l)

    def py(self, y: float) -> float:
        y0, y1 = self.ylim
        return self.b - (y - y0) / (y1 - y0) * (self.b - self.t)

    def polyline(self, xs, ys, color, width=2, markers=False) -> None:
        """Line through the finite points; a non-finite value breaks the line."""
        run: list[tuple[float, float]] = []
        runs = []
        for x, y in zip(xs, ys):
            if y is None or not math.isfinite(float(y)):
                if run:
                    runs.append(run)
                run = []
                continue
            run.append((self.px(float(x)), self.py(float(y))))
        if run:
            runs.append(run)
        for pts in runs:
            if len(pts) > 1:
                self.draw.line(pts, fill=color, width=width, joint="curve")
            if markers or len(pts) == 1:
                for px, py in pts:
                    self.draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        if not entries:
            return
        small = _font(11)
        _, th = _text_size(small, "Hg")
        w = max(_text_size(small, s)[0] for s, _ in entries) + 34
        h = len(entries) * (th + 6) + 6
        # Put the legend in the corner that hides the fewest drawn curve pixels.
        corners = [(self.r - 8 - w, self.t + 8), (self.r - 8 - w, self.b - 8 - h),
                   (self.l + 8, self.t + 8), (self.l + 8, self.b - 8 - h)]
        pixels = np.asarray(self.img)

        def covered(c):
            region = pixels[int(c[1]):int(c[1] + h) + 1, int(c[0]):int(c[0] + w) + 1].astype(np.int16)
            # Curve colours are saturated; white, black and grey grid lines are not.
            return int(np.sum(region.max(axis=2) - region.min(axis=2) > 60))

        x0, y0 = min(corners, key=covered)
        x1 = x0 + w
        self.draw.rectangle([x0, y0, x1, y0 + h], fill=WHITE, outline=GREY)
        for i, (label, color) in enumerate(entries):
            y = y0 + 6 + i * (th + 6) + th / 2
            self.draw.line([(x0 + 6, y), (x0 + 24, y)], fill=color, width=3)
            _text(self.draw, (x0 + 28, y), label, small, anchor="lm")


# --------------------------------------------------------------------------- ROC


def roc_image(fpr, tpr, auc: float | None, point: tuple[float, float] | None = None) -> Image.Image:
    """ROC curve picture; ``fpr``, ``tpr`` float ``(M,)``; ``point`` = (fpr, tpr) operating point to mark."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1:
        raise ValueError("fpr and tpr must be 1-D of equal length")
    side = 300
    left, top = 80, 40
    img = Image.new("RGB", (left + side + 20, top + side + 60), WHITE)
    ticks, dec = _nice_ticks(0.0, 1.0)
    title = f"ROC curve (AUC = {auc:.3f})" if auc is not None else "ROC curve (AUC undefined)"
    ax = _Axes(img, (left, top, left + side, top + side), ticks, dec, ticks, dec,
               "False positive rate (1 - specificity)", "True positive rate", title)
    # Chance diagonal, dashed.
    for a in np.arange(0.0, 1.0, 0.04):
        ax.draw.line([(ax.px(a), ax.py(a)), (ax.px(a + 0.02), ax.py(a + 0.02))], fill=GREY)
    ax.polyline(fpr, tpr, BLUE, width=2)
    if point is not None:
        x, y = ax.px(point[0]), ax.py(point[1])
        ax.draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=RED, width=2)
    return img


def plot_roc(path, fpr, tpr, auc: float | None) -> None:
    """Write the ROC curve (``fpr``, ``tpr`` float ``(M,)``, from ``metrics.roc_curve``) as a PNG."""
    _write_png(path, roc_image(fpr, tpr, auc))


# --------------------------------------------------------------------------- evaluation sheet


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def eval_image(report: dict, roc=None) -> Image.Image:
    """One picture: summary line, confusion matrix, and (for two classes, when ``roc`` = (fpr, tpr, ...)
    is given) the ROC curve beside it with the operating threshold marked."""
    cmd = report["confusion_matrix"]
    parts = [confusion_image(cmd["matrix"], cmd["classes"])]
    if roc is not None and len(cmd["classes"]) == 2:
        point = None
        if report.get("sensitivity") is not None and report.get("specificity") is not None:
            point = (1.0 - report["specificity"], report["sensitivity"])
        parts.append(roc_image(roc[0], roc[1], report.get("roc_auc"), point))
    lines = [
        f"n = {report['n']}   accuracy {_fmt(report['accuracy'])}   "
        f"balanced accuracy {_fmt(report['balanced_accuracy'])}   macro F1 {_fmt(report['macro_f1'])}"
    ]
    if "threshold" in report:
        lines.append(
            f"positive class '{_short(report['positive_class'])}'   threshold {report['threshold']:g}   "
            f"sensitivity {_fmt(report.get('sensitivity'))}   specificity {_fmt(report.get('specificity'))}   "
            f"ROC AUC {_fmt(report.get('roc_auc'))}"
        )
    font = _font(13)
    _, th = _text_size(font, "Hg")
    header_h = PAD + len(lines) * (th + 6) + PAD
    width = max(sum(p.width for p in parts), max(_text_size(font, s)[0] for s in lines) + 2 * PAD)
    height = header_h + max(p.height for p in parts)
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    for i, s in enumerate(lines):
        _text(draw, (PAD, PAD + i * (th + 6)), s, font)
    x = 0
    for p in parts:
        img.paste(p, (x, header_h))
        x += p.width
    return img


def plot_eval(path, report: dict, roc=None) -> None:
    """Write the evaluation sheet for ``metrics.classification_report`` output as a PNG.

    ``roc``: optional ``(fpr, tpr[, thresholds])`` from ``metrics.roc_curve``; drawn for two classes.
    """
    _write_png(path, eval_image(report, roc))


# --------------------------------------------------------------------------- training history

_TRAIN_LOSS = ("train_loss", "loss")
_VAL_LOSS = ("val_loss", "valid_loss", "validation_loss")
_TRAIN_ACC = ("train_accuracy", "train_acc", "accuracy", "acc")
_VAL_ACC = ("val_accuracy", "val_acc", "valid_accuracy", "validation_accuracy")


def _series(history: Sequence[dict], keys: Sequence[str]) -> list[float] | None:
    key = next((k for k in keys if any(k in h for h in history)), None)
    if key is None:
        return None
    out = []
    for h in history:
        v = h.get(key)
        out.append(float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else math.nan)
    return out if any(math.isfinite(v) for v in out) else None


def history_image(history: Sequence[dict]) -> Image.Image:
    """Loss and accuracy per epoch, train and validation, side by side.

    ``history``: one dict per epoch with ``epoch`` (optional, default 1, 2, ...) and any of
    ``train_loss``/``loss``, ``val_loss``, ``train_accuracy``/``train_acc``/``accuracy``,
    ``val_accuracy``/``val_acc``; missing or non-finite values are skipped.
    """
    if not history:
        raise ValueError("history is empty")
    epochs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    xticks, xdec = _nice_ticks(min(epochs), max(epochs), integer=True)
    w, h, left, top = 300, 220, 80, 40
    panel_w, panel_h = left + w + 20, top + h + 60
    img = Image.new("RGB", (2 * panel_w, panel_h), WHITE)

    panels = [
        ("Loss", "loss", _series(history, _TRAIN_LOSS), _series(history, _VAL_LOSS), None),
        ("Accuracy", "accuracy", _series(history, _TRAIN_ACC), _series(history, _VAL_ACC), (0.0, 1.0)),
    ]
    for n, (title, ylabel, train, val, ylim) in enumerate(panels):
        values = [v for s in (train, val) if s for v in s if math.isfinite(v)]
        if ylim is None:
            lo = min(0.0, min(values)) if values else 0.0
            hi = max(values) if values else 1.0
            ylim = (lo, hi if hi > lo else lo + 1.0)
        yticks, ydec = _nice_ticks(*ylim)
        ox = n * panel_w
        ax = _Axes(img, (ox + left, top, ox + left + w, top + h), xticks, xdec, yticks, ydec,
                   "epoch", ylabel, title)
        entries = []
        for label, color, s in (("train", BLUE, train), ("validation", ORANGE, val)):
            if s:
                ax.polyline(epochs, s, color, width=2, markers=len(epochs) <= 30)
                entries.append((label, color))
        if not entries:
            _text(ax.draw, ((ax.l + ax.r) / 2, (ax.t + ax.b) / 2), "no data", _font(13), fill=GREY, anchor="mm")
        ax.legend(entries)
    return img


def plot_history(path, history: Sequence[dict]) -> None:
    """Write training curves (see ``history_image`` for the accepted keys) as a PNG to ``path``."""
    _write_png(path, history_image(history))
