"""Training regions: conv + ReLU + 2 x 2 max pooling in one parallel region, forward and backward.

Each region must give the stand-alone kernels' results bit for bit (and so their checks against the naive
loops and the gradient checks carry over), on every convolution path, for any thread count.
"""

import numpy as np
import pytest

import naive
from numba import njit

from cnncli.config import CHUNKS, JIT
from cnncli.engine import kernels
from cnncli.engine.kernels.claim import _fetch_add
from cnncli.engine.kernels.threads import run_claimed

# (x shape, w shape, stride, padding): one case per convolution path, odd output sizes (pooling drops the last
# row or column) and more images than chunks.
CASES = {
    "direct": ((CHUNKS + 3, 1, 12, 11), (4, 1, 3, 3), (1, 1), (0, 0)),
    "winograd": ((CHUNKS + 5, 6, 9, 8), (5, 6, 3, 3), (1, 1), (1, 0)),
    "wide im2col": ((3, 5, 9, 8), (4, 5, 2, 3), (1, 1), (1, 1)),
    "strided im2col": ((4, 2, 11, 9), (3, 2, 3, 2), (2, 1), (1, 0)),
}


@pytest.fixture
def threads():
    before = kernels.get_threads()
    yield kernels.set_threads
    kernels.set_threads(before)


def _arrays(case, dtype):
    xs, ws, stride, padding = case
    rng = np.random.default_rng(11)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[:1]))
    oh = (xs[2] + 2 * padding[0] - ws[2]) // stride[0] + 1
    ow = (xs[3] + 2 * padding[1] - ws[3]) // stride[1] + 1
    dpooled = rng.standard_normal((xs[0], ws[0], oh // 2, ow // 2)).astype(dtype)
    return x, w, b, stride, padding, (xs[0], ws[0], oh, ow), dpooled


def _separately(x, w, b, stride, padding, shape, dpooled, need_dx):
    out = np.empty(shape, x.dtype)
    kernels.conv2d_forward(x, w, b, stride, padding, out, relu=True)
    pooled, argmax = np.empty(dpooled.shape, x.dtype), np.empty(dpooled.shape, np.int32)
    kernels.maxpool_forward(out, (2, 2), (2, 2), (0, 0), pooled, argmax)
    dconv = np.empty(shape, x.dtype)
    kernels.maxpool_backward(dpooled, argmax, dconv, relu_pooled=pooled)
    dx = np.empty_like(x) if need_dx else None
    dw, db = kernels.conv2d_backward(x, w, dconv, stride, padding, dx)
    return [out, pooled, argmax, dconv, dw, db] + ([dx] if need_dx else [])


def _in_regions(x, w, b, stride, padding, shape, dpooled, need_dx):
    out, dconv = np.full(shape, np.nan, x.dtype), np.full(shape, np.nan, x.dtype)
    pooled, argmax = np.full(dpooled.shape, np.nan, x.dtype), np.full(dpooled.shape, -1, np.int32)
    kernels.conv2d_relu_maxpool2(x, w, b, stride, padding, out, pooled, argmax)
    dx = np.full(x.shape, np.nan, x.dtype) if need_dx else None
    dw, db = kernels.maxpool2_relu_conv2d_backward(dpooled, argmax, pooled, x, w, stride, padding, dconv, dx)
    return [out, pooled, argmax, dconv, dw, db] + ([dx] if need_dx else [])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", sorted(CASES))
def test_a_region_equals_the_kernels_run_one_by_one_for_one_to_three_threads(path, dtype, threads):
    arrays = _arrays(CASES[path], dtype)
    for need_dx in (True, False):
        threads(1)
        want = [a.tobytes() for a in _separately(*arrays, need_dx)]
        for n in (1, 2, 3):
            threads(n)
            assert [a.tobytes() for a in _in_regions(*arrays, need_dx)] == want, (n, need_dx)


def test_a_region_agrees_with_the_naive_loops():
    x, w, b, stride, padding, shape, dpooled = _arrays(CASES["winograd"], np.float64)
    out, pooled, _, dconv, dw, db, dx = _in_regions(x, w, b, stride, padding, shape, dpooled, True)
    relu = naive.activation_forward("relu", naive.conv_forward(x, w, b, stride, padding))
    np.testing.assert_allclose(out, relu, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(pooled, naive.maxpool_forward(relu, (2, 2), (2, 2))[0], rtol=1e-11, atol=1e-11)
    want_dconv = naive.activation_backward("relu", relu, naive.maxpool_backward(dpooled, relu, (2, 2), (2, 2), (0, 0)))
    np.testing.assert_allclose(dconv, want_dconv, rtol=1e-11, atol=1e-11)
    for got, ref in zip((dx, dw, db), naive.conv_backward(x, w, want_dconv, stride, padding)):
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)


def test_a_region_refuses_pooled_arrays_of_the_wrong_shape():
    x, w, b, stride, padding, shape, dpooled = _arrays(CASES["direct"], np.float32)
    out = np.empty(shape, np.float32)
    wrong = (dpooled.shape[0], dpooled.shape[1], dpooled.shape[2] + 1, dpooled.shape[3])
    with pytest.raises(ValueError, match="pooled"):
        kernels.conv2d_relu_maxpool2(x, w, b, stride, padding, out, np.empty(wrong, np.float32),
                                     np.empty(dpooled.shape, np.int32))
    with pytest.raises(ValueError, match="argmax"):
        kernels.maxpool2_relu_conv2d_backward(dpooled, np.empty(wrong, np.int32), dpooled, x, w, stride, padding,
                                              out)


@njit(**JIT)
def _claim_all(seen, counter):
    k = _fetch_add(counter)
    while k < seen.shape[0]:
        seen[k] += 1
        k = _fetch_add(counter)


def test_the_threads_of_a_region_claim_every_chunk_exactly_once(threads):
    # A region's threads take chunk indices from one atomic counter inside compiled code (no GIL): a lost or
    # doubled claim would skip a chunk or run it twice, adding its partial sums twice.
    for n in (1, 2, 3):
        threads(n)
        for _ in range(20):
            seen = np.zeros(20000, np.int64)
            run_claimed(_claim_all, len(seen), seen)
            assert (seen == 1).all(), n
