"""Batch norm in micro-batches (cnncli.engine.passes) and its staged kernels: a batch split into passes gets the
whole batch's statistics (bit for bit) and gradients (to float rounding), float64 gradients agree with central
differences (dropout masks included), the sums do not depend on the split, the thread count or where a map sits
in memory, bn + ReLU in one pass equals the two layers, and `cnncli train` with a small CNNCLI_TRAIN_MEMORY
trains a bn network in passes, bit-identically for any --threads."""

import re

import numpy as np
import pytest

import naive
from gradcheck import rel_error
from cnncli.engine import kernels
from cnncli.engine.layers import Dense, Dropout
from cnncli.engine.model import Model
from cnncli.engine.norm import EPS, BatchNorm
from cnncli.store import weights
from conftest import make_image_folder
from robust_helpers import run_main
from test_kernels import tol

SPEC = "conv6k3p1-bn-relu-pool2-conv8k3-bn-relu-gap-fc12-bn-relu-fc"


def _batch(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 2.0, size=(n, 3, 10, 10)).astype(np.float32), rng.integers(0, 3, n)


def _grads(model):
    return {k: np.array(v, np.float64) for k, v in model.named("grads")}


def _norms(model):
    return [layer for layer in model.layers if isinstance(layer, BatchNorm)]


@pytest.mark.parametrize("micro", [1, 3, 4, 9])
@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0, 1.0]])
def test_passes_give_the_whole_batch_statistics_loss_and_gradients(micro, class_weights):
    x, y = _batch()
    whole, split = Model(SPEC, (3, 10, 10), 3, seed=1), Model(SPEC, (3, 10, 10), 3, seed=1)
    loss, logits = whole.loss_and_grads(x, y, class_weights)
    loss_m, logits_m = split.loss_and_grads(x, y, class_weights, micro_batch=micro)
    assert loss_m == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(logits_m, logits, rtol=1e-4, atol=1e-5)
    want = _grads(whole)
    scale = max(np.abs(g).max() for g in want.values())  # a bias right before a bn has a zero gradient (noise)
    for name, g in _grads(split).items():
        np.testing.assert_allclose(g, want[name], rtol=1e-3, atol=1e-5 * scale, err_msg=name)
    first, *others = zip(_norms(whole), _norms(split))
    # The first bn sees the same conv outputs either way (the direct conv works image by image): its running
    # statistics, moved once per batch, are bit-identical; the later ones' inputs differ by float rounding.
    for k in ("running_mean", "running_var"):
        assert first[0].buffers[k].tobytes() == first[1].buffers[k].tobytes()
        for a, b in others:
            np.testing.assert_allclose(b.buffers[k], a.buffers[k], rtol=1e-5, atol=1e-6)
    assert all(layer.whole is None for layer in _norms(split))  # the split state does not outlive the batch


def test_a_split_batch_without_passes_would_differ():
    """The test above can fail: statistics per micro-batch (what a naive split computes) give other logits."""
    x, y = _batch()
    whole = Model(SPEC, (3, 10, 10), 3, seed=1)
    _, logits = whole.loss_and_grads(x, y)
    per_part = np.concatenate([whole.loss_and_grads(x[i:i + 3], y[i:i + 3])[1] for i in range(0, 10, 3)])
    assert np.abs(per_part - logits).max() > 1e-3


def _float64(model):
    for layer in model.layers:
        layer.params = {k: np.ascontiguousarray(v, np.float64) for k, v in layer.params.items()}
    return model


def test_gradients_in_passes_match_central_differences():
    """float64, a dropout layer between two bn layers, 5 images in passes of 2: the masks of a slice are the
    same in every recomputation, or these gradients would not be the derivative of any one loss."""
    spec = "conv3k3p1-bn-relu-pool2-fc6-bn-relu-drop0.3-fc5-bn-fc"
    model = _float64(Model(spec, (2, 6, 6), 3, seed=4))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 2, 6, 6)), rng.integers(0, 3, 5)

    def loss():
        model.set_dropout_rng(np.random.default_rng(7))
        return model.loss_and_grads(x, y, micro_batch=2)[0]

    loss()
    assert any(isinstance(layer, Dropout) and layer.mask is not None for layer in model.layers)
    got = _grads(model)
    checked = 0
    for name, p in model.named():
        flat = p.reshape(-1)
        for ix in range(0, flat.size, max(1, flat.size // 6)):  # a few entries of every tensor
            old = flat[ix]
            flat[ix] = old + 1e-5
            plus = loss()
            flat[ix] = old - 1e-5
            minus = loss()
            flat[ix] = old
            num = (plus - minus) / 2e-5
            assert rel_error(got[name].reshape(-1)[ix], num, floor=1e-5) < 1e-6, (name, ix)
            checked += 1
    assert checked > 40


def test_sums_do_not_depend_on_the_split_the_threads_or_the_address():
    x = np.random.default_rng(3).normal(5.0, 2.0, size=(7, 5, 9, 11)).astype(np.float32)
    shift = kernels.bn_shift(x)
    results = []
    before = kernels.get_threads()
    try:
        for threads, bounds in ((1, [0, 7]), (2, [0, 3, 7]), (3, [0, 1, 2, 6, 7])):
            kernels.set_threads(threads)
            s1, s2 = np.zeros(5), np.zeros(5)
            for lo, hi in zip(bounds, bounds[1:]):
                # each part at another offset in memory (a vectorized loop must not start where alignment says)
                buf = np.empty(x[lo:hi].size + threads, np.float32)[threads:]
                part = buf.reshape(x[lo:hi].shape)
                part[...] = x[lo:hi]
                kernels.bn_sums(part, shift, s1, s2)
            results.append((s1.tobytes(), s2.tobytes()))
    finally:
        kernels.set_threads(before)
    assert results[0] == results[1] == results[2]
    mean, var, _ = kernels.bn_statistics(np.frombuffer(results[0][0]), np.frombuffer(results[0][1]), shift,
                                         7 * 9 * 11, EPS)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3), dtype=np.float64), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_with_relu_in_one_pass_equals_the_two_layers(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 1.5, size=(4, 6, 5, 7)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, 6).astype(dtype), rng.normal(size=6).astype(dtype)
    x[0, 0, 0, 0] = np.nan  # the ReLU kernel's rule: NaN becomes 0 (its own channel's statistics are NaN)
    out = np.full_like(x, -1)
    kernels.bn_train_forward(x, gamma, beta, EPS, out, relu=True)
    want = naive.activation_forward("relu", naive.bn_train_forward(x, gamma, beta, EPS)[0])
    np.testing.assert_allclose(out[:, 1:], want[:, 1:], **tol(dtype))
    assert (out[:, 0] == 0).all() and (out >= 0).all()


def test_model_fuses_bn_and_relu_in_training_and_inference():
    model = Model("conv4k3p1-relu-pool2-bn-relu-fc", (3, 8, 8), 2, seed=0)
    x = np.random.default_rng(0).normal(size=(12, 3, 8, 8)).astype(np.float32)
    for training in (True, False):
        fused = model.forward(x, training).copy()
        h = x
        for layer in model.layers:
            h = layer.forward(h, training)
        np.testing.assert_array_equal(fused, h.reshape(12, 2))
    assert isinstance(model.layers[-1], Dense)


ARGS = ["--arch", "conv6k3p1-bn-relu-pool2-conv8k3p1-bn-relu-pool2-gap-fc", "--epochs", "2", "--batch-size", "8",
        "--seed", "2", "--size", "16"]


def _train(capsys, data, out, *extra):
    """Run `cnncli train` with ARGS; (the weight file's tensors by name, stderr)."""
    code, _, err = run_main(["train", data, "-o", out, *ARGS, *extra], capsys)
    assert code == 0, err
    return weights.load(out)[0], err


def test_train_runs_a_bn_network_in_passes_bit_identically_for_any_thread_count(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=16, mode="RGB")
    one, err = _train(capsys, data, tmp_path / "whole.safetensors")
    assert "passes of" not in err and any(name.endswith("running_var") for name in one)
    monkeypatch.setenv("CNNCLI_TRAIN_MEMORY", "60K")  # about 3 images of this network per pass
    split, err = _train(capsys, data, tmp_path / "t1.safetensors", "--threads", "1")
    assert re.search(r"each batch in passes of at most [1-7] images", err), err
    split2, _ = _train(capsys, data, tmp_path / "t2.safetensors", "--threads", "2")
    assert {k: v.tobytes() for k, v in split.items()} == {k: v.tobytes() for k, v in split2.items()}
    # The same computation, other float rounding in the convolutions' gradients. A conv bias right before a bn has
    # a gradient of zero plus rounding noise, which Adam's normalised steps turn into a random walk: not compared.
    for name in set(one) - {"layers.0.bias", "layers.4.bias"}:
        np.testing.assert_allclose(split[name], one[name], rtol=1e-3, atol=1e-4, err_msg=name)
