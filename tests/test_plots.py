"""Plots: valid PNGs of sensible size whose pixels show what they claim to show."""

import os

import numpy as np
import pytest
from PIL import Image

from cnncli.report import metrics

from cnncli.report import plots
from cnncli.errors import CnnError


def _open_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).astype(np.int16)
    h, w, _ = rgb.shape
    assert 100 <= w <= 4000 and 100 <= h <= 4000
    return rgb


def _blue_mask(rgb):
    """Pixels close to the curve colour used for the ROC line and the train series."""
    return (np.abs(rgb - np.array(plots.BLUE)).sum(axis=2) < 60)


def _orange_mask(rgb):
    return (np.abs(rgb - np.array(plots.ORANGE)).sum(axis=2) < 60)


def test_confusion_cells_are_shaded_by_count_and_oriented(tmp_path):
    cm = np.array([[40, 0], [10, 30]])  # rows: true class
    path = tmp_path / "cm.png"
    plots.plot_confusion(path, cm, ["cat", "dog"])
    rgb = _open_png(path)
    assert os.listdir(tmp_path) == ["cm.png"]  # no temporary file left behind
    lay = plots._confusion_layout(["cat", "dog"], "Confusion matrix")
    assert rgb.shape[:2] == (lay["height"], lay["width"])
    x0, y0, c = lay["x0"], lay["y0"], lay["cell"]

    def corner(i, j):  # a pixel near the cell's corner, away from the count text
        return rgb[y0 + i * c + 4, x0 + j * c + 4].sum()

    assert corner(0, 0) < corner(1, 0) < corner(0, 1)  # 40 darker than 10/40 share darker than 0
    assert corner(0, 1) == 3 * 255  # a zero count is white; a transposed matrix would shade it
    assert corner(1, 1) < corner(1, 0)

    def centre(i, j):
        return rgb[y0 + i * c + c // 4: y0 + (i + 1) * c - c // 4, x0 + j * c + c // 4: x0 + (j + 1) * c - c // 4]

    assert (centre(0, 0).sum(axis=2) > 600).any()  # light count text on the dark cell
    assert (centre(0, 1).sum(axis=2) < 200).any()  # dark "0" on the white cell


def test_confusion_many_classes_and_long_names(tmp_path):
    k = 30
    cm = np.random.default_rng(0).integers(0, 500, (k, k))
    names = [f"a_rather_long_class_name_{i}" for i in range(k)]
    plots.plot_confusion(tmp_path / "big.png", cm, names)
    rgb = _open_png(tmp_path / "big.png")
    assert rgb.shape[1] < 1200  # names are shortened, cells shrink


def _roc_centroid(tmp_path, fpr, tpr, name):
    plots.plot_roc(tmp_path / name, fpr, tpr, 0.5)
    rgb = _open_png(tmp_path / name)
    ys, xs = np.nonzero(_blue_mask(rgb))
    assert len(xs) > 300  # a drawn line, not a few stray pixels
    return xs.mean(), ys.mean()


def test_roc_curve_is_drawn_where_the_points_are(tmp_path):
    gx, gy = _roc_centroid(tmp_path, [0, 0, 1], [0, 1, 1], "good.png")  # left and top edges
    bx, by = _roc_centroid(tmp_path, [0, 1, 1], [0, 0, 1], "bad.png")  # bottom and right edges
    assert gx < bx - 50 and gy < by - 50


def test_plot_eval_binary_has_roc_beside_confusion(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 100)
    s = np.clip(0.4 * y + 0.6 * rng.random(100), 0, 1)
    report = metrics.classification_report(y, np.c_[1 - s, s], ["neg", "pos"])
    roc = metrics.roc_curve(y, s)
    plots.plot_eval(tmp_path / "with.png", report, roc)
    plots.plot_eval(tmp_path / "without.png", report)
    with_roc, without = _open_png(tmp_path / "with.png"), _open_png(tmp_path / "without.png")
    assert with_roc.shape[1] > without.shape[1]
    blue = _blue_mask(with_roc)
    half = with_roc.shape[1] // 2
    assert blue[:, half:].sum() > 300 and blue[:, :half // 2].sum() == 0  # the curve is on the right
    assert _blue_mask(without).sum() == 0


def test_plot_eval_multiclass_and_single_class(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 50)
    report = metrics.classification_report(y, rng.dirichlet(np.ones(4), 50), list("abcd"))
    plots.plot_eval(tmp_path / "multi.png", report)
    _open_png(tmp_path / "multi.png")
    one = metrics.classification_report(np.zeros(5, int), np.tile([0.3, 0.7], (5, 1)), ["a", "b"])
    plots.plot_eval(tmp_path / "one.png", one)  # undefined AUC/sensitivity must not crash
    _open_png(tmp_path / "one.png")


def test_history_curves_follow_the_values(tmp_path):
    n = 10
    history = [
        {"epoch": e + 1, "train_loss": 2.0 - 0.2 * e, "val_loss": 0.1 + 0.2 * e,
         "train_accuracy": 0.1 + 0.08 * e, "val_accuracy": 0.9 - 0.08 * e}
        for e in range(n)
    ]
    plots.plot_history(tmp_path / "h.png", history)
    rgb = _open_png(tmp_path / "h.png")
    half = rgb.shape[1] // 2
    loss = rgb[:, :half]
    for mask, falling in ((_blue_mask(loss), True), (_orange_mask(loss), False)):
        ys, xs = np.nonzero(mask)
        assert len(xs) > 200
        third = (xs.max() - xs.min()) / 3
        early = ys[xs < xs.min() + third].mean()
        late = ys[xs > xs.max() - third].mean()
        # Image y grows downwards: a falling series ends lower on the page (larger y).
        assert (late > early + 40) if falling else (early > late + 40)
    assert _orange_mask(rgb[:, half:]).sum() > 200  # validation accuracy drawn too


def test_history_without_validation_or_with_nan(tmp_path):
    history = [{"epoch": 1, "loss": 1.0, "acc": 0.5}, {"epoch": 2, "loss": float("nan"), "acc": 0.6},
               {"epoch": 3, "loss": 0.5, "acc": None}]
    plots.plot_history(tmp_path / "h.png", history)
    rgb = _open_png(tmp_path / "h.png")
    assert _orange_mask(rgb).sum() == 0  # no validation series, no validation legend
    assert _blue_mask(rgb).sum() > 50
    with pytest.raises(ValueError):
        plots.plot_history(tmp_path / "empty.png", [])


def test_unwritable_destination_is_a_cnn_error(tmp_path):
    target = tmp_path / "missing" / "cm.png"
    with pytest.raises(CnnError):
        plots.plot_confusion(target, np.eye(2, dtype=int), ["a", "b"])
    assert not (tmp_path / "missing").exists()
