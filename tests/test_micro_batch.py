"""Training in micro-batches (Model.loss_and_grads, CNNCLI_TRAIN_MEMORY): a batch whose activations exceed the
budget runs in passes whose gradients are added in a fixed order. The loss and gradients equal one pass's up to
float rounding; the weights are bit-identical for any --threads; networks whose layers couple a batch's
images are never split."""

import re

import numpy as np
import pytest

from cnncli.engine.model import Model
from cnncli.store import weights
from conftest import make_image_folder
from robust_helpers import run_main

SPEC = "conv6k3p1-relu-pool2-conv8k3-relu-pool2-fc16-relu-drop0.25-fc"


def _grads(model):
    return {k: np.array(v, np.float64) for k, v in model.named("grads")}


@pytest.mark.parametrize("micro", [1, 3, 4, 7])
@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0, 1.0]])
def test_passes_give_the_whole_batch_loss_and_gradients(micro, class_weights):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2, 12, 12)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    model = Model(SPEC, (2, 12, 12), 3, seed=1)
    model.set_dropout_rng(np.random.default_rng(5))
    loss, logits = model.loss_and_grads(x, y, class_weights)
    whole = _grads(model)
    model.set_dropout_rng(np.random.default_rng(5))
    loss_m, logits_m = model.loss_and_grads(x, y, class_weights, micro_batch=micro)
    assert loss_m == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(logits_m, logits, rtol=1e-5, atol=1e-6)
    for name, g in _grads(model).items():
        np.testing.assert_allclose(g, whole[name], rtol=1e-4, atol=1e-6 * np.abs(whole[name]).max(), err_msg=name)


def test_a_network_whose_layers_couple_images_is_never_split():
    model = Model("tiny", (1, 8, 8), 2)
    assert not model.couples_images()
    model.layers[0].couples_images = True  # what a batch-statistics layer declares
    assert model.couples_images()
    x = np.random.default_rng(0).normal(size=(6, 1, 8, 8)).astype(np.float32)
    calls = []
    forward = model.forward
    model.forward = lambda h, training=False: calls.append(len(h)) or forward(h, training)
    model.loss_and_grads(x, np.array([0, 1] * 3), micro_batch=2)
    assert calls == [6]


def test_micro_batch_size_follows_the_budget():
    model = Model("default", (3, 224, 224), 2)
    per_image = 10 * model.activations
    assert model.micro_batch_size(2**30) == 2**30 // per_image
    assert model.micro_batch_size(1) == 1


def _tensors(path):
    return {k: v.tobytes() for k, v in weights.load(path)[0].items()}


ARGS = ["--arch", "conv8k3p1-relu-pool2-fc16-relu-fc", "--epochs", "2", "--batch-size", "8", "--seed", "2"]


def test_training_in_passes_is_bit_identical_for_any_thread_count(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=16, mode="RGB")
    whole = tmp_path / "whole.safetensors"
    code, _, err = run_main(["train", data, "-o", whole, *ARGS], capsys)
    assert code == 0 and "passes of" not in err, err
    monkeypatch.setenv("CNNCLI_TRAIN_MEMORY", "50K")  # 3x16x16 input: about 4 images per pass
    runs = {}
    for threads in ("1", "2"):
        runs[threads] = tmp_path / f"t{threads}.safetensors"
        code, _, err = run_main(["train", data, "-o", runs[threads], *ARGS, "--threads", threads], capsys)
        assert code == 0, err
        assert re.search(r"each batch in passes of at most [1-7] images", err), err
    assert _tensors(runs["1"]) == _tensors(runs["2"])
    split, one = weights.load(runs["1"])[0], weights.load(whole)[0]
    assert _tensors(runs["1"]) != _tensors(whole)  # other float rounding ...
    for name in one:  # ... of the same computation
        np.testing.assert_allclose(split[name], one[name], rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("value", ["-5", "0"])  # 0 bytes cannot hold one image: no "under 0 MiB" promise
def test_a_bad_train_memory_is_a_usage_error(tmp_path, capsys, monkeypatch, value):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    monkeypatch.setenv("CNNCLI_TRAIN_MEMORY", value)
    code, _, err = run_main(["train", data, "-o", tmp_path / "m.safetensors", *ARGS], capsys)
    assert code == 2 and "CNNCLI_TRAIN_MEMORY" in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()
