"""eval --calibrate (temperature stored in the weight file, applied by predict), --min-confidence ("unknown"
rows, stored by eval --save-threshold) and the per-row out-of-distribution score."""

import json

import numpy as np
import pytest
from conftest import make_image_folder
from test_eval import SIZE, _classifier, _json, _main

from cnncli.data import folders
from cnncli.data.images import decode
from cnncli.errors import FormatError
from cnncli.report import calibration, ood
from cnncli.store import modelfile, weights


def _overconfident():
    clf = _classifier()
    state = clf.model.state_dict()
    last = max(k for k in state if k.endswith("weight"))
    state[last] = state[last] * 40  # huge logits: probabilities near 0 and 1, far too sure
    clf.model.load_state_dict(state)
    return clf


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    data = make_image_folder(root / "d", n_per_class=4, size=SIZE, split=True, n_test=6, n_val=8)
    model = root / "m.safetensors"
    modelfile.save(model, _overconfident())
    zero = root / "zero.safetensors"
    modelfile.save(zero, _classifier(zero=True))
    zero3 = root / "zero3.safetensors"
    modelfile.save(zero3, _classifier(("a", "b", "c"), zero=True))
    return root, data, model, zero, zero3


def _x_y(folder, classes=("cat", "dog")):
    items = folders.scan_labeled(folder, list(classes))
    return np.stack([decode(p, SIZE, 1) for p, _ in items]), np.array([lbl for _, lbl in items]), items


def test_calibrate_fits_on_val_stores_temperature_and_predict_applies_it(world, tmp_path):
    root, data, model, _, _ = world
    path = tmp_path / "m.safetensors"
    path.write_bytes(model.read_bytes())
    res, rep = _json(["eval", str(data), "-m", str(path), "--calibrate"])
    assert res.returncode == 0, res.stderr
    clf = modelfile.load(model)
    xv, yv, _ = _x_y(data / "val")
    want = calibration.fit_temperature(yv, clf.logits(xv))
    cal = rep["calibration"]
    assert cal["temperature"] == pytest.approx(want) and cal["source"] == str(data / "val")
    assert cal["fit_nll_after"] <= cal["fit_nll_before"] and cal["temperature"] > 1  # it was over-confident
    assert cal["tuning"]["after"]["ece"] <= cal["tuning"]["before"]["ece"]
    stored = modelfile.load(path)  # still passes every check of the weight file, temperature included
    assert stored.temperature == pytest.approx(want)
    xt, yt, items = _x_y(data / "test")
    p = calibration.softmax(clf.logits(xt), want)
    assert rep["ece"] == pytest.approx(calibration.ece(yt, p), abs=1e-6)
    assert cal["scored"]["after"]["brier"] == pytest.approx(calibration.brier(yt, p), abs=1e-6)
    assert rep["saved"]["temperature"] == pytest.approx(want)
    res = _main(["predict", str(items[0][0]), "-m", str(path), "--format", "jsonl", "--all-probs"])
    row = json.loads(res.stdout)
    assert row["probabilities"]["dog"] == pytest.approx(float(p[0, 1]), abs=2e-6)
    table = _main(["eval", str(data), "-m", str(path), "--calibrate"]).stdout.decode()
    assert "calibration: temperature" in table and "ECE" in table


def test_calibrate_never_fits_on_test_unless_asked(world, tmp_path):
    root, data, model, _, _ = world
    bare = make_image_folder(tmp_path / "b", n_per_class=3, size=SIZE, split=True, n_test=3)
    res = _main(["eval", str(bare), "-m", str(model), "--calibrate"])
    assert res.returncode == 65 and b"--split test" in res.stderr
    before = model.read_bytes()
    path = tmp_path / "m.safetensors"
    path.write_bytes(before)
    res = _main(["eval", str(bare), "-m", str(path), "--calibrate", "--split", "test"])
    assert res.returncode == 0 and b"no longer unbiased" in res.stderr


def test_min_confidence_unknown_rows_any_number_of_classes(world):
    root, data, model, zero, zero3 = world
    img = str(data / "test" / "cat" / "img_0000.png")
    # The zero models give every class 1/K: 0.5 for two classes, 1/3 for three.
    rows = _main(["predict", img, "-m", str(zero), "--format", "tsv", "--min-confidence", "0.6"]).stdout.decode()
    assert rows.splitlines()[1].split("\t")[1:3] == ["unknown", "0.500000"]
    rows = _main(["predict", img, "-m", str(zero), "--format", "tsv", "--min-confidence", "0.5"]).stdout.decode()
    assert rows.splitlines()[1].split("\t")[1] == "dog"
    rows = _main(["predict", img, "-m", str(zero3), "--format", "jsonl", "--min-confidence", "0.34"]).stdout
    assert json.loads(rows)["label"] == "unknown"
    rows = _main(["predict", img, "-m", str(zero3), "--format", "table", "--min-confidence", "0.34"]).stdout
    assert rows.decode().startswith("unknown (0.33 a, 0.33 b, 0.33 c)")
    assert _main(["predict", img, "-m", str(zero), "--min-confidence", "1.5"]).returncode == 2


def test_eval_reports_and_saves_min_confidence(world, tmp_path):
    root, data, model, zero, zero3 = world
    path = tmp_path / "z3.safetensors"
    path.write_bytes(zero3.read_bytes())
    flat = make_image_folder(tmp_path / "f", classes=("a", "b", "c"), n_per_class=2, size=SIZE)
    res, rep = _json(["eval", str(flat), "-m", str(path), "--min-confidence", "0.34", "--save-threshold"])
    assert res.returncode == 0, res.stderr
    assert rep["min_confidence"] == {"value": 0.34, "unknown": 6, "coverage": 0.0, "accuracy_covered": None}
    assert modelfile.load(path).min_confidence == 0.34 and rep["saved"]["min_confidence"] == 0.34
    row = _main(["predict", str(flat / "a" / "img_0000.png"), "-m", str(path), "--format", "jsonl"]).stdout
    assert json.loads(row)["label"] == "unknown"  # the stored value applies without the option
    row = _main(["predict", str(flat / "a" / "img_0000.png"), "-m", str(path), "--format", "jsonl",
                 "--min-confidence", "0"]).stdout
    assert json.loads(row)["label"] != "unknown"


def test_ood_score_per_row_is_the_energy(world):
    root, data, model, _, _ = world
    clf = modelfile.load(model)
    x, _, items = _x_y(data / "test")
    want = ood.energy(clf.logits(x))
    out = _main(["predict", str(data / "test"), "-m", str(model), "--format", "jsonl"]).stdout.decode()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["ood_score"] for r in rows] == pytest.approx(want.tolist(), abs=1e-5)
    tsv = _main(["predict", str(data / "test"), "-m", str(model), "--format", "tsv", "--all-probs"]).stdout
    lines = tsv.decode().splitlines()
    col = lines[0].split("\t").index("ood_score")
    assert [float(ln.split("\t")[col]) for ln in lines[1:]] == pytest.approx(want.tolist(), abs=1e-5)


def test_energy_definition_and_bad_stored_values(tmp_path):
    z = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1e4, -1e4, 0.0]])
    assert ood.energy(z) == pytest.approx([-np.log(np.exp(10) + 2), -(1 + np.log(3)), -1e4])
    clf = _classifier()
    for key, value in (("temperature", 0.0), ("temperature", True), ("min_confidence", 1.5)):
        path = tmp_path / f"{key}.safetensors"
        weights.save(path, clf.model.state_dict(), {**clf.metadata(), key: value})
        with pytest.raises(FormatError, match=key):
            modelfile.load(path)


def test_stored_temperature_is_covered_by_the_checksum(world, tmp_path):
    root, data, model, _, _ = world
    path = tmp_path / "m.safetensors"
    path.write_bytes(model.read_bytes())
    assert _main(["eval", str(data), "-m", str(path), "--calibrate"]).returncode == 0
    raw = path.read_bytes()
    key = b'"temperature":"'
    at = raw.index(key) + len(key)
    digit = raw[at:at + 1]
    assert digit.isdigit()
    path.write_bytes(raw[:at] + (b"9" if digit != b"9" else b"8") + raw[at + 1:])  # same length, other value
    res = _main(["predict", str(data / "test" / "cat" / "img_0000.png"), "-m", str(path)])
    assert res.returncode == 65 and b"checksum" in res.stderr
