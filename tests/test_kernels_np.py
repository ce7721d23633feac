"""The numpy inference kernels (cnncli.engine.kernels_np) against the plain-loop twins and the numba kernels.

Also checks the backend choice in cnncli.engine.layers: small inference batches run in numpy and give the numba path's
probabilities to float rounding, and a one-image `cnncli predict` process never imports numba while a larger
batch does.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import naive
from cnncli.engine import kernels
from cnncli.engine import kernels_np
from cnncli.engine import layers
from cnncli.store import modelfile
from cnncli.engine.model import Model
from test_kernels import CONV_CASES, POOL_CASES, case_arrays, random_conv_case, tol

DTYPES = [np.float32, np.float64]
AGREE = {"rtol": 1e-5, "atol": 1e-6}  # numpy vs numba in float32: the same sums in another order


def conv_both(x, w, b, stride, padding):
    oh = naive.out_size(x.shape[2], w.shape[2], stride[0], padding[0])
    ow = naive.out_size(x.shape[3], w.shape[3], stride[1], padding[1])
    outs = []
    for mod in (kernels_np, kernels):
        out = np.full((x.shape[0], w.shape[0], oh, ow), np.nan, x.dtype)  # NaN: every element must be written
        mod.conv2d_forward(x, w, b, stride, padding, out)
        outs.append(out)
    return outs


def check_conv(x, w, b, stride, padding):
    out, ref_numba = conv_both(x, w, b, stride, padding)
    assert out.dtype == x.dtype
    np.testing.assert_allclose(out, naive.conv_forward(x, w, b, stride, padding), **tol(x.dtype))
    np.testing.assert_allclose(out, ref_numba, **(AGREE if x.dtype == np.float32 else tol(x.dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "N{}C{}{}x{}F{}k{}x{}s{}p{}".format(
    *c[:7], "x".join(map(str, c[7])), "x".join(map(str, c[8]))))
def test_conv_matches_naive_and_numba_on_chosen_shapes(case, dtype):
    check_conv(*case_arrays(case, dtype))


@pytest.mark.parametrize("seed", range(12))
def test_conv_matches_naive_and_numba_on_random_shapes(seed):
    x, w, b, stride, padding = random_conv_case(seed)
    check_conv(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), stride, padding)


def pool_both(x, size, stride, padding):
    oh = naive.out_size(x.shape[2], size[0], stride[0], padding[0])
    ow = naive.out_size(x.shape[3], size[1], stride[1], padding[1])
    res = []
    for mod in (kernels_np, kernels):
        out = np.full((x.shape[0], x.shape[1], oh, ow), 123.0, x.dtype)
        arg = np.full(out.shape, -7, np.int32)
        mod.maxpool_forward(x, size, stride, padding, out, arg)
        res.append((out, arg))
    return res


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "N{}C{}{}x{}k{}s{}p{}".format(
    *c[:4], *("x".join(map(str, p)) for p in c[4:])))
def test_maxpool_matches_naive_and_numba_exactly(case, ties, dtype):
    n, c, h, w, size, stride, padding = case
    rng = np.random.default_rng(sum(case[:4]))
    # Small integers make many windows hold their maximum more than once: the first one must win.
    x = (rng.integers(-2, 3, (n, c, h, w)) if ties else rng.standard_normal((n, c, h, w))).astype(dtype)
    (out, arg), (nb_out, nb_arg) = pool_both(x, size, stride, padding)
    ref, ref_arg = naive.maxpool_forward(x, size, stride, padding)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    np.testing.assert_array_equal(out, nb_out)
    np.testing.assert_array_equal(arg, nb_arg)


@pytest.mark.parametrize("geometry", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((2, 3), (1, 2), (1, 1))])
def test_maxpool_nan_and_infinity_resolve_as_in_the_numba_kernel(geometry):
    # NaN first in a window stays; a later NaN never wins; all -inf windows and padding report the first valid cell.
    nan, inf = np.nan, np.inf
    x = np.array([[nan, 1, -inf, -inf, 0],
                  [2, nan, -inf, nan, 3],
                  [-inf, nan, -0.0, 0.0, nan],
                  [nan, -inf, nan, nan, -inf]], np.float32)[None, None]
    (out, arg), (nb_out, nb_arg) = pool_both(x, *geometry)
    np.testing.assert_array_equal(out, nb_out)  # NaN compares equal to NaN here
    np.testing.assert_array_equal(arg, nb_arg)
    assert np.isnan(out).any() and np.isneginf(out).any()  # the cases above really occur


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
def test_activations_match_naive_and_numba(kind, dtype):
    rng = np.random.default_rng(7)
    x = (3 * rng.standard_normal((2, 3, 5, 4))).astype(dtype)
    x.reshape(-1)[:4] = [0.0, -0.0, 1e4, -1e4]
    out, nb = np.full_like(x, np.nan), np.full_like(x, np.nan)
    with np.errstate(over="raise"):
        kernels_np.activation_forward(kind, x, out)
    kernels.activation_forward(kind, x, nb)
    np.testing.assert_allclose(out, naive.activation_forward(kind, x), **tol(dtype))
    np.testing.assert_allclose(out, nb, **(AGREE if dtype == np.float32 else tol(dtype)))


def test_relu_maps_nan_and_negative_zero_to_zero_like_the_kernel():
    x = np.array([np.nan, -0.0, 0.0, -1.0, 2.0], np.float32)
    out, nb = np.full_like(x, 7.0), np.full_like(x, 7.0)
    kernels_np.activation_forward("relu", x, out)
    kernels.activation_forward("relu", x, nb)
    assert out.tobytes() == nb.tobytes()


@pytest.mark.parametrize("preset, shape", [("m1", (1, 28, 28)), ("default", (1, 28, 28)), ("default", (3, 32, 32))])
def test_models_give_the_same_probabilities_on_both_paths(preset, shape):
    model = Model(preset, shape, 10, seed=3)
    x = np.random.default_rng(1).standard_normal((layers.SMALL_BATCH + 2, *shape)).astype(np.float32)
    assert layers._forward_kernels(x, False) is kernels  # a large batch: numba
    assert layers._forward_kernels(x[:1], False) is kernels_np  # one image: numpy
    assert layers._forward_kernels(x[:1], True) is kernels  # training: always numba
    big = model.predict_proba(x)
    small = np.concatenate([model.predict_proba(x[i:i + 1]) for i in range(len(x))])
    assert small.dtype == np.float32 and big.shape == small.shape
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-7)


WRAPPER = r"""
import atexit, sys
atexit.register(lambda: sys.stderr.write("\nNUMBA-LOADED=%s\n" % ("numba" in sys.modules)))
sys.argv = ["cnncli"] + sys.argv[1:]
from cnncli.commands.cli import main
main()
"""


def predict_loads_numba(tmp_path, n_images):
    """Run `cnncli predict` on n_images in a fresh process; True when numba was imported by the end."""
    model = Model("m1", (1, 28, 28), 10)
    path = tmp_path / "m1.safetensors"
    modelfile.save(path, modelfile.Classifier(model, classes=[str(i) for i in range(10)], color="gray",
                                              mean=[0.5], std=[0.25]))
    rng = np.random.default_rng(0)
    images = []
    for i in range(n_images):
        images.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(images[-1])
    r = subprocess.run([sys.executable, "-c", WRAPPER, "predict", *images, "-m", str(path), "--format", "tsv"],
                       capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == n_images + 1  # header + one row per image
    flags = [line for line in r.stderr.splitlines() if line.startswith("NUMBA-LOADED=")]
    assert len(flags) == 1, r.stderr
    return flags[0] == "NUMBA-LOADED=True"


def test_one_image_predict_never_imports_numba(tmp_path):
    assert not predict_loads_numba(tmp_path, 1)


def test_predict_batch_larger_than_small_batch_uses_numba(tmp_path):
    assert predict_loads_numba(tmp_path, layers.SMALL_BATCH + 1)
