"""Batch norm (`bn`) and global average pooling (`gap`): kernels against the plain-loop twins, numerical
gradients in float64, bit-identical results for any thread count, PyTorch's running-statistics rule, the
numpy inference twins, and bn folded into the conv / dense layer before it."""

import numpy as np
import pytest

import naive
from gradcheck import numerical_gradient, rel_error
from cnncli.engine import kernels, kernels_np
from cnncli.engine.layers import Activation, Conv, Dense
from cnncli.engine.model import Model, canonical_spec, parse_spec, plan
from cnncli.engine.norm import EPS, BatchNorm, GlobalAvgPool
from cnncli.engine.training import evaluate
from cnncli.errors import SpecError
from test_kernels import tol
from test_layers import TOL, check_layer, to_float64

SHAPES = [(2, 3, 4, 5), (5, 4, 1, 1), (1, 2, 3, 3), (3, 9, 6, 2)]  # (N, C, H, W); (N, C, 1, 1) is after a dense


def _arrays(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    return x, gamma, beta, rng.standard_normal(shape).astype(dtype)


def _bn_kernels(x, gamma, beta, dy):
    out, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
    mean, var, invstd = kernels.bn_train_forward(x, gamma, beta, EPS, out)
    dgamma, dbeta = kernels.bn_backward(dy, x, mean, invstd, gamma, dx)
    return out, mean, var, dx, dgamma, dbeta


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_bn_kernels_match_naive(shape, dtype):
    x, gamma, beta, dy = _arrays(shape, dtype)
    out, mean, var, dx, dgamma, dbeta = _bn_kernels(x, gamma, beta, dy)
    want_out, want_mean, want_var = naive.bn_train_forward(x, gamma, beta, EPS)
    want_dx, want_dgamma, want_dbeta = naive.bn_backward(x, gamma, dy, EPS)
    for got, want in ((out, want_out), (mean, want_mean), (var, want_var), (dx, want_dx), (dgamma, want_dgamma),
                      (dbeta, want_dbeta)):
        np.testing.assert_allclose(got, want, **tol(dtype))
    assert out.dtype == dx.dtype == dgamma.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_gap_kernels_and_numpy_twin_match_naive(shape, dtype):
    x, _, _, _ = _arrays(shape, dtype)
    dy = np.random.default_rng(1).standard_normal((shape[0], shape[1], 1, 1)).astype(dtype)
    for mod in (kernels, kernels_np):
        out = np.full((shape[0], shape[1], 1, 1), np.nan, dtype)
        mod.gap_forward(x, out)
        np.testing.assert_allclose(out, naive.gap_forward(x), **tol(dtype))
    dx = np.full_like(x, np.nan)
    kernels.gap_backward(dy, dx)
    np.testing.assert_allclose(dx, naive.gap_backward(dy, shape), **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_affine_numba_and_numpy_agree(dtype):
    x, scale, shift, _ = _arrays((3, 5, 4, 6), dtype)
    want = x.astype(np.float64) * scale[:, None, None] + shift[:, None, None]
    for mod in (kernels, kernels_np):
        out = np.full_like(x, np.nan)
        mod.channel_affine(x, scale, shift, out)
        np.testing.assert_allclose(out, want, **tol(dtype))


def test_results_are_bit_identical_for_any_thread_count():
    x, gamma, beta, dy = _arrays((4, 16, 9, 7), np.float32, seed=3)
    before = kernels.get_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            kernels.set_threads(n)
            gap = np.empty((4, 16, 1, 1), np.float32)
            kernels.gap_forward(x, gap)
            runs.append((*_bn_kernels(x, gamma, beta, dy), gap))
    finally:
        kernels.set_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_kernels_refuse_wrong_shapes():
    x, gamma, beta, _ = _arrays((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="gamma"):
        kernels.bn_train_forward(x, gamma[:2], beta, EPS, np.empty_like(x))
    with pytest.raises(ValueError, match="out"):
        kernels.gap_forward(x, np.empty((2, 3, 4, 4), np.float32))


def _bn(shape):
    layer = BatchNorm()
    layer.init(shape[1:])
    return layer


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_bn_gradients(shape):
    x, gamma, beta, _ = _arrays(shape, np.float64, seed=5)
    layer = to_float64(_bn(shape))
    layer.params = {"weight": gamma, "bias": beta}
    assert check_layer([layer], x) == 2


def test_conv_bn_gap_dense_stack_gradients():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 5, 5))
    conv, dense = Conv(3, (3, 3), (1, 1), (1, 1)), Dense(4)
    conv.init((2, 5, 5), rng)
    dense.init((3, 1, 1), rng)
    # tanh between each layer and its bn: a bias right before a bn has no effect (its gradient is 0, below)
    layers = [to_float64(conv), Activation("tanh"), to_float64(_bn((3, 3, 5, 5))), GlobalAvgPool(),
              to_float64(dense), Activation("tanh"), to_float64(_bn((3, 4, 1, 1)))]
    assert check_layer(layers, x) == 8
    del layers[1]
    check_layer(layers, x, params=False)
    assert np.abs(conv.grads["bias"]).max() < 1e-12 < np.abs(conv.grads["weight"]).max()


def test_gap_gradient():
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5))
    layer = GlobalAvgPool()
    dy = np.random.default_rng(5).standard_normal((2, 3, 1, 1))

    def forward():
        return layer.forward(x, training=True)

    forward()
    assert rel_error(layer.backward(dy), numerical_gradient(forward, x, dy)) < TOL


def test_running_statistics_follow_pytorch_rule():
    """momentum 0.1, biased variance to normalise, unbiased (m / (m - 1)) for the running estimate."""
    x, _, _, _ = _arrays((4, 3, 5, 2), np.float32, seed=6)
    layer = _bn(x.shape)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        xb = x * (step + 1)
        layer.forward(xb, training=True)
        m = 4 * 5 * 2
        rm = 0.9 * rm + 0.1 * xb.mean(axis=(0, 2, 3), dtype=np.float64)
        rv = 0.9 * rv + 0.1 * xb.var(axis=(0, 2, 3), dtype=np.float64) * m / (m - 1)
    np.testing.assert_allclose(layer.buffers["running_mean"], rm, rtol=1e-5)
    np.testing.assert_allclose(layer.buffers["running_var"], rv, rtol=1e-5)
    out = layer.forward(x, training=False).copy()  # eval: the running statistics, not the batch's
    want = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + EPS)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def _trained_like(model, seed=0):
    """Give every bn non-trivial gamma, beta and running statistics, as training would."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            c = layer.params["weight"].shape
            layer.params = {"weight": rng.uniform(0.5, 2, c).astype(np.float32),
                            "bias": rng.standard_normal(c).astype(np.float32)}
            layer.buffers = {"running_mean": rng.standard_normal(c).astype(np.float32),
                             "running_var": rng.uniform(0.2, 3, c).astype(np.float32)}
        elif layer.params:
            layer.params["bias"] = rng.standard_normal(layer.params["bias"].shape).astype(np.float32)


FOLD_TOL = {"rtol": 1e-4, "atol": 1e-5}  # float32: folding reorders one multiply-add per value


@pytest.mark.parametrize("n", [2, 20])  # numpy kernels (small batch) and numba
@pytest.mark.parametrize("spec", ["photo", "conv6k3-bn-relu-pool2-fc12-bn-relu-fc", "conv4k3-relu-bn-pool2-bn-fc"])
def test_folded_inference_equals_unfolded(spec, n):
    model = Model(spec, (3, 16, 16), 3, seed=1)
    _trained_like(model)
    x = np.random.default_rng(2).standard_normal((n, 3, 16, 16)).astype(np.float32)
    folded = model.forward(x).copy()
    model.fold_bn = False
    unfolded = model.forward(x).copy()
    np.testing.assert_allclose(folded, unfolded, **FOLD_TOL)
    assert np.abs(unfolded).max() > 0.01  # the comparison is not between two near-zero outputs
    np.testing.assert_allclose(model.forward(x[1:2]), unfolded[1:2], **FOLD_TOL)  # no image depends on the others


def test_trains_validation_pass_uses_the_running_statistics():
    """training.evaluate (train's validation pass) scores each image alone: the same batch-free answers."""
    model = Model("conv4k3-bn-relu-gap-fc", (3, 8, 8), 2, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    y = np.arange(10) % 2
    to_float = lambda a: a.astype(np.float32) / 255  # noqa: E731
    model.loss_and_grads(to_float(x), y)  # a training step's forward moves the running statistics
    assert np.abs(model.layers[1].buffers["running_mean"]).max() > 0
    together = evaluate(model, x, y, to_float)[2]
    alone = np.concatenate([evaluate(model, x[i:i + 1], y[i:i + 1], to_float)[2] for i in range(10)])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert together.std() > 1e-4


def test_spec_grammar_and_plan_count_running_statistics():
    assert canonical_spec("conv8k3 >> bn >> relu >> gap >> fc") == "conv8k3-bn-relu-gap-fc"
    assert [type(layer) for layer in parse_spec("bn-gap")[:2]] == [BatchNorm, GlobalAvgPool]
    p = plan("conv8k3-bn-relu-gap-fc", (3, 10, 10), 2)
    assert p.shapes[1] == (8, 8, 8) and p.shapes[3] == (8, 1, 1)
    assert p.params["layers.1.running_var"] == (8,) and p.params["layers.4.weight"] == (2, 8)
    model = Model("conv8k3-bn-relu-gap-fc", (3, 10, 10), 2)
    assert model.num_params() == 8 * 3 * 9 + 8 + 2 * 8 + 8 * 2 + 2  # running statistics are not trained
    assert sorted(model.state_dict()) == sorted(p.params)
    with pytest.raises(SpecError, match="bn, gap"):
        parse_spec("conv-batchnorm")


def test_seed_spec_is_unchanged_by_the_new_layers():
    a = Model("conv >> relu >> pool >> conv >> pool >> fc >> conv >> fc", (1, 28, 28), 10, seed=0)
    assert a.spec == "conv32k3-relu-pool2-conv32k3-pool2-fc128-conv32k1-fc"
    assert not any(isinstance(layer, (BatchNorm, GlobalAvgPool)) for layer in a.layers)


def test_default_preset_rule():
    """photo for RGB of 64 px or more while a whole batch fits the memory budget (1 GiB, batch 64: 64-95 px)."""
    from cnncli.commands.train_budget import default_preset
    assert [default_preset(3, s, 4, 64, 2**30) for s in (32, 63, 64, 95, 96, 224)] == [
        "default", "default", "photo", "photo", "default", "default"]
    assert default_preset(1, 64, 4, 64, 2**30) == "default"
    assert default_preset(3, 128, 4, 16, 2**30) == "photo"  # smaller batches fit larger images
