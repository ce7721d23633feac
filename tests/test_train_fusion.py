"""Training-step fusion: conv + ReLU forward in one pass, ReLU + max-pool backward in one pass.

The fused passes must give the same numbers bit for bit as the layers run one by one, agree with the naive
reference loops, and pass float64 gradient checks through a whole model.
"""

import numpy as np
import pytest

import naive
from cnncli.engine import kernels
from cnncli.engine.layers import softmax_cross_entropy
from cnncli.engine.model import Model
from gradcheck import numerical_gradient, rel_error

POOLS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1))]  # overlapping windows too


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size,stride,padding", POOLS)
def test_relu_pool_backward_in_one_pass_equals_the_two_passes_and_the_naive_loops(dtype, size, stride, padding):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4, 9, 8)).astype(dtype)
    z[0, 0, :4] = -1.0  # whole windows of ReLU zeros: their maxima are 0 and pass no gradient
    y = np.empty_like(z)
    kernels.activation_forward("relu", z, y)
    oh, ow = (9 + 2 * padding[0] - size[0]) // stride[0] + 1, (8 + 2 * padding[1] - size[1]) // stride[1] + 1
    pooled, arg = np.empty((3, 4, oh, ow), dtype), np.empty((3, 4, oh, ow), np.int32)
    kernels.maxpool_forward(y, size, stride, padding, pooled, arg)
    dout = rng.standard_normal(pooled.shape).astype(dtype)

    through_pool, two_pass = np.empty_like(z), np.empty_like(z)
    kernels.maxpool_backward(dout, arg, through_pool)
    kernels.activation_backward("relu", y, through_pool, two_pass)
    fused = np.full_like(z, np.nan)
    kernels.maxpool_backward(dout, arg, fused, relu_pooled=pooled)

    assert np.array_equal(fused, two_pass)
    assert (fused[0, 0, :4] == 0).all()
    want = naive.activation_backward("relu", z, naive.maxpool_backward(dout, y, size, stride, padding))
    np.testing.assert_allclose(fused, want, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


# One case per forward path: (x shape, w shape, stride, padding).
PATHS = {
    "direct": ((3, 2, 9, 8), (4, 2, 3, 3), (1, 1), (1, 1)),
    "winograd": ((3, 5, 9, 8), (4, 5, 3, 3), (1, 1), (1, 0)),
    "wide im2col": ((3, 5, 9, 8), (4, 5, 2, 3), (1, 1), (1, 1)),
    "strided im2col": ((3, 2, 9, 8), (4, 2, 3, 2), (2, 1), (1, 0)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_conv_with_relu_on_the_way_out_equals_conv_then_relu_on_every_path(path, dtype):
    xs, ws, stride, padding = PATHS[path]
    rng = np.random.default_rng(8)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[:1]))
    x[0, 0, 0, :3] = np.nan  # NaN outputs become 0, as activation_forward makes them
    oh = (xs[2] + 2 * padding[0] - ws[2]) // stride[0] + 1
    ow = (xs[3] + 2 * padding[1] - ws[3]) // stride[1] + 1
    plain, fused = np.empty((xs[0], ws[0], oh, ow), dtype), np.empty((xs[0], ws[0], oh, ow), dtype)
    kernels.conv2d_forward(x, w, b, stride, padding, plain)
    kernels.activation_forward("relu", plain.copy(), plain)
    kernels.conv2d_forward(x, w, b, stride, padding, fused, relu=True)
    assert not np.isnan(plain).any() and (plain[0] == 0).any()
    assert fused.tobytes() == plain.tobytes()
    # Against the reference loops on the images without NaN.
    x64, w64, b64 = (a.astype(np.float64) for a in (x[1:], w, b))
    want = naive.activation_forward("relu", naive.conv_forward(x64, w64, b64, stride, padding))
    np.testing.assert_allclose(fused[1:], want, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-4)


def test_relu_pool_backward_refuses_a_pooled_array_of_the_wrong_shape():
    dout = np.ones((1, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="relu_pooled"):
        kernels.maxpool_backward(dout, np.zeros(dout.shape, np.int32), np.empty((1, 2, 4, 4), np.float32),
                                 relu_pooled=np.ones((1, 2, 2, 3), np.float32))


def _layer_by_layer(model, x, labels):
    """Loss, logits and gradients with every layer run on its own (no fused passes)."""
    h = x
    for layer in model.layers:
        h = layer.forward(h, training=True)
    logits = h.reshape(len(x), -1).copy()
    loss, d = softmax_cross_entropy(logits, labels)
    d = d.reshape(len(x), -1, 1, 1)
    for i in range(len(model.layers) - 1, -1, -1):
        d = model.layers[i].backward(d, need_dx=i > 0)
    return loss, logits, {k: v.copy() for k, v in model.named("grads")}


@pytest.mark.parametrize("spec,shape", [
    ("conv6k3p1-relu-pool2-conv8k3p1-relu-pool2-fc12-relu-fc", (1, 12, 12)),  # direct, then Winograd
    ("conv5k3-relu-pool3s2p1-conv6k2s2-relu-pool2-fc", (3, 15, 15)),  # im2col paths, overlapping pooling
])
def test_a_training_step_with_fused_passes_equals_the_layers_run_one_by_one(spec, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, *shape)).astype(np.float32)
    labels = rng.integers(0, 3, 5)
    model = Model(spec, shape, 3, seed=2)
    loss, logits = model.loss_and_grads(x, labels)
    fused = {k: v.copy() for k, v in model.named("grads")}
    loss_ref, logits_ref, ref = _layer_by_layer(model, x, labels)
    assert loss == loss_ref and np.array_equal(logits, logits_ref)
    assert fused.keys() == ref.keys()
    for name in ref:
        assert np.array_equal(fused[name], ref[name]), name


def test_whole_model_gradient_check_through_fused_passes_in_float64():
    model = Model("conv5k3p1-relu-pool2-conv6k3p1-relu-pool3s2p1-fc", (2, 8, 8), 3, seed=3)
    rng = np.random.default_rng(4)
    for layer in model.layers:
        layer.params = {k: np.ascontiguousarray(v, np.float64) for k, v in layer.params.items()}
        if "bias" in layer.params:
            layer.params["bias"] += 0.1 * rng.standard_normal(layer.params["bias"].shape)
    model.layers[-1].params["weight"] = 0.5 * rng.standard_normal(model.layers[-1].params["weight"].shape)
    x, labels = rng.standard_normal((3, 2, 8, 8)), np.array([0, 2, 1])
    model.loss_and_grads(x, labels)
    grads = dict(model.named("grads"))
    for name, p in model.named():
        numeric = numerical_gradient(lambda: softmax_cross_entropy(model.forward(x, training=True), labels)[0], p)
        assert rel_error(grads[name], numeric) < 1e-6, name


def test_winograd_scratch_buffers_reused_across_shapes_never_leak_old_values():
    # Each thread keeps its Winograd plane buffers from call to call: interleaving two layers' shapes (one with
    # an odd size, so tiles reach past the edge) must give exactly the results of the first calls.
    rng = np.random.default_rng(7)
    shapes = [((4, 5, 9, 9), (6, 5, 3, 3), (1, 1)), ((3, 8, 6, 7), (8, 8, 3, 3), (0, 0))]
    cases = []
    for xs, ws, pad in shapes:
        x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
        out = np.empty((xs[0], ws[0], xs[2] + 2 * pad[0] - 2, xs[3] + 2 * pad[1] - 2), np.float32)
        cases.append((x, w, pad, out, rng.standard_normal(out.shape).astype(np.float32)))

    def run(x, w, pad, out, dout):
        kernels.conv2d_forward(x, w, np.zeros(w.shape[0], np.float32), (1, 1), pad, out)
        dx = np.empty_like(x)
        dw, db = kernels.conv2d_backward(x, w, dout, (1, 1), pad, dx)
        return out.copy(), dx, dw, db

    first = [run(*c) for c in cases]
    for _ in range(2):
        for case, want in zip(cases, first):
            for got, ref in zip(run(*case), want):
                assert got.tobytes() == ref.tobytes()
    x, w, pad, out, dout = cases[0]
    want_dx, want_dw, want_db = naive.conv_backward(*(a.astype(np.float64) for a in (x, w, dout)), (1, 1), pad)
    assert np.abs(first[0][3] - want_db).max() <= 1e-5 * np.abs(want_db).max()
