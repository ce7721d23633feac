"""`cnncli eval`: --split, where thresholds are picked, intervals in the report and gates on their bounds,
macro averages over the classes present."""

import json

import numpy as np
import pytest
from conftest import make_image_folder
from test_eval import SIZE, _classifier, _json, _main

from cnncli.data import folders
from cnncli.data.images import decode
from cnncli.report import intervals, thresholds
from cnncli.store import modelfile


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    data = make_image_folder(root / "d", n_per_class=4, size=SIZE, split=True, n_test=3, n_val=5)
    clf = _classifier()
    model = root / "m.safetensors"
    modelfile.save(model, clf)
    return root, data, clf, model


def _scores(clf, folder):
    items = folders.scan_labeled(folder, clf.classes)
    x = np.stack([decode(p, SIZE, 1) for p, _ in items])
    return np.array([lbl for _, lbl in items]), clf.proba(x)


def test_default_picks_on_val_and_scores_test(world):
    root, data, clf, model = world
    res, rep = _json(["eval", str(data), "-m", str(model), "--pick-threshold", "sensitivity=0.8"])
    assert res.returncode == 0, res.stderr
    assert rep["source"] == str(data / "test") and rep["split"] == "test"
    assert rep["picked_threshold"]["source"] == str(data / "val")
    y, p = _scores(clf, data / "val")
    t, _ = thresholds.pick_threshold(y, p[:, 1], "sensitivity", 0.8)
    assert rep["threshold"] == pytest.approx(t) and rep["picked_threshold"]["threshold"] == pytest.approx(t)
    assert b"no longer unbiased" not in res.stderr and b"positive images" not in res.stderr
    # 5 positives just support 0.8 (one miss = 20%); 0.95 needs 20: a warning with the numbers.
    res, rep = _json(["eval", str(data), "-m", str(model), "--pick-threshold", "sensitivity=0.95"])
    assert b"only 5 positive images" in res.stderr and b"at least 20" in res.stderr


def test_split_test_picks_on_test_with_a_warning(world):
    root, data, clf, model = world
    res, rep = _json(["eval", str(data), "-m", str(model), "--split", "test", "--pick-threshold", "youden"])
    assert res.returncode == 0, res.stderr
    assert rep["picked_threshold"]["source"] == rep["source"] == str(data / "test")
    assert b"no longer unbiased" in res.stderr


def test_no_validation_part_refuses_to_pick_on_test(world, tmp_path):
    root, data, clf, model = world
    bare = make_image_folder(tmp_path / "b", n_per_class=3, size=SIZE, split=True, n_test=2)
    res = _main(["eval", str(bare), "-m", str(model), "--pick-threshold", "youden"])
    assert res.returncode == 65 and b"--split test" in res.stderr and res.stderr.count(b"\n") == 1
    assert res.stdout == b""


@pytest.mark.parametrize("split,n", [("train", 8), ("val", 10), ("test", 6), ("all", 24)])
def test_split_option_chooses_the_part(world, split, n):
    root, data, clf, model = world
    res, rep = _json(["eval", str(data), "-m", str(model), "--split", split])
    assert res.returncode == 0, res.stderr
    assert rep["n"] == n and rep["split"] == split


def test_missing_split_and_bad_split(world, tmp_path):
    root, data, clf, model = world
    bare = make_image_folder(tmp_path / "b", n_per_class=3, size=SIZE, split=True, n_test=2)
    res = _main(["eval", str(bare), "-m", str(model), "--split", "val"])
    assert res.returncode == 65 and b"--split val" in res.stderr
    res = _main(["eval", str(bare), "-m", str(model), "--split", "holdout"])
    assert res.returncode == 2


def test_intervals_in_json_and_table(world):
    root, data, clf, model = world
    res, rep = _json(["eval", str(data), "-m", str(model)])
    y, p = _scores(clf, data / "test")
    pred = (p[:, 1] >= 0.5).astype(int)
    correct = int((pred == y).sum())
    assert rep["ci"]["accuracy"] == pytest.approx(dict(zip(("lo", "hi"), intervals.wilson(correct, len(y)))))
    tp = int(((pred == 1) & (y == 1)).sum())
    assert rep["ci"]["sensitivity"]["lo"] == pytest.approx(intervals.wilson(tp, int((y == 1).sum()))[0])
    assert rep["ci"]["roc_auc"] == pytest.approx(dict(zip(("lo", "hi"), intervals.bootstrap_auc(y, p[:, 1]))))
    assert rep["per_class"]["cat"]["ci"]["recall"]["hi"] >= rep["per_class"]["cat"]["recall"]
    assert "1000 resamples" in rep["ci_method"]["roc_auc"]
    table = _main(["eval", str(data), "-m", str(model)]).stdout.decode()
    lo, hi = rep["ci"]["accuracy"]["lo"], rep["ci"]["accuracy"]["hi"]
    assert f"accuracy: {rep['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]" in table


def test_gate_on_lower_bound(world):
    root, data, clf, model = world
    res, rep = _json(["eval", str(data), "-m", str(model)])
    lo = rep["ci"]["accuracy"]["lo"]
    assert lo < rep["accuracy"]
    # The point value clears a bar the lower bound does not: only the .lo gate fails.
    bar = (lo + rep["accuracy"]) / 2
    res, rep = _json(["eval", str(data), "-m", str(model), "--fail-under", f"accuracy={bar}"])
    assert res.returncode == 0
    res, rep = _json(["eval", str(data), "-m", str(model), "--fail-under", f"accuracy.lo={bar},recall[cat].lo=0"])
    assert res.returncode == 3 and len(rep["gate_failures"]) == 1
    assert rep["gate_failures"][0].startswith("accuracy.lo ") and b"accuracy.lo" in res.stderr
    res = _main(["eval", str(data), "-m", str(model), "--fail-under", "f1.lo=0.5"])
    assert res.returncode == 2 and b"f1.lo" in res.stderr


def test_macro_over_present_classes(world, tmp_path):
    root, data, clf, model = world
    zero = tmp_path / "zero.safetensors"
    modelfile.save(zero, _classifier(zero=True))  # every P = 0.5: everything is predicted dog
    only_dogs = make_image_folder(tmp_path / "dogs", classes=("cat", "dog"), n_per_class=3, size=SIZE)
    for p in (only_dogs / "cat").iterdir():
        p.unlink()
    res, rep = _json(["eval", str(only_dogs), "-m", str(zero), "--fail-under", "macro_f1=0.9"])
    assert res.returncode == 0, res.stderr
    assert rep["accuracy"] == 1.0 and rep["macro_f1"] == 1.0 and rep["absent_classes"] == ["cat"]
    table = _main(["eval", str(only_dogs), "-m", str(zero)]).stdout.decode()
    assert "absent: cat" in table
    json.dumps(rep, allow_nan=False)
