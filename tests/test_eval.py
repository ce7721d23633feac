"""`cnncli eval`: which images are scored, the report, thresholds, gates, plots, exit codes."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from cnncli.data import folders

from cnncli.report import metrics

from cnncli.store import manifest, modelfile

from cnncli.store import weights
from cnncli.data.images import decode
from cnncli.commands.cli import main
from cnncli.engine.model import Model

SIZE = 16


def _classifier(classes=("cat", "dog"), zero=False):
    clf = modelfile.Classifier(Model("conv4k3-relu-pool2-fc", (1, SIZE, SIZE), len(classes), seed=1),
                               list(classes), "gray", [0.5], [0.25])
    if zero:  # every probability is exactly 1/K: predictions and accuracy are known in advance
        clf.model.load_state_dict({k: np.zeros_like(v) for k, v in clf.model.state_dict().items()})
    return clf


class _Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out.encode(), err.encode()


def _main(args):
    """cnncli.commands.cli.main in this process (exit-code mapping included; compiled kernels are reused)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(list(args))
    return _Result(exc.value.code, out.getvalue(), err.getvalue())


def _json(args):
    res = _main([*args, "--format", "json"])
    return res, (json.loads(res.stdout) if res.stdout else None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    split = make_image_folder(root / "split", n_per_class=4, size=SIZE, split=True, n_test=3, n_val=2)
    clf = _classifier()
    model = root / "m.safetensors"
    modelfile.save(model, clf)
    zero = root / "zero.safetensors"
    modelfile.save(zero, _classifier(zero=True))
    return root, split, clf, model, zero


def test_report_on_test_folder_matches_metrics(setup):
    root, split, clf, model, _ = setup
    res, rep = _json(["eval", str(split), "-m", str(model)])
    assert res.returncode == 0, res.stderr
    items = folders.scan_labeled(split / "test", clf.classes)
    assert rep["n"] == len(items) == 6 and rep["source"] == str(split / "test")
    x = np.stack([decode(p, SIZE, 1) for p, _ in items])
    y = np.array([lbl for _, lbl in items])
    want = metrics.classification_report(y, clf.proba(x), clf.classes)
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
        assert rep[key] == pytest.approx(want[key])
    assert rep["confusion_matrix"]["matrix"] == want["confusion_matrix"]["matrix"]
    assert rep["per_class"]["dog"]["support"] == 3


def test_val_folder_when_no_test(setup, tmp_path):
    root, split, clf, model, _ = setup
    data = make_image_folder(tmp_path / "d", n_per_class=3, size=SIZE, split=True, n_test=0, n_val=2)
    for c in clf.classes:
        (data / "test" / c).rmdir()
    (data / "test").rmdir()
    res, rep = _json(["eval", str(data), "-m", str(model)])
    assert rep["source"] == str(data / "val") and rep["n"] == 4


def test_training_folder_uses_recorded_split(tmp_path):
    data = make_image_folder(tmp_path / "flat", n_per_class=10, size=SIZE)
    model = tmp_path / "t.safetensors"
    res = _main(["train", str(data), "--arch", "tiny", "--epochs", "1", "-o", str(model), "-q"])
    assert res.returncode == 0, res.stderr
    held_out = manifest.read_manifest(modelfile.default_sidecar(model, ".split.json"))["val"]
    res, rep = _json(["eval", str(data), "-m", str(model)])
    assert rep["n"] == len(held_out) < 20 and "split.json" in rep["source"]
    # A different copy of the folder is not the training folder and has no recorded split: all of it is scored.
    other = make_image_folder(tmp_path / "other", n_per_class=5, size=SIZE)
    res, rep = _json(["eval", str(other), "-m", str(model)])
    assert rep["n"] == 10


def test_unknown_class_folder_is_an_error_listing_names(setup, tmp_path):
    root, split, clf, model, _ = setup
    data = make_image_folder(tmp_path / "d", classes=("cat", "dog", "emu"), n_per_class=2, size=SIZE)
    res = _main(["eval", str(data), "-m", str(model)])
    assert res.returncode == 65
    err = res.stderr.decode()
    assert "emu" in err and "cat" in err and "dog" in err and err.count("\n") == 1


def test_fail_under_gate(setup):
    root, split, clf, model, zero = setup
    # All probabilities are 0.5, so every image is predicted positive (p >= 0.5): accuracy is exactly 0.5.
    res, rep = _json(["eval", str(split), "-m", str(zero), "--fail-under", "accuracy=0.5"])
    assert res.returncode == 0 and rep["accuracy"] == 0.5
    res, rep = _json(["eval", str(split), "-m", str(zero), "--fail-under", "accuracy=0.5",
                      "--fail-under", "recall[cat]=0.1"])
    assert res.returncode == 3 and b"recall[cat]" in res.stderr and rep["gate_failures"]
    res = _main(["eval", str(split), "-m", str(zero), "--fail-under", "bogus=0.5"])
    assert res.returncode == 2


def test_pick_and_save_threshold(setup, tmp_path):
    root, split, clf, model, _ = setup
    path = tmp_path / "copy.safetensors"
    path.write_bytes(model.read_bytes())
    before, _ = weights.load(path)
    res, rep = _json(["eval", str(split), "-m", str(path), "--pick-threshold", "sensitivity=1",
                      "--save-threshold"])
    assert res.returncode == 0, res.stderr
    t = rep["picked_threshold"]["threshold"]
    assert rep["threshold"] == t and rep["sensitivity"] == 1.0
    assert modelfile.load(path).threshold == pytest.approx(t)
    after, _ = weights.load(path)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    res = _main(["eval", str(split), "-m", str(path), "--pick-threshold", "nonsense"])
    assert res.returncode == 2


def test_errors_table_and_plot(setup, tmp_path):
    root, split, clf, model, zero = setup
    png = tmp_path / "eval.png"
    res = _main(["eval", str(split), "-m", str(zero), "--errors", "2", "--plot", str(png)])
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert "confusion matrix (rows: true, columns: predicted)" in out and "accuracy: 0.5000" in out
    # every cat is wrongly called dog with probability 0.5: two listed, each naming a cat file
    listed = out.split("most confident errors")[1].strip().splitlines()[1:]
    assert len(listed) == 2 and all("cat -> dog" in ln and f"{os.sep}cat{os.sep}" in ln for ln in listed)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 100


def test_multiclass_refuses_threshold(tmp_path):
    data = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), n_per_class=2, size=SIZE)
    model = tmp_path / "m3.safetensors"
    modelfile.save(model, _classifier(("a", "b", "c")))
    res = _main(["eval", str(data), "-m", str(model), "--pick-threshold", "youden"])
    assert res.returncode == 2 and b"two-class" in res.stderr
    res, rep = _json(["eval", str(data), "-m", str(model)])
    assert res.returncode == 0 and "roc_auc" not in rep and len(rep["confusion_matrix"]["matrix"]) == 3
