"""Inference passes cut into chunks of images, each chunk through every layer on one thread (engine.inference).

Logits must not depend on the thread count (bit for bit) and must agree with the layer-by-layer pass over the
whole batch and with the numpy twins' one-image passes; every returned array is the caller's own.
"""

import numpy as np
import pytest

from cnncli.engine import inference
from cnncli.engine.model import Model
from test_kernels import threads  # noqa: F401  (a fixture)


def _model_and_images(preset, shape, n, seed=3):
    model = Model(preset, shape, 10, seed=seed)
    model.layers[-1].params["weight"] *= 100  # logits of several units: differences would show
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return model, x


@pytest.mark.parametrize("preset, shape", [("m1", (1, 28, 28)), ("default", (3, 20, 20))])
def test_chunked_logits_are_bit_identical_for_any_thread_count(preset, shape, threads):
    model, x = _model_and_images(preset, shape, 9 * inference.CHUNK_IMAGES + 5)
    assert inference.chunk_count(len(x)) == 10
    outs = []
    for n in (1, 2, 3):
        threads(n)
        outs.append(model.forward(x).tobytes())
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("preset, shape", [("m1", (1, 28, 28)), ("default", (3, 20, 20))])
def test_chunked_logits_match_the_whole_batch_and_one_image_passes(preset, shape, threads):
    threads(2)
    model, x = _model_and_images(preset, shape, 2 * inference.CHUNK_IMAGES + 7)
    chunked = model.forward(x)
    whole = model._layers_forward(np.ascontiguousarray(x)).copy()  # every layer over all images at once
    singles = np.concatenate([model.forward(x[i:i + 1]) for i in range(len(x))])  # numpy twins
    scale = np.abs(whole).max()
    assert scale > 1
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(chunked, singles, rtol=0, atol=1e-5 * scale)


def test_returned_logits_are_not_reused_by_the_next_pass(threads):
    threads(2)
    model, x = _model_and_images("m1", (1, 28, 28), 40)
    first = model.forward(x)
    kept = first.copy()
    model.forward(x[::-1].copy())
    assert first.tobytes() == kept.tobytes()
    assert model.forward(x).tobytes() == kept.tobytes()


def test_chunks_depend_on_the_batch_size_only():
    # at most CHUNK_IMAGES (32) images per chunk; a batch of one chunk runs layer by layer
    assert [inference.chunk_count(n) for n in (9, 32, 33, 256, 257, 1000)] == [1, 1, 2, 8, 9, 32]


def test_predict_of_several_chunks_agrees_with_one_image_passes(tmp_path):
    """`cnncli predict` of 70 images (one batch, three chunks of images on the worker threads) against the same
    images in batches of one (numpy twins)."""
    from PIL import Image

    from cnncli.store import modelfile
    from test_fused import _predict_probs

    model = Model("m1", (1, 28, 28), 4, seed=1)
    model.layers[-1].params["weight"] *= 300  # spread the logits, so that probabilities show any difference
    path = tmp_path / "m.safetensors"
    modelfile.save(path, modelfile.Classifier(model, classes=list("abcd"), color="gray", mean=[0.5], std=[0.25]))
    rng = np.random.default_rng(0)
    images = []
    for i in range(70):
        images.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(images[-1])
    batched = _predict_probs(tmp_path, path, images)
    single = _predict_probs(tmp_path, path, images, "--batch-size", "1")
    assert batched.shape == (70, 4)
    assert batched.std(axis=1).mean() > 0.05  # not all uniform: the comparison can fail
    np.testing.assert_allclose(batched, single, atol=3e-6)


def test_small_dense_layers_run_inside_the_chunks_and_large_ones_on_the_whole_batch():
    # M1's dense weights (fc64 on 32x5x5: 200 KB) fit the chunks; the default preset's fc128 at 64x64x3 (2 MB)
    # does not, so its pass stops the chunks at the first dense layer
    m1 = Model("m1", (1, 28, 28), 10, seed=0)
    default = Model("default", (3, 64, 64), 10, seed=0)
    assert inference.chunk_stop(m1.layers) == len(m1.layers)
    first_dense = next(i for i, layer in enumerate(default.layers) if layer.token.startswith("fc"))
    assert inference.chunk_stop(default.layers) == first_dense
