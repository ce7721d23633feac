"""Every kernel against its plain-loop twin in tests/naive.py, on randomized shapes, in float32 and float64.

Covers both convolution paths (direct for stride 1 and C <= 3, im2col + GEMM otherwise), strides > 1 (also different
in height and width), padding, non-square filters and images, N = 1, C = 1, batches that span several
work chunks, and bit-identical results (forward and weight gradients) for 1 and 2 threads.
"""

import numpy as np
import pytest

import naive
from cnncli.engine import kernels
from cnncli.config import CHUNKS

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-11}


@pytest.fixture
def threads():
    """Yields kernels.set_threads and restores the previous thread count afterwards."""
    before = kernels.get_threads()
    yield kernels.set_threads
    kernels.set_threads(before)


def random_conv_case(seed, c_in=None):
    """A random conv problem (x, w, b, stride, padding) whose output is at least 1 x 1."""
    rng = np.random.default_rng(seed)
    while True:
        n = int(rng.integers(1, 4))
        c = c_in if c_in is not None else int(rng.choice([1, 2, 3, 4, 5, 7]))
        f = int(rng.integers(1, 5))
        h, w = int(rng.integers(3, 10)), int(rng.integers(3, 10))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        if naive.out_size(h, kh, sh, ph) >= 1 and naive.out_size(w, kw, sw, pw) >= 1:
            break
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, kh, kw))
    b = rng.standard_normal(f)
    return x, wt, b, (sh, sw), (ph, pw)


# Hand-picked cases: (N, C, H, W, F, KH, KW, stride, padding). Stride 1 and C <= 3 -> direct path, else im2col.
CONV_CASES = [
    (1, 1, 5, 5, 1, 3, 3, (1, 1), (0, 0)),  # N = 1, C = 1, F = 1
    (2, 1, 6, 6, 2, 3, 3, (1, 1), (0, 0)),
    (2, 2, 7, 5, 3, 2, 3, (1, 1), (1, 1)),  # non-square image and filter, padding
    (1, 3, 6, 6, 2, 3, 3, (1, 1), (0, 0)),  # the article's 6x6x3 image with two 3x3x3 filters
    (3, 3, 9, 8, 4, 3, 2, (2, 1), (1, 0)),  # non-square stride and padding, 3 channels: im2col
    (1, 4, 6, 6, 2, 3, 3, (1, 1), (0, 0)),  # smallest im2col case
    (2, 5, 8, 7, 3, 3, 2, (2, 3), (1, 2)),  # im2col with non-square stride and padding
    (2, 6, 5, 9, 4, 1, 1, (1, 1), (0, 0)),  # 1x1 filters
    (1, 4, 4, 4, 2, 4, 4, (1, 1), (0, 0)),  # filter as large as the image -> 1x1 output
    (2, 4, 3, 3, 2, 3, 3, (2, 2), (2, 2)),  # padding larger than half the filter (corners all padding)
    (CHUNKS + 3, 1, 5, 6, 2, 3, 3, (1, 1), (1, 1)),  # more images than chunks, direct path
    (CHUNKS + 3, 4, 5, 6, 2, 3, 3, (2, 2), (1, 1)),  # more images than chunks, im2col path
]


def case_arrays(case, dtype, seed=0):
    n, c, h, w, f, kh, kw, stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, wt, b, stride, padding


def run_forward(x, w, b, stride, padding):
    oh = naive.out_size(x.shape[2], w.shape[2], stride[0], padding[0])
    ow = naive.out_size(x.shape[3], w.shape[3], stride[1], padding[1])
    out = np.full((x.shape[0], w.shape[0], oh, ow), np.nan, x.dtype)  # NaN: every element must be written
    kernels.conv2d_forward(x, w, b, stride, padding, out)
    return out


def run_backward(x, w, dout, stride, padding):
    dx = np.full(x.shape, np.nan, x.dtype)
    dw, db = kernels.conv2d_backward(x, w, dout, stride, padding, dx)
    return dx, dw, db


def check_conv(x, w, b, stride, padding, seed=0):
    out = run_forward(x, w, b, stride, padding)
    ref = naive.conv_forward(x, w, b, stride, padding)
    assert out.dtype == x.dtype
    np.testing.assert_allclose(out, ref, **tol(x.dtype))
    dout = np.random.default_rng(seed + 1000).standard_normal(out.shape).astype(x.dtype)
    dx, dw, db = run_backward(x, w, dout, stride, padding)
    rdx, rdw, rdb = naive.conv_backward(x, w, dout, stride, padding)
    assert dw.shape == w.shape and db.shape == b.shape and dw.dtype == x.dtype
    np.testing.assert_allclose(dx, rdx, **tol(x.dtype))
    np.testing.assert_allclose(dw, rdw, **tol(x.dtype))
    np.testing.assert_allclose(db, rdb, **tol(x.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "N{}C{}{}x{}F{}k{}x{}s{}p{}".format(
    *c[:7], "x".join(map(str, c[7])), "x".join(map(str, c[8]))))
def test_conv_matches_naive_on_chosen_shapes(case, dtype):
    check_conv(*case_arrays(case, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(16))
def test_conv_matches_naive_on_random_shapes(seed, dtype):
    x, w, b, stride, padding = random_conv_case(seed)
    check_conv(x.astype(dtype), w.astype(dtype), b.astype(dtype), stride, padding, seed)


@pytest.mark.parametrize("c_in", [1, 2, 3, 4, 6])
def test_both_conv_paths_agree_with_naive_for_each_channel_count(c_in):
    # The same random geometry at every channel count, so the direct/im2col switch at C = 4 is crossed.
    for seed in range(3):
        x, w, b, stride, padding = random_conv_case(100 + seed, c_in=c_in)
        check_conv(x, w, b, stride, padding, seed)


def test_conv_backward_without_dx_gives_the_same_weight_gradients():
    x, w, b, stride, padding = case_arrays(CONV_CASES[6], np.float64)
    dout = np.random.default_rng(5).standard_normal(run_forward(x, w, b, stride, padding).shape)
    _, dw1, db1 = run_backward(x, w, dout, stride, padding)
    dw2, db2 = kernels.conv2d_backward(x, w, dout, stride, padding)
    np.testing.assert_array_equal(dw1, dw2)
    np.testing.assert_array_equal(db1, db2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [CONV_CASES[4], CONV_CASES[6], CONV_CASES[10], CONV_CASES[11]])
def test_conv_is_bit_identical_for_one_and_two_threads(case, dtype, threads):
    x, w, b, stride, padding = case_arrays(case, dtype, seed=3)
    results = []
    for n in (1, 2, 1):
        threads(n)
        out = run_forward(x, w, b, stride, padding)
        dout = np.cos(out)  # any fixed upstream gradient
        results.append((out, *run_backward(x, w, dout, stride, padding)))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert a.tobytes() == b_.tobytes()


# Max pooling: (N, C, H, W, size, stride, padding); stride < size gives overlapping windows.
POOL_CASES = [
    (1, 1, 4, 4, (2, 2), (2, 2), (0, 0)),
    (2, 3, 6, 6, (2, 2), (2, 2), (0, 0)),
    (2, 2, 5, 7, (2, 2), (2, 2), (0, 0)),  # odd sizes: the last row/column is dropped
    (1, 2, 7, 6, (3, 3), (2, 2), (0, 0)),  # overlapping
    (2, 1, 6, 8, (3, 3), (1, 1), (1, 1)),  # overlapping with padding
    (1, 3, 7, 9, (3, 2), (2, 1), (1, 1)),  # non-square window, stride and image
    (2, 2, 5, 5, (4, 4), (3, 3), (2, 2)),  # padding of half the window
    (CHUNKS + 1, 2, 4, 4, (2, 2), (1, 1), (0, 0)),
]


def run_pool(x, size, stride, padding):
    oh = naive.out_size(x.shape[2], size[0], stride[0], padding[0])
    ow = naive.out_size(x.shape[3], size[1], stride[1], padding[1])
    out = np.full((x.shape[0], x.shape[1], oh, ow), np.nan, x.dtype)
    arg = np.full(out.shape, -7, np.int32)
    kernels.maxpool_forward(x, size, stride, padding, out, arg)
    return out, arg


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "N{}C{}{}x{}k{}s{}p{}".format(
    *c[:4], *("x".join(map(str, p)) for p in c[4:])))
def test_maxpool_matches_naive(case, ties, dtype):
    n, c, h, w, size, stride, padding = case
    rng = np.random.default_rng(sum(case[:4]))
    # Small integers make many windows hold their maximum more than once: the first one must win.
    x = (rng.integers(-2, 3, (n, c, h, w)) if ties else rng.standard_normal((n, c, h, w))).astype(dtype)
    out, arg = run_pool(x, size, stride, padding)
    ref, ref_arg = naive.maxpool_forward(x, size, stride, padding)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    kernels.maxpool_backward(dout, arg, dx)
    np.testing.assert_allclose(dx, naive.maxpool_backward(dout, x, size, stride, padding), **tol(dtype))


def test_maxpool_all_negative_values_and_padding_never_wins():
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4) - 100.0
    out, arg = run_pool(x, (2, 2), (2, 2), (1, 1))
    ref, ref_arg = naive.maxpool_forward(x, (2, 2), (2, 2), (1, 1))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    assert (out < -100).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_is_bit_identical_for_one_and_two_threads(dtype, threads):
    x = np.random.default_rng(1).standard_normal((5, 3, 9, 9)).astype(dtype)
    results = []
    for n in (1, 2):
        threads(n)
        out, arg = run_pool(x, (3, 3), (2, 2), (1, 1))
        dx = np.empty_like(x)
        kernels.maxpool_backward(np.sin(out), arg, dx)
        results.append((out, arg, dx))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("shape", [(1,), (2, 3, 4, 5), (3, 1, 7, 3)])
def test_activations_match_naive(kind, shape, dtype):
    rng = np.random.default_rng(len(shape))
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    x.reshape(-1)[0] = 0.0  # ReLU's kink: derivative 0 at exactly 0 on both sides
    out = np.full_like(x, np.nan)
    kernels.activation_forward(kind, x, out)
    np.testing.assert_allclose(out, naive.activation_forward(kind, x), **tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    dx = np.full_like(x, np.nan)
    kernels.activation_backward(kind, out, dy, dx)
    np.testing.assert_allclose(dx, naive.activation_backward(kind, x, dy), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_without_overflow(dtype):
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype)
    for kind, lo, hi in (("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)):
        out = np.empty_like(x)
        with np.errstate(all="raise"):
            kernels.activation_forward(kind, x, out)
        assert np.isfinite(out).all() and (out >= lo).all() and (out <= hi).all()
        assert out[0] == pytest.approx(lo, abs=1e-6) and out[-1] == pytest.approx(hi, abs=1e-6)
        assert np.all(np.diff(out) >= 0)


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
def test_activations_on_large_arrays_are_bit_identical_for_one_and_two_threads(kind, threads):
    # Large enough that the element-wise work is split across threads.
    size = 2 * kernels.elementwise._MIN_ELEMENTWISE_CHUNK + 7
    threads(2)
    assert kernels.elementwise._elementwise_chunks(size) == 2
    x = np.random.default_rng(2).standard_normal(size).astype(np.float32)
    dy = np.random.default_rng(3).standard_normal(size).astype(np.float32)
    results = []
    for n in (1, 2):
        threads(n)
        out, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
        kernels.activation_forward(kind, x, out)
        kernels.activation_backward(kind, out, dy, dx)
        results.append((out, dx))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()
    sample = slice(0, None, 997)
    np.testing.assert_allclose(results[0][0][sample], naive.activation_forward(kind, x[sample]), **tol(np.float32))


def test_set_threads_is_reported_and_floors_at_one(threads):
    threads(2)
    assert kernels.get_threads() == 2
    threads(0)
    assert kernels.get_threads() == 1


def _conv_args(dtype=np.float32):
    x = np.ones((2, 4, 6, 6), dtype)
    w = np.ones((3, 4, 3, 3), dtype)
    return x, w, np.zeros(3, dtype), np.empty((2, 3, 4, 4), dtype)


@pytest.mark.parametrize("bad", ["out_shape", "out_dtype", "w_channels", "bias", "x_strided", "dx_shape"])
def test_public_conv_wrappers_refuse_wrong_shapes_dtypes_and_layouts(bad):
    # The compiled cores run without bounds checks: each of these would read or write outside an array.
    x, w, b, out = _conv_args()
    dx = None
    if bad == "out_shape":
        out = np.empty((2, 3, 5, 4), np.float32)
    elif bad == "out_dtype":
        out = out.astype(np.float64)
    elif bad == "w_channels":
        w = np.ones((3, 5, 3, 3), np.float32)
    elif bad == "bias":
        b = np.zeros(4, np.float32)
    elif bad == "x_strided":
        x = np.ones((2, 4, 6, 12), np.float32)[..., ::2]
    else:
        dx = np.empty((2, 4, 6, 5), np.float32)
    with pytest.raises(ValueError):
        if bad == "dx_shape":
            kernels.conv2d_backward(x, w, np.ones((2, 3, 4, 4), np.float32), (1, 1), (0, 0), dx)
        else:
            kernels.conv2d_forward(x, w, b, (1, 1), (0, 0), out)
    if bad in ("out_shape", "out_dtype"):
        with pytest.raises(ValueError):
            kernels.conv2d_backward(x, w, out, (1, 1), (0, 0))


def test_public_pool_and_activation_wrappers_refuse_mismatched_arrays():
    x = np.ones((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError):
        kernels.maxpool_forward(x, (2, 2), (2, 2), (0, 0), np.empty((2, 3, 3, 3), np.float32),
                                np.empty((2, 3, 3, 3), np.int64))
    with pytest.raises(ValueError):
        kernels.maxpool_forward(x, (2, 2), (2, 2), (0, 0), np.empty((2, 3, 4, 3), np.float32),
                                np.empty((2, 3, 4, 3), np.int32))
    with pytest.raises(ValueError):
        kernels.maxpool_backward(np.ones((2, 3, 3, 3), np.float32), np.zeros((2, 3, 3, 2), np.int32),
                                 np.empty((2, 3, 6, 6), np.float32))
    with pytest.raises(ValueError):
        kernels.activation_forward("relu", x, np.empty((2, 3, 6, 5), np.float32))
    with pytest.raises(ValueError):
        kernels.activation_backward("relu", x, x.astype(np.float64), np.empty_like(x))
    # The same calls with matching arrays go through.
    out, arg = np.empty((2, 3, 3, 3), np.float32), np.empty((2, 3, 3, 3), np.int32)
    kernels.maxpool_forward(x, (2, 2), (2, 2), (0, 0), out, arg)
    kernels.activation_backward("relu", x, x, np.empty_like(x))


# Winograd F(2x2, 3x3) takes 3x3 stride-1 convolutions with 4+ input channels and padding <= 2: odd and even
# output sizes (partial tiles), every padding, more images than chunks, and a 1x1 output.
WINOGRAD_CASES = [
    (3, 4, 5, 5, 3, 0),
    (2, 5, 7, 6, 4, 1),
    (2, 8, 6, 9, 3, 2),
    (CHUNKS + 5, 16, 14, 14, 8, 1),
    (2, 6, 3, 3, 5, 0),
    (1, 32, 7, 7, 16, 1),
]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: "N{}C{}{}x{}F{}p{}".format(*c))
def test_winograd_convolution_matches_naive_in_float64_and_float32(case):
    n, c, h, w, f, p = case
    assert kernels.winograd._wino_fits(c, 3, 3, h + 2 * p - 2, w + 2 * p - 2, p, p)
    x, wt, b, stride, padding = case_arrays((n, c, h, w, f, 3, 3, (1, 1), (p, p)), np.float64, seed=n + c)
    # float64: the transforms are exact up to rounding, so Winograd agrees with the direct sum to ~1e-13.
    np.testing.assert_allclose(run_forward(x, wt, b, stride, padding), naive.conv_forward(x, wt, b, stride, padding),
                               rtol=1e-11, atol=1e-11)
    dout = np.random.default_rng(7).standard_normal((n, f, h + 2 * p - 2, w + 2 * p - 2))
    for got, ref in zip(run_backward(x, wt, dout, stride, padding), naive.conv_backward(x, wt, dout, stride, padding)):
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)
    # float32: the documented tolerance, relative to the largest magnitude of each result (README: 1e-5).
    x32, w32, b32, d32 = (a.astype(np.float32) for a in (x, wt, b, dout))
    got = [run_forward(x32, w32, b32, stride, padding), *run_backward(x32, w32, d32, stride, padding)]
    ref = [naive.conv_forward(x, wt, b, stride, padding), *naive.conv_backward(x, wt, dout, stride, padding)]
    for g, r in zip(got, ref):
        assert np.abs(g - r).max() <= 1e-5 * np.abs(r).max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_results_are_bit_identical_for_one_and_two_threads(dtype, threads):
    x, w, b, stride, padding = case_arrays((CHUNKS + 5, 16, 14, 14, 8, 3, 3, (1, 1), (1, 1)), dtype, seed=4)
    dout = np.random.default_rng(1).standard_normal((CHUNKS + 5, 8, 14, 14)).astype(dtype)
    results = []
    for n in (1, 2, 1):
        threads(n)
        results.append([run_forward(x, w, b, stride, padding).tobytes()]
                       + [a.tobytes() for a in run_backward(x, w, dout, stride, padding)])
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("geometry", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))])
def test_maxpool_without_indices_gives_the_same_maxima(geometry):
    size, stride, padding = geometry
    x = np.random.default_rng(2).standard_normal((3, 5, 9, 8)).astype(np.float32)
    x[0, 0, :2, :2] = 1.5  # a tie
    oh = naive.out_size(9, size[0], stride[0], padding[0])
    ow = naive.out_size(8, size[1], stride[1], padding[1])
    with_idx, without = np.empty((3, 5, oh, ow), np.float32), np.full((3, 5, oh, ow), np.nan, np.float32)
    kernels.maxpool_forward(x, size, stride, padding, with_idx, np.empty((3, 5, oh, ow), np.int32))
    kernels.maxpool_forward(x, size, stride, padding, without)
    np.testing.assert_array_equal(without, with_idx)
