"""Numerical gradient checks (float64) for every layer's backward pass and for the loss, plus numeric safety.

Each check compares layer.backward(dy) with the central-difference gradient of sum(layer.forward(x) * dy)
for a random upstream gradient dy, with respect to the input and to every parameter.
"""

import numpy as np
import pytest

import naive
from cnncli.engine.layers import Activation, Conv, Dense, Dropout, MaxPool, softmax, softmax_cross_entropy
from gradcheck import numerical_gradient, rel_error

TOL = 1e-6  # float64 central differences with h = 1e-5 land around 1e-8 .. 1e-10 for correct gradients


def to_float64(layer):
    layer.params = {k: np.ascontiguousarray(v, np.float64) for k, v in layer.params.items()}
    return layer


def check_layer(layers, x, seed=0, params=True):
    """Gradient check of a stack of layers (input gradient, and every parameter's gradient when params)."""
    rng = np.random.default_rng(seed)

    def forward():
        h = x
        for layer in layers:
            h = layer.forward(h, training=True)
        return h

    out = forward()
    dy = rng.standard_normal(out.shape)
    d = dy
    for layer in reversed(layers):
        d = layer.backward(d)
    assert d.shape == x.shape
    assert rel_error(d, numerical_gradient(forward, x, dy)) < TOL
    checked = 0
    if params:
        for layer in layers:
            for name, p in layer.params.items():
                analytic = layer.grads[name]
                assert analytic.shape == p.shape
                err = rel_error(analytic, numerical_gradient(forward, p, dy))
                assert err < TOL, f"{layer.token}.{name}: relative error {err:.2e}"
                checked += 1
    return checked


CONV_CASES = [
    # (N, C, H, W, filters, kernel, stride, padding)
    (2, 1, 5, 5, 2, (3, 3), (1, 1), (0, 0)),
    (2, 3, 6, 5, 2, (3, 2), (1, 1), (1, 0)),  # non-square image and filter
    (1, 2, 7, 6, 3, (3, 3), (2, 2), (1, 1)),  # stride 2 with padding
    (2, 5, 6, 7, 2, (2, 3), (2, 1), (1, 2)),  # im2col path, non-square stride and padding
    (2, 4, 5, 5, 3, (1, 1), (1, 1), (0, 0)),
    (2, 4, 5, 6, 3, (3, 3), (1, 1), (1, 1)),  # Winograd F(2x2, 3x3), partial tiles
    (3, 6, 4, 4, 2, (3, 3), (1, 1), (0, 0)),  # Winograd, valid padding
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradients(case):
    n, c, h, w, filters, kernel, stride, padding = case
    rng = np.random.default_rng(sum(case[:5]))
    layer = Conv(filters, kernel, stride, padding)
    layer.init((c, h, w), rng)
    to_float64(layer)
    layer.params["bias"] += rng.standard_normal(filters)  # non-zero bias
    x = rng.standard_normal((n, c, h, w))
    assert check_layer([layer], x) == 2


@pytest.mark.parametrize("size,stride,padding", [
    ((2, 2), (2, 2), (0, 0)),
    ((3, 3), (2, 2), (0, 0)),  # overlapping windows
    ((3, 3), (1, 1), (1, 1)),  # overlapping with padding
    ((2, 3), (1, 2), (1, 1)),  # non-square
])
def test_maxpool_gradients(size, stride, padding):
    rng = np.random.default_rng(7)
    # A permutation keeps every value at least 0.1 from every other: a 1e-5 nudge never changes a maximum.
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.1
    assert check_layer([MaxPool(size, stride, padding)], x.astype(np.float64), params=False) == 0


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
def test_activation_gradients(kind):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))
    if kind == "relu":
        x = np.sign(x) * (0.1 + np.abs(x))  # away from the kink at 0
    check_layer([Activation(kind)], x, params=False)


def test_dense_after_conv_gradients():
    rng = np.random.default_rng(11)
    conv = Conv(3, (3, 3), (1, 1), (1, 1))
    conv.init((2, 5, 4), rng)
    dense = Dense(4)
    dense.init(conv.output_shape((2, 5, 4)), rng)
    for layer in (conv, dense):
        to_float64(layer)
        layer.params["bias"] += 0.1 * rng.standard_normal(layer.params["bias"].shape)
    x = rng.standard_normal((3, 2, 5, 4))
    out = dense.forward(conv.forward(x))
    assert out.shape == (3, 4, 1, 1)
    # Dense flattens in C, H, W order: compare with the naive twin on the flattened conv output.
    ref = naive.dense_forward(conv.forward(x), dense.params["weight"], dense.params["bias"])
    np.testing.assert_allclose(out.reshape(3, 4), ref, rtol=1e-12, atol=1e-12)
    assert check_layer([conv, dense], x) == 4


def test_dense_backward_matches_naive():
    rng = np.random.default_rng(12)
    dense = Dense(3)
    dense.init((2, 2, 2), rng)
    to_float64(dense)
    x = rng.standard_normal((4, 2, 2, 2))
    dense.forward(x, training=True)
    dy = rng.standard_normal((4, 3, 1, 1))
    dx = dense.backward(dy)
    rdx, rdw, rdb = naive.dense_backward(x, dense.params["weight"], dy.reshape(4, 3))
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dense.grads["weight"], rdw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dense.grads["bias"], rdb, rtol=1e-12, atol=1e-12)


class FixedMask(Dropout):
    """Dropout whose random generator is re-seeded before every forward pass, so its mask is fixed."""

    def forward(self, x, training=False):
        self.rng = np.random.default_rng(42)
        return super().forward(x, training)


def test_dropout_gradient_with_a_fixed_mask():
    layer = FixedMask(0.4)
    x = np.random.default_rng(1).standard_normal((3, 4, 5, 5))
    check_layer([layer], x, params=False)
    mask = layer.mask
    np.testing.assert_allclose(np.unique(mask), [0.0, 1 / 0.6], rtol=1e-6)
    assert 0.25 < (mask == 0).mean() < 0.55


def test_dropout_is_identity_outside_training_and_at_rate_zero():
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4))
    assert np.array_equal(Dropout(0.5).forward(x, training=False), x)
    assert np.array_equal(Dropout(0.0).forward(x, training=True), x)
    dy = np.ones_like(x)
    layer = Dropout(0.5)
    layer.forward(x, training=False)
    assert np.array_equal(layer.backward(dy), dy)


def test_dropout_keeps_the_expected_value():
    x = np.ones((64, 4, 16, 16), np.float32)
    out = Dropout(0.3).forward(x, training=True)
    assert out.dtype == np.float32
    assert out.mean() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradient(weighted):
    rng = np.random.default_rng(5)
    logits = 2 * rng.standard_normal((6, 4))
    labels = np.array([0, 1, 2, 3, 1, 1])
    weights = [0.5, 2.0, 1.0, 3.0] if weighted else None
    loss, grad = softmax_cross_entropy(logits, labels, weights)
    ref_loss, ref_grad = naive.softmax_cross_entropy(logits, labels, weights)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    numeric = numerical_gradient(lambda: softmax_cross_entropy(logits, labels, weights)[0], logits)
    assert rel_error(grad, numeric) < TOL


def test_class_weights_change_the_loss():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    labels = np.array([0, 0, 1])
    plain, _ = softmax_cross_entropy(logits, labels)
    heavy, _ = softmax_cross_entropy(logits, labels, [1.0, 10.0])
    uniform, _ = softmax_cross_entropy(logits, labels, [3.0, 3.0])
    assert uniform == pytest.approx(plain, rel=1e-12)  # a common factor cancels in the weighted mean
    assert heavy > plain  # class 1's sample is the worst-predicted one


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_is_finite_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype)
    labels = np.array([1, 0, 2])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert grad.dtype == dtype
    # Rows 0 and 1 are confidently wrong by 2e4 logits (row 1 has two winners); row 2 is uniform over 3 classes.
    assert loss == pytest.approx((2e4 + (2e4 + np.log(2)) + np.log(3)) / 3, rel=1e-6)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-6)


@pytest.mark.parametrize("logits", [
    np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [5e3, 5e3, -5e3]]),
    np.zeros((2, 5)),
    np.full((3, 4), 7.5),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_rows_sum_to_one(logits, dtype):
    with np.errstate(over="raise", invalid="raise"):
        p = softmax(logits.astype(dtype))
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    if np.ptp(logits) == 0:
        np.testing.assert_allclose(p, 1.0 / logits.shape[1], rtol=1e-6)


def test_relu_output_has_no_negative_values():
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, :4] = [-0.0, 0.0, -1e-38, -np.inf]
    out = Activation("relu").forward(x)
    assert (out >= 0).all()
    assert not np.signbit(out).any()
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert (out > 0).sum() == (x > 0).sum()


def test_layer_output_shapes():
    assert Conv(2, (3, 3)).output_shape((3, 6, 6)) == (2, 4, 4)
    assert Conv(5, (3, 2), (2, 1), (1, 0)).output_shape((1, 7, 6)) == (5, 4, 5)
    assert MaxPool((2, 2)).output_shape((7, 9, 8)) == (7, 4, 4)
    assert Dense(10).output_shape((3, 4, 4)) == (10, 1, 1)
    for layer in (Activation("relu"), Dropout(0.5)):
        assert layer.output_shape((3, 4, 5)) == (3, 4, 5)


def test_layers_reuse_their_buffers_and_model_outputs_never_change_under_the_caller():
    # Explicit ownership: a layer writes its output (and its input gradient) into the same array on every call,
    # so a training step allocates no activation buffers; what Model returns is never such a buffer.
    from cnncli.engine.model import Model

    rng = np.random.default_rng(0)
    model = Model("conv4k3p1-relu-pool2-fc", (2, 8, 8), 3, seed=0)
    x1, x2 = (rng.standard_normal((9, 2, 8, 8)).astype(np.float32) for _ in range(2))
    labels = np.array([0, 1, 2] * 3)
    conv, relu, pool = model.layers[:3]
    model.loss_and_grads(x1, labels)
    held = [conv.forward(x1, True), relu.forward(conv.forward(x1, True), True)]
    first = model.forward(x1)
    kept = first.copy()
    model.loss_and_grads(x2, labels)
    probs = model.predict_proba(x2)
    assert conv.forward(x2, True) is held[0] and relu.forward(held[0], True) is held[1]
    assert np.array_equal(first, kept)  # logits stay the caller's
    assert not np.array_equal(model.forward(x2), kept)
    np.testing.assert_array_equal(model.predict_proba(x2), probs)
