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
from cnncli.report import inspect
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


@pytest.mark.parametrize("mode, size, extra, memory, preset", [
    ("RGB", 64, [], None, "photo"),  # colour at 64 px: the photo preset, and train says so
    ("RGB", 64, ["--arch", "default"], None, "default"),  # asked for by name: kept
    ("RGB", 32, [], None, "default"),  # smaller than 64 px
    ("L", 64, [], None, "default"),  # gray
    ("RGB", 64, [], "20M", "default"),  # a batch of 4 photo-preset images needs ~30 MB: over the budget
])
def test_train_picks_the_photo_preset_for_rgb_at_64_px(tmp_path, capsys, monkeypatch, mode, size, extra, memory,
                                                       preset):
    if memory:
        monkeypatch.setenv("CNNCLI_TRAIN_MEMORY", memory)
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=size, mode=mode)
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, "--size", str(size), "--epochs", "1", "--batch-size", "4",
                             *extra], capsys)
    assert code == 0, err
    assert weights.load(out)[1]["arch"] == Model(preset, (1, 8, 8), 2).spec
    assert ("the photo preset" in err) == (preset == "photo" and not extra)


def test_a_resumed_run_keeps_the_preset_it_picked(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=64, mode="RGB")
    out = tmp_path / "m.safetensors"
    args = ["train", data, "-o", out, "--size", "64", "--epochs", "2", "--batch-size", "4"]
    with interrupt_after_reads(monkeypatch, 1):
        assert run_main(args, capsys)[0] == 130
    code, _, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 0, err
    assert weights.load(out)[1]["arch"] == Model("photo", (3, 64, 64), 2).spec


def test_show_traces_saliency_through_bn_and_gap(tmp_path, capsys):
    """show's numpy gradients through an inference bn equal those of the same network with the bn folded into
    the conv (no bn at all), and `cnncli show` draws a bn / gap model."""
    model = Model("conv4k3p1-bn-relu-pool2-gap-fc", (3, 9, 9), 3, seed=2)
    _trained_like(model)
    plain = Model("conv4k3p1-relu-pool2-gap-fc", (3, 9, 9), 3)
    folded = model.layers[1].fold(model.layers[0].params)
    plain.load_state_dict({"layers.0.weight": folded["weight"], "layers.0.bias": folded["bias"],
                           "layers.4.weight": model.layers[5].params["weight"],
                           "layers.4.bias": model.layers[5].params["bias"]})
    x = np.random.default_rng(1).normal(size=(1, 3, 9, 9)).astype(np.float32)
    with_bn, without = inspect.trace(model, x), inspect.trace(plain, x)
    np.testing.assert_allclose(with_bn.proba, without.proba, atol=1e-6)
    got, want = inspect.grad_of_class(model, with_bn, 1, -1), inspect.grad_of_class(plain, without, 1, -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.abs(want).max() > 0 and inspect.gradcam_layer(model) == 2  # after the conv's bn and relu
    clf = modelfile.Classifier(model, ["a", "b", "c"], "rgb", [0.5] * 3, [0.25] * 3)
    modelfile.save(tmp_path / "m.safetensors", clf)
    img = make_image_folder(tmp_path / "d", n_per_class=1, size=9, mode="RGB") / "cat" / "img_0000.png"
    code, _, err = run_main(["show", tmp_path / "m.safetensors", img, "-o", tmp_path / "show.png"], capsys)
    assert code == 0 and (tmp_path / "show.png").stat().st_size > 0, err
