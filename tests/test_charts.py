"""Charts (matplotlib): what each picture shows, the format following the suffix, atomic writes, refusals,
and that commands which draw nothing never import matplotlib."""

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from cnncli.commands.cli import main
from cnncli.engine.model import Model
from cnncli.errors import CnnError
from cnncli.report import charts, eval_chart, metrics, mosaic, training_chart
from cnncli.store import modelfile

HISTORY = [{"epoch": e, "train_loss": 3.0 / e ** 2, "val_loss": 2.0 / e + 0.1,
            "train_accuracy": min(1.0, 0.90 + 0.02 * e), "val_accuracy": 0.93 + 0.01 * min(e, 3),
            "lr": 0.002 * (1 - 0.1 * e)} for e in range(1, 7)]


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def _run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, out.getvalue(), err.getvalue()


def test_training_curves_log_loss_fitted_accuracy_best_epoch_lr_title():
    fig = training_chart.history_figure(HISTORY, best_epoch=4, title="m1 on photos/")
    loss, acc, lr = fig.axes[:3]
    assert loss.get_yscale() == "log"
    lo, hi = acc.get_ylim()
    assert 0.85 < lo < 0.92 and 1.0 <= hi < 1.05  # fitted to 0.92..1.0, not 0..1
    assert [round(v, 6) for v in lr.lines[0].get_ydata()] == [round(h["lr"], 6) for h in HISTORY]
    for ax in (loss, acc, lr):  # the dashed best-epoch marker on every panel
        assert any(list(ln.get_xdata()) == [4, 4] and ln.get_linestyle() == "--" for ln in ax.lines)
    assert any("best epoch 4" in t and "96.00%" in t for t in _texts(fig))
    assert fig.get_suptitle() == "m1 on photos/"
    train_line = loss.lines[0]
    assert list(train_line.get_ydata()) == [h["train_loss"] for h in HISTORY]


def test_accuracy_limits_show_a_small_gap():
    lo, hi = training_chart.accuracy_limits([0.967, 1.0])
    assert 0.94 < lo < 0.967 and hi >= 1.0  # 0.967 vs 1.0 spans most of the axis
    assert training_chart.accuracy_limits([float("nan")]) == (0.0, 1.0)


def test_history_without_validation_or_with_nan_and_empty(tmp_path):
    fig = training_chart.history_figure([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5},
                                         {"epoch": 2, "train_loss": float("nan"), "train_accuracy": 0.6}])
    assert [len(ax.lines) for ax in fig.axes[:2]] == [1, 1]  # no validation series drawn
    assert "not recorded" in _texts(fig)  # no learning rate in this history
    with pytest.raises(ValueError):
        training_chart.history_figure([])


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".SVG", b"<?xml"), (".pdf", b"%PDF")])
def test_format_follows_suffix_and_is_reproducible(tmp_path, suffix, magic):
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    training_chart.plot_history(a, HISTORY, 3, "t")
    training_chart.plot_history(b, HISTORY, 3, "t")
    assert a.read_bytes().startswith(magic)
    assert a.read_bytes() == b.read_bytes()  # no dates or versions inside
    assert sorted(os.listdir(tmp_path)) == sorted([a.name, b.name])  # no temp file left


def test_unknown_suffix_and_unwritable_destination(tmp_path):
    with pytest.raises(ValueError, match="x.gif"):
        charts.chart_format(tmp_path / "x.gif")
    with pytest.raises(CnnError):
        training_chart.plot_history(tmp_path / "missing" / "h.png", HISTORY)
    assert not (tmp_path / "missing").exists()


def _binary_case(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(0.5 * y + 0.5 * rng.random(n), 0, 1)
    proba = np.c_[1 - s, s]
    return y, proba, metrics.classification_report(y, proba, ["benign", "malignant"], 0.6)


def test_eval_figure_two_classes_matrices_roc_pr():
    y, proba, rep = _binary_case()
    fig = eval_chart.eval_figure(rep, y, proba)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("Confusion matrix (counts)") for t in titles)
    assert any(t.startswith("Row-normalised") for t in titles)
    assert any(t.startswith("ROC curve") for t in titles) and any(t.startswith("Precision-recall") for t in titles)
    assert not any(t.startswith("Reliability") for t in titles)
    cm = np.array(rep["confusion_matrix"]["matrix"])
    texts = _texts(fig)
    for v in cm.ravel():  # counts in the raw panel, row percentages in the normalised one
        assert str(v) in texts
    assert f"{100 * cm[1, 1] / cm[1].sum():.0f}%" in texts
    sens, spec = rep["sensitivity"], rep["specificity"]
    assert f"threshold 0.6\nsensitivity {sens:.3f}\nspecificity {spec:.3f}" in texts
    roc = next(ax for ax in fig.axes if ax.get_title().startswith("ROC"))
    point = next(ln for ln in roc.lines if ln.get_label() == "operating point")
    assert point.get_xdata()[0] == pytest.approx(1 - spec) and point.get_ydata()[0] == pytest.approx(sens)
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 2


def test_eval_figure_ten_classes_and_reliability_hook():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 300)
    proba = rng.dirichlet(np.ones(10), 300)
    rep = metrics.classification_report(y, proba, [f"class {i}" for i in range(10)])
    fig = eval_chart.eval_figure(rep, y, proba)
    assert not any(ax.get_title().startswith(("ROC", "Reliability")) for ax in fig.axes)
    fig = eval_chart.eval_figure(rep, y, proba, eval_chart.reliability_bins(y, proba))
    assert any(ax.get_title().startswith("Reliability (ECE = ") for ax in fig.axes)


def test_precision_recall_curve_by_hand():
    # scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg): the tie switches together
    recall, precision, ap = eval_chart.precision_recall_curve([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1])
    assert recall.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_reliability_bins_by_hand():
    from cnncli.report import calibration

    proba = np.array([[0.95, 0.05], [0.92, 0.08], [0.4, 0.6], [0.3, 0.7]])
    cal = eval_chart.reliability_bins([0, 1, 1, 0], proba, bins=10)
    # bins are right-closed, as the report's ECE bins them: 0.6 falls in (0.5, 0.6]
    assert cal["count"][9] == 2 and cal["count"][5] == 1 and cal["count"][6] == 1 and sum(cal["count"]) == 4
    assert cal["accuracy"][9] == 0.5 and cal["confidence"][9] == pytest.approx(0.935)
    assert cal["ece"] == pytest.approx((2 * 0.435 + 0.4 + 0.7) / 4)
    assert cal["ece"] == pytest.approx(calibration.ece([0, 1, 1, 0], proba, 10))


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    data = make_image_folder(root / "d", n_per_class=6, size=12)
    model = root / "m.safetensors"
    modelfile.save(model, modelfile.Classifier(Model("conv4k3-relu-pool2-fc", (1, 12, 12), 2, seed=1),
                                               ["cat", "dog"], "gray", [0.5], [0.25]))
    return root, data, model


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_eval_plot_writes_the_suffix_format(two_class, suffix, magic):
    root, data, model = two_class
    out = root / f"eval{suffix}"
    code, stdout, stderr = _run(["eval", data, "-m", model, "--plot", out])
    assert code == 0, stderr
    assert out.read_bytes().startswith(magic)
    if suffix == ".png":
        with Image.open(out) as im:
            assert 600 < im.width < 2500 and 600 < im.height < 2500


def test_eval_plot_bad_suffix_fails_before_decoding(two_class, tmp_path):
    root, data, model = two_class
    data = make_image_folder(tmp_path / "d", n_per_class=2, size=12)
    (data / "cat" / "broken.png").write_bytes(b"junk")  # decoding it would print a warning
    code, stdout, stderr = _run(["eval", data, "-m", model, "--plot", tmp_path / "e.gif"])
    assert code == 2 and stdout == ""
    assert "e.gif" in stderr and "skipped" not in stderr  # refused before any image was decoded


def test_eval_plot_ten_thousand_classes_is_refused_in_one_line(tmp_path):
    k = 10_000
    model = tmp_path / "big.safetensors"
    modelfile.save(model, modelfile.Classifier(Model("fc", (1, 4, 4), k, seed=0), [f"c{i}" for i in range(k)],
                                               "gray", [0.5], [0.25]))
    data = make_image_folder(tmp_path / "d", classes=("c0", "c1"), n_per_class=2, size=4)
    (data / "c0" / "junk.png").write_bytes(b"junk")
    code, stdout, stderr = _run(["eval", data, "-m", model, "--plot", tmp_path / "e.png"])
    assert code == 2 and stdout == "" and not (tmp_path / "e.png").exists()
    assert "--plot" in stderr and "10000 classes" in stderr and "skipped" not in stderr
    assert "Traceback" not in stderr


def test_predict_and_help_do_not_import_matplotlib(two_class):
    root, data, model = two_class
    img = str(next(data.rglob("*.png")))
    probe = ("import sys\nfrom cnncli.commands.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'onnx', 'onnxruntime'))\n"
             "print(code, heavy, file=sys.stderr)")
    env = {**os.environ, "HOME": str(root), "XDG_CACHE_HOME": str(root / "cache")}
    for args in (["predict", img, "-m", str(model)], ["--help"], ["eval", "--help"]):
        res = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, timeout=60, env=env,
                             cwd=root)
        assert res.stderr.decode().strip().endswith("0 []"), (args, res.stderr)


def test_errors_mosaic_shows_the_most_confident_mistakes_in_order():
    x = np.arange(5 * 1 * 4 * 4, dtype=np.uint8).reshape(5, 1, 4, 4)
    y = np.array([0, 1, 2, 0, 1])
    proba = np.array([[0.1, 0.8, 0.1],  # wrong, 0.8
                      [0.1, 0.9, 0.0],  # right
                      [0.95, 0.0, 0.05],  # wrong, 0.95
                      [0.6, 0.3, 0.1],  # right
                      [0.2, 0.1, 0.7]])  # wrong, 0.7
    fig = mosaic.errors_figure(x, y, proba, ["coat", "bag", "shirt"], [f"d/{i}.png" for i in range(5)], n=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["true: shirt\npred: coat 0.95\n2.png", "true: coat\npred: bag 0.80\n0.png"]
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 2 and np.array_equal(shown[0], x[2, 0]) and np.array_equal(shown[1], x[0, 0])
    assert fig.get_suptitle() == "2 most confidently wrong of 5 images"
    none = mosaic.errors_figure(x, proba.argmax(axis=1), proba, ["coat", "bag", "shirt"])
    assert none.get_suptitle() == "no mistakes among 5 images"


def test_eval_errors_image_command(two_class, tmp_path):
    root, data, _ = two_class
    model = tmp_path / "zero.safetensors"  # every probability 0.5: each cat is called dog, 6 mistakes
    m = Model("conv4k3-relu-pool2-fc", (1, 12, 12), 2)
    m.load_state_dict({k: np.zeros_like(v) for k, v in m.state_dict().items()})
    modelfile.save(model, modelfile.Classifier(m, ["cat", "dog"], "gray", [0.5], [0.25]))
    out = tmp_path / "mistakes.svg"
    code, stdout, stderr = _run(["eval", data, "-m", model, "--errors-image", out, "--errors", "3"])
    assert code == 0, stderr
    svg = out.read_bytes()
    assert svg.startswith(b"<?xml") and b"3 most confidently wrong of 12 images" in svg
    assert svg.count(b"true: cat") == 3 and svg.count(b"<image") == 3
    code, stdout, stderr = _run(["eval", data, "-m", model, "--errors-image", tmp_path / "m.jpg"])
    assert code == 2 and "m.jpg" in stderr and stdout == ""


def test_eval_calibrate_plot_draws_the_reliability_diagram_before_and_after(tmp_path):
    data = make_image_folder(tmp_path / "d", n_per_class=4, size=12, split=True, n_test=6, n_val=6)
    model = tmp_path / "m.safetensors"
    modelfile.save(model, modelfile.Classifier(Model("conv4k3-relu-pool2-fc", (1, 12, 12), 2, seed=1),
                                               ["cat", "dog"], "gray", [0.5], [0.25]))
    out = tmp_path / "eval.svg"
    code, stdout, stderr = _run(["eval", data, "-m", model, "--calibrate", "--plot", out])
    assert code == 0, stderr
    svg = out.read_bytes()
    assert b"Reliability (ECE = " in svg and b"before calibration (ECE " in svg and b"after calibration" in svg
    code, _, stderr = _run(["eval", data, "-m", model, "--plot", tmp_path / "plain.svg"])  # stored temperature
    assert code == 0 and b"Reliability (ECE = " in (tmp_path / "plain.svg").read_bytes()
    assert b"before calibration" not in (tmp_path / "plain.svg").read_bytes()
