"""`bn` and `gap` through the real commands: train stores the running statistics in the weight file and its
checkpoint (a resumed run ends with an uninterrupted run's tensors), info shows the layers, predict (numpy,
folded) agrees with the unfolded model, a negative running variance is refused, and the ONNX export
(bn folded into conv / dense, BatchNormalization elsewhere, GlobalAveragePool) agrees with onnxruntime."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from conftest import make_image_folder
from robust_helpers import run_main
from train_helpers import interrupt_after_reads
from test_norm import _trained_like
from cnncli.data.images import decode
from cnncli.engine.model import Model
from cnncli.store import modelfile, weights

SPEC = "conv4k3p1-bn-relu-pool2-conv6k3-bn-relu-gap-fc8-bn-relu-fc"
ARGS = ["--arch", SPEC, "--batch-size", "6", "--epochs", "2", "--seed", "3", "--size", "12"]


@pytest.fixture
def rgb_data(tmp_path):
    return make_image_folder(tmp_path / "data", n_per_class=9, size=12, mode="RGB")


def _tensors(path):
    return {k: v.tobytes() for k, v in weights.load(path)[0].items()}


def test_train_stores_running_statistics_and_info_shows_the_layers(tmp_path, capsys, rgb_data):
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", rgb_data, "-o", out, *ARGS], capsys)
    assert code == 0, err
    tensors, meta = weights.load(out)
    assert meta["arch"] == SPEC
    assert tensors["layers.1.running_mean"].shape == (4,) and tensors["layers.9.running_var"].shape == (8,)
    assert np.abs(tensors["layers.1.running_mean"]).max() > 0  # moved from its start by the batches seen
    assert not np.allclose(tensors["layers.1.running_var"], 1.0)
    code, stdout, err = run_main(["info", out, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    rows = {r["layer"]: r for r in doc["layers"]}
    assert rows["gap"]["output_shape"] == [6, 1, 1] and rows["gap"]["params"] == 0
    assert [r["params"] for r in doc["layers"] if r["layer"] == "bn"] == [8, 12, 16]  # gamma and beta only
    code, stdout, _ = run_main(["info", out], capsys)
    assert code == 0 and "bn" in stdout and "gap" in stdout


def test_predict_one_image_equals_the_unfolded_model(tmp_path, capsys, rgb_data):
    out = tmp_path / "m.safetensors"
    assert run_main(["train", rgb_data, "-o", out, *ARGS], capsys)[0] == 0
    image = sorted((rgb_data / "dog").iterdir())[0]
    code, stdout, err = run_main(["predict", image, "-m", out, "--format", "jsonl", "--all-probs"], capsys)
    assert code == 0, err
    row = json.loads(stdout.splitlines()[0])
    clf = modelfile.load(out)
    clf.model.fold_bn = False
    want = clf.proba(decode(image, 12, 3)[None])[0]
    got = [row["probabilities"][c] for c in clf.classes]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resume_with_bn_ends_with_the_uninterrupted_tensors(tmp_path, capsys, monkeypatch, rgb_data):
    ref = tmp_path / "ref.safetensors"
    assert run_main(["train", rgb_data, "-o", ref, *ARGS], capsys)[0] == 0
    out = tmp_path / "m.safetensors"
    with interrupt_after_reads(monkeypatch, 2):
        assert run_main(["train", rgb_data, "-o", out, *ARGS], capsys)[0] == 130
    code, _, err = run_main(["train", rgb_data, "-o", out, "--resume"], capsys)
    assert code == 0, err
    assert _tensors(out) == _tensors(ref)


def test_a_negative_running_variance_is_refused(tmp_path, capsys):
    model = Model("conv4k3-bn-relu-fc", (1, 8, 8), 2)
    clf = modelfile.Classifier(model, ["a", "b"], "gray", [0.5], [0.25])
    tensors = model.state_dict()
    tensors["layers.1.running_var"][2] = -0.5
    path = tmp_path / "bad.safetensors"
    weights.save(path, tensors, clf.metadata())  # checksums are right: the file is well-formed but wrong
    code, stdout, err = run_main(["info", path], capsys)
    assert code == 65 and stdout == "" and "running_var" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("spec", ["photo", SPEC, "conv4k3-relu-bn-pool2-bn-fc6-drop-bn-gap-fc"])
def test_onnx_export_agrees_with_onnxruntime(tmp_path, capsys, spec):
    model = Model(spec, (3, 20, 20), 3, seed=4)
    _trained_like(model)
    clf = modelfile.Classifier(model, ["a", "b", "c"], "rgb", [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    path = tmp_path / "m.safetensors"
    modelfile.save(path, clf)
    code, _, err = run_main(["export", path, "-o", tmp_path / "m.onnx"], capsys)
    assert code == 0, err
    x = np.random.default_rng(5).integers(0, 256, (6, 3, 20, 20), dtype=np.uint8)
    clf = modelfile.load(path)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"input": clf.to_float(x)})[0]
    want = clf.proba(x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert want.std() > 1e-3
