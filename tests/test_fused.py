"""The fused inference pass conv + bias + ReLU + 2 x 2 max pooling (kernels.fused and its numpy twin).

Checked against the plain loops of tests/naive.py (convolution, then ReLU, then pooling), between the numba and
numpy versions, for any thread count, and through the real `cnncli predict` command, whose batches of more than
SMALL_BATCH images take the fused numba kernels and whose one-image batches take the numpy twins.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import naive
from cnncli.engine import kernels, kernels_np
from cnncli.engine.model import Model
from cnncli.store import modelfile
from test_kernels import case_arrays, threads, tol  # noqa: F401  (threads is a fixture)

# (N, C, H, W, F, KH, KW, stride, padding) and the path each takes in the numba kernels.
FUSED_CASES = [
    ((3, 1, 12, 12, 4, 3, 3, (1, 1), (0, 0)), "direct 3x3, one channel"),
    ((2, 3, 9, 8, 5, 3, 3, (1, 1), (1, 1)), "direct 3x3, three channels, padding, odd output"),
    ((2, 2, 9, 7, 3, 5, 3, (1, 1), (2, 1)), "direct, non-square 5x3 filter"),
    ((2, 6, 11, 11, 4, 3, 3, (1, 1), (0, 0)), "Winograd, odd output 9x9"),
    ((11, 8, 8, 10, 6, 3, 3, (1, 1), (1, 1)), "Winograd, more images than chunks"),
    ((2, 5, 17, 20, 3, 3, 3, (1, 1), (1, 1)), "Winograd, wide rows (10 tiles), odd output height"),
    ((1, 4, 20, 19, 2, 3, 3, (1, 1), (0, 0)), "Winograd, wide rows, no padding, odd output width"),
    ((2, 5, 9, 9, 3, 3, 3, (2, 2), (1, 1)), "stride 2: unfused fallback"),
    ((2, 4, 7, 7, 3, 1, 1, (1, 1), (0, 0)), "1x1 filter, 4 channels: unfused fallback"),
]


def arrays(case, dtype, seed=0):
    return case_arrays(case, dtype, seed)


def fused(mod, x, w, b, stride, padding):
    oh = naive.out_size(x.shape[2], w.shape[2], stride[0], padding[0])
    ow = naive.out_size(x.shape[3], w.shape[3], stride[1], padding[1])
    out = np.full((x.shape[0], w.shape[0], oh // 2, ow // 2), np.nan, x.dtype)  # NaN: every element written
    mod.conv2d_relu_pool2(x, w, b, stride, padding, out)
    return out


def reference(x, w, b, stride, padding):
    conv = naive.conv_forward(x, w, b, stride, padding)
    return naive.maxpool_forward(np.maximum(conv, 0), (2, 2), (2, 2))[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [c for c, _ in FUSED_CASES], ids=[name for _, name in FUSED_CASES])
def test_fused_pass_matches_conv_relu_pool_loops(case, dtype):
    x, w, b, stride, padding = arrays(case, dtype)
    ref = reference(x, w, b, stride, padding)
    for mod in (kernels, kernels_np):
        out = fused(mod, x, w, b, stride, padding)
        assert out.dtype == dtype
        np.testing.assert_allclose(out, ref, **tol(dtype))


def test_fused_pass_treats_nan_as_relu_then_pooling_does():
    # ReLU turns NaN into 0 before pooling, so a window with a NaN and a positive value gives the positive value.
    x, w, b, stride, padding = arrays(FUSED_CASES[1][0], np.float32)
    x[0, :, 2:4, 3:5] = np.nan
    unfused = np.empty((x.shape[0], w.shape[0], 9, 8), np.float32)
    kernels.conv2d_forward(x, w, b, stride, padding, unfused, relu=True)
    pooled = np.empty((x.shape[0], w.shape[0], 4, 4), np.float32)
    kernels.maxpool_forward(unfused, (2, 2), (2, 2), (0, 0), pooled)
    assert np.isnan(naive.conv_forward(x, w, b, stride, padding)).any()  # NaN really reaches the convolution
    for mod in (kernels, kernels_np):
        out = fused(mod, x, w, b, stride, padding)
        assert not np.isnan(out).any()
        np.testing.assert_allclose(out, pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [FUSED_CASES[1][0], FUSED_CASES[4][0]], ids=["direct", "winograd"])
def test_fused_pass_is_bit_identical_for_any_thread_count(case, threads):
    x, w, b, stride, padding = arrays(case, np.float32, seed=4)
    outs = []
    for n in (1, 2, 3):
        threads(n)
        outs.append(fused(kernels, x, w, b, stride, padding).tobytes())
    assert outs[0] == outs[1] == outs[2]


def test_fused_pass_rejects_a_wrong_output_shape():
    x, w, b, stride, padding = arrays(FUSED_CASES[0][0], np.float32)
    with pytest.raises(ValueError, match="out"):
        kernels.conv2d_relu_pool2(x, w, b, stride, padding, np.empty((3, 4, 6, 6), np.float32))


def _predict_probs(tmp_path, model_path, images, *extra):
    r = subprocess.run([sys.executable, "-m", "cnncli", "predict", *images, "-m", str(model_path), "--format",
                        "jsonl", "--all-probs", *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c"),
                            "PYTHONPATH": ":".join(sys.path)})
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return np.array([[row["probabilities"][k] for k in sorted(row["probabilities"])] for row in rows])


@pytest.mark.parametrize("preset, color, size", [("m1", "gray", 28), ("default", "rgb", 20)])
def test_predict_batches_agree_with_one_image_passes(tmp_path, preset, color, size):
    """12 images in one batch (numba, fused conv-relu-pool) and in batches of 1 (numpy twins) agree."""
    channels = 1 if color == "gray" else 3
    model = Model(preset, (channels, size, size), 4, seed=1)
    model.layers[-1].params["weight"] *= 300  # spread the logits, so that probabilities show any difference
    path = tmp_path / "m.safetensors"
    modelfile.save(path, modelfile.Classifier(model, classes=list("abcd"), color=color, mean=[0.5] * channels,
                                              std=[0.25] * channels))
    rng = np.random.default_rng(0)
    images = []
    for i in range(12):
        images.append(str(tmp_path / f"img{i}.png"))
        shape = (size, size) if channels == 1 else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(images[-1])
    batched = _predict_probs(tmp_path, path, images)
    single = _predict_probs(tmp_path, path, images, "--batch-size", "1")
    assert batched.shape == (12, 4)
    assert batched.std(axis=1).mean() > 0.05  # not all uniform: the comparison can fail
    np.testing.assert_allclose(batched, single, atol=3e-6)


@pytest.mark.parametrize("case", [c for c, _ in FUSED_CASES], ids=[name for _, name in FUSED_CASES])
def test_fused_pass_equals_the_unfused_kernels_bit_for_bit(case):
    x, w, b, stride, padding = arrays(case, np.float32, seed=2)
    oh = naive.out_size(x.shape[2], w.shape[2], stride[0], padding[0])
    ow = naive.out_size(x.shape[3], w.shape[3], stride[1], padding[1])
    conv = np.empty((x.shape[0], w.shape[0], oh, ow), np.float32)
    kernels.conv2d_forward(x, w, b, stride, padding, conv, relu=True)
    pooled = np.empty((x.shape[0], w.shape[0], oh // 2, ow // 2), np.float32)
    kernels.maxpool_forward(conv, (2, 2), (2, 2), (0, 0), pooled)
    assert fused(kernels, x, w, b, stride, padding).tobytes() == pooled.tobytes()



@pytest.mark.parametrize("case", [FUSED_CASES[0][0], FUSED_CASES[4][0], FUSED_CASES[5][0]],
                         ids=["direct", "winograd", "winograd wide rows"])
def test_a_chunk_of_a_whole_pass_computes_what_the_split_kernel_does(case):
    """Inside a chunked inference pass (threads.run_whole) the fused kernel runs its sub-chunks in one compiled
    call: the values are those of the kernel split across threads, bit for bit."""
    x, w, b, stride, padding = arrays(case, np.float32, seed=5)
    x = np.concatenate([x] * 6)  # more images than the Winograd sub-chunk size
    split = fused(kernels, x, w, b, stride, padding)
    whole = [None]

    def one_chunk(lo, hi):
        assert kernels.threads.in_whole_chunk()
        whole[0] = fused(kernels, x[lo:hi], w, b, stride, padding)

    kernels.run_whole(one_chunk, len(x), 1)
    assert not kernels.threads.in_whole_chunk()
    assert whole[0].tobytes() == split.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_dense_kernel_matches_plain_loops(dtype, relu):
    rng = np.random.default_rng(7)
    x2, w, b = (rng.standard_normal(s).astype(dtype) for s in ((37, 50), (13, 50), (13,)))
    x2[3, 4] = np.nan  # row 3 becomes NaN: ReLU turns it into 0, as the activation kernels do
    out = np.full((37, 13), -7, dtype)
    kernels.dense_forward(x2, w, b, out, relu)
    ref = np.array([[sum(float(x2[n, k]) * float(w[u, k]) for k in range(50)) + float(b[u]) for u in range(13)]
                    for n in range(37)])
    if relu:
        ref = np.where(ref > 0, ref, 0.0)  # NaN > 0 is False: NaN -> 0
    assert np.isnan(ref).any() != relu
    np.testing.assert_allclose(out, ref, **tol(dtype))


def test_dense_kernel_rejects_mismatched_arrays():
    x2, w, b = np.zeros((4, 6), np.float32), np.zeros((3, 6), np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="out"):
        kernels.dense_forward(x2, w, b, np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="w"):
        kernels.dense_forward(x2, np.zeros((3, 5), np.float32), b, np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="x2"):
        kernels.dense_forward(x2.T, w, b, np.empty((4, 3), np.float32))
