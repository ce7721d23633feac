"""The model: the article's shape facts, spec parsing, whole-model gradient check, state dicts and seeding."""

import numpy as np
import pytest

import naive
from cnncli.errors import SpecError
from cnncli.engine.layers import Activation, Conv, Dense, Dropout, MaxPool, softmax_cross_entropy
from cnncli.engine.model import MAX_LAYERS, MAX_SPEC_LENGTH, PRESETS, Model, canonical_spec, parse_spec
from gradcheck import numerical_gradient, rel_error


def to_float64(model):
    for layer in model.layers:
        layer.params = {k: np.ascontiguousarray(v, np.float64) for k, v in layer.params.items()}
    return model


def image(shape, seed=0, n=1):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


# ---- the article's facts -------------------------------------------------------------------------------


@pytest.mark.parametrize("filters", [2, 3])
def test_6x6x3_image_with_3x3x3_filters_gives_4x4_map_with_one_channel_per_filter(filters):
    model = Model(f"conv{filters}k3", (3, 6, 6), 2)
    conv = model.layers[0]
    assert conv.params["weight"].shape == (filters, 3, 3, 3)  # each filter spans the full depth of 3
    assert model.shapes[0] == (filters, 4, 4)
    out = conv.forward(image((3, 6, 6)))
    assert out.shape == (1, filters, 4, 4)


# (W - F + 2P)/S + 1 on a 10 x 10 input, for choices where the division is exact:
OUTPUT_SIZE_CASES = [  # (F, P, S, expected side)
    (3, 0, 1, 8),
    (3, 1, 1, 10),  # 'same' padding
    (5, 2, 1, 10),
    (1, 0, 1, 10),
    (10, 0, 1, 1),  # filter as large as the image
    (2, 0, 2, 5),
    (4, 0, 2, 4),
    (4, 1, 2, 5),
    (6, 2, 2, 5),
    (4, 0, 3, 3),
]


@pytest.mark.parametrize("f,p,s,expected", OUTPUT_SIZE_CASES)
def test_output_size_formula_on_10x10(f, p, s, expected):
    assert (10 - f + 2 * p) % s == 0, "the case must divide exactly"
    assert (10 - f + 2 * p) // s + 1 == expected
    spec = f"conv4k{f}s{s}p{p}"
    model = Model(spec, (3, 10, 10), 2)
    assert model.shapes[0] == (4, expected, expected)
    assert model.layers[0].forward(image((3, 10, 10))).shape == (1, 4, expected, expected)


def test_output_size_rounds_down_when_the_stride_does_not_divide():
    # F=3, P=0, S=2 on 10 px: (10 - 3)/2 + 1 = 4.5 -> 4 (the last column of the input is never a window's start).
    model = Model("conv4k3s2", (1, 10, 10), 2)
    assert model.shapes[0] == (4, 4, 4)


@pytest.mark.parametrize("shape", [(2, 8, 8), (5, 28, 28), (3, 8, 6), (1, 7, 9)])
def test_2x2_max_pooling_at_stride_2_halves_height_and_width_and_keeps_depth(shape):
    model = Model("pool2", shape, 2)
    c, h, w = shape
    assert model.shapes[0] == (c, h // 2, w // 2)
    x = image(shape, n=2)
    out = model.layers[0].forward(x)
    assert out.shape == (2, c, h // 2, w // 2)
    # Each output is the max of its 2x2 block (odd trailing rows/columns are dropped).
    blocks = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(2, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(out, blocks)


@pytest.mark.parametrize("channels", [3, 5])  # direct and im2col convolution
@pytest.mark.parametrize("axis", [2, 3])
def test_translation_equivariance(channels, axis):
    rng = np.random.default_rng(axis)
    conv = Conv(4, (3, 3))
    conv.init((channels, 10, 10), rng)
    x = image((channels, 10, 10), seed=channels)
    shifted = np.zeros_like(x)
    src = [slice(None)] * 4
    dst = [slice(None)] * 4
    src[axis], dst[axis] = slice(0, -1), slice(1, None)
    shifted[tuple(dst)] = x[tuple(src)]  # the whole image moves by one pixel (down or right)
    out = conv.forward(x).copy()  # a layer's output is valid until its next forward
    out_shifted = conv.forward(shifted)
    # Away from the border the feature map moves by exactly the same pixel.
    np.testing.assert_allclose(out_shifted[tuple(dst)], out[tuple(src)], rtol=1e-5, atol=1e-6)
    # The border that saw the zero fill differs: the check above is not vacuous.
    first = [slice(None)] * 4
    first[axis] = 0
    assert not np.allclose(out_shifted[tuple(first)], out[tuple(first)])


# ---- spec parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_parse_to_their_spec(name):
    assert canonical_spec(name) == canonical_spec(PRESETS[name])
    assert canonical_spec(name.upper()) == canonical_spec(name)
    assert [type(layer) for layer in parse_spec(name)] == [type(layer) for layer in parse_spec(PRESETS[name])]
    Model(name, (1, 28, 28), 3)  # every preset fits the benchmark's 28 x 28 gray input


SPECS = [
    "conv8k3-relu-pool2-fc",
    "conv16k5x3s2x1p2x1-tanh-maxpool3s2p1-dense64-sigmoid-dropout0.25-fc",
    "conv4k1-pool2x3s1x2-fc10-relu-fc",
    "conv-relu-drop0-fc",
    "fc",
]


@pytest.mark.parametrize("spec", SPECS)
def test_canonical_spec_round_trip(spec):
    canon = canonical_spec(spec)
    assert canonical_spec(canon) == canon
    a, b = parse_spec(spec), parse_spec(canon)
    assert [layer.token for layer in a] == [layer.token for layer in b] == canon.split("-")
    assert [vars(layer) | {"rng": None} for layer in a] == [vars(layer) | {"rng": None} for layer in b]


def test_canonical_spelling_drops_redundant_parts():
    assert canonical_spec("conv16k3x3s1x1p0x0-maxpool2s2") == "conv16k3-pool2-fc"
    assert canonical_spec("CONV16K3S2X1P1") == "conv16k3s2x1p1-fc"


@pytest.mark.parametrize("spec", [
    "conv8k3-relu-pool2-fc",
    "conv8k3,relu,pool2,fc",
    "conv8k3 >> relu >> pool2 >> fc",
    "conv8k3>>relu>>pool2>>fc",
    "conv8k3 relu  pool2 fc",
    " conv8k3 , relu - pool2>>fc ",
    "conv8k3-relu-pool2",  # the output fc is appended
])
def test_separators(spec):
    assert canonical_spec(spec) == "conv8k3-relu-pool2-fc"


def test_bare_tokens_get_defaults():
    layers = parse_spec("conv-relu-fc-drop-fc")
    conv, _, dense, drop, out = layers
    assert isinstance(conv, Conv) and conv.filters == 32 and conv.kernel is None  # sized by shape inference
    assert conv.stride == (1, 1) and conv.padding == (0, 0)
    built = Model("conv-relu-fc-conv-fc", (1, 8, 8), 2)
    assert built.layers[0].kernel == (3, 3)  # 3x3 where it fits
    assert built.layers[3].kernel == (1, 1)  # shrunk to the 1x1 map after a dense layer
    assert built.spec == "conv32k3-relu-fc128-conv32k1-fc"
    assert isinstance(dense, Dense) and dense.units == 128  # a bare fc that is not last
    assert isinstance(drop, Dropout) and drop.rate == 0.5
    assert isinstance(out, Dense) and out.units is None  # the output layer, sized by the class count


@pytest.mark.parametrize("token", ["pool", "maxpool"])
def test_bare_pool_means_pool2(token):
    (pool, _) = parse_spec(token)
    assert isinstance(pool, MaxPool) and pool.size == (2, 2) and pool.stride == (2, 2)


def test_the_articles_spec_builds_and_runs_on_28x28x1():
    spec = "conv >> relu >> pool >> conv >> pool >> fc >> conv >> fc"
    model = Model(spec, (1, 28, 28), 10)
    assert [type(layer) for layer in model.layers] == [Conv, Activation, MaxPool, Conv, MaxPool, Dense, Conv, Dense]
    logits = model.forward(image((1, 28, 28), n=3))
    assert logits.shape == (3, 10) and np.isfinite(logits).all()


def test_a_spec_shaped_like_the_articles_builds_and_runs_on_28x28x1():
    # The article's sequence with the pool size spelled out and a 1x1 conv after the dense layer.
    spec = "conv >> relu >> pool2 >> conv >> pool2 >> fc >> conv8k1 >> fc"
    model = Model(spec, (1, 28, 28), 10)
    assert [type(layer) for layer in model.layers] == [Conv, Activation, MaxPool, Conv, MaxPool, Dense, Conv, Dense]
    assert model.shapes == [(32, 26, 26), (32, 26, 26), (32, 13, 13), (32, 11, 11), (32, 5, 5),
                            (128, 1, 1), (8, 1, 1), (10, 1, 1)]
    logits = model.forward(image((1, 28, 28), n=3))
    assert logits.shape == (3, 10) and np.isfinite(logits).all()


@pytest.mark.parametrize("spec,token", [
    ("conv8k3-banana-fc", "banana"),
    ("conv8k3-relu6-fc", "relu6"),
    ("conv8q3", "conv8q3"),
    ("conv0k3", "conv0k3"),  # zero filters
    ("conv8k0", "conv8k0"),  # zero-sized filter
    ("conv8k3s0", "conv8k3s0"),  # zero stride
    ("conv99999999k3", "conv99999999k3"),
    ("pool0", "pool0"),
    ("fc0", "fc0"),
    ("drop1.5", "drop1.5"),
    ("drop-0.5", "0.5"),  # '-' separates: "0.5" alone is no layer
])
def test_bad_tokens_raise_spec_error_naming_the_token(spec, token):
    with pytest.raises(SpecError, match=token.replace(".", r"\.")) as info:
        parse_spec(spec)
    assert "\n" not in str(info.value)


SEPARATORS_ONLY = ()


@pytest.mark.parametrize("spec", ["", "   ", None, pytest.param("-", marks=SEPARATORS_ONLY),
                                  pytest.param(", >> -", marks=SEPARATORS_ONLY)])
def test_empty_specs_are_refused(spec):
    with pytest.raises(SpecError):
        parse_spec(spec)


def test_too_long_specs_are_refused():
    with pytest.raises(SpecError, match=str(MAX_SPEC_LENGTH)):
        parse_spec("relu-" * (MAX_SPEC_LENGTH // 5 + 1))
    with pytest.raises(SpecError, match=str(MAX_LAYERS)):
        parse_spec("-".join(["relu"] * (MAX_LAYERS + 1)))
    assert len(parse_spec("-".join(["relu"] * (MAX_LAYERS - 1)))) == MAX_LAYERS


@pytest.mark.parametrize("spec,shape,layer,sizes", [
    ("conv8k5", (1, 3, 3), "layer 1 conv8k5", ["5x5", "3x3"]),
    ("conv8k3-relu-pool2-conv8k5", (1, 10, 10), "layer 4 conv8k5", ["5x5", "4x4"]),
    ("pool4", (2, 3, 8), "layer 1 pool4", ["4x4", "3x8"]),
    ("conv4k2x9", (1, 9, 8), "layer 1 conv4k2x9", ["2x9", "9x8"]),
])
def test_a_spec_that_does_not_fit_the_input_names_layer_and_shapes(spec, shape, layer, sizes):
    with pytest.raises(SpecError) as info:
        Model(spec, shape, 2)
    msg = str(info.value)
    assert layer in msg
    for s in sizes:
        assert s in msg


def test_wrong_input_shape_and_too_few_classes_are_refused():
    model = Model("tiny", (1, 8, 8), 2)
    with pytest.raises(ValueError):
        model.forward(image((1, 8, 9)))
    with pytest.raises(SpecError):
        Model("tiny", (1, 8, 8), 1)


# ---- whole-model gradient, state dicts, seeding --------------------------------------------------------


def test_whole_model_gradient_check_in_float64():
    spec = "conv4k3p1-relu-pool2-conv5k2s1x2p1-tanh-pool3s1p1-fc6-sigmoid-fc"
    model = to_float64(Model(spec, (2, 8, 7), 3, seed=1))
    for layer in model.layers:
        if "bias" in layer.params:
            layer.params["bias"] += 0.1 * np.random.default_rng(2).standard_normal(layer.params["bias"].shape)
    # The output layer starts near zero (stable first steps), which would leave earlier gradients below the
    # check's resolution: give it ordinary-sized weights for the check.
    out = model.layers[-1].params
    out["weight"] = 0.5 * np.random.default_rng(4).standard_normal(out["weight"].shape)
    x = np.random.default_rng(3).standard_normal((3, 2, 8, 7))
    labels = np.array([0, 2, 1])
    weights = [1.0, 0.5, 2.0]
    loss, logits = model.loss_and_grads(x, labels, weights)
    assert logits.dtype == np.float64
    assert loss == pytest.approx(naive.softmax_cross_entropy(logits, labels, weights)[0], rel=1e-12)
    grads = dict(model.named("grads"))
    assert set(grads) == set(dict(model.named()))
    assert len(grads) == 8
    for name, p in model.named():
        numeric = numerical_gradient(lambda: softmax_cross_entropy(model.forward(x), labels, weights)[0], p)
        err = rel_error(grads[name], numeric)
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


def test_state_dict_round_trip():
    a = Model("m1", (1, 28, 28), 4, seed=0)
    b = Model("m1", (1, 28, 28), 4, seed=1)
    x = image((1, 28, 28), n=2)
    assert not np.array_equal(a.forward(x), b.forward(x))
    state = a.state_dict()
    assert all(v.dtype == np.float32 for v in state.values())
    assert sorted(state) == sorted(a.expected_shapes())
    b.load_state_dict(state)
    assert a.forward(x).tobytes() == b.forward(x).tobytes()
    # state_dict returns copies: changing them does not change the model they came from.
    before = a.forward(x)
    for v in a.state_dict().values():
        v += 1.0
    assert a.forward(x).tobytes() == before.tobytes()


def test_load_state_dict_does_not_alias_the_callers_arrays():
    a = Model("tiny", (1, 8, 8), 2, seed=0)
    state = a.state_dict()
    b = Model("tiny", (1, 8, 8), 2, seed=1)
    b.load_state_dict(state)
    for _, p in b.named():
        p -= 1.0  # what an optimizer step does
    for name, v in a.state_dict().items():
        np.testing.assert_array_equal(state[name], v)


def test_load_state_dict_refuses_missing_extra_and_misshaped_tensors():
    model = Model("tiny", (1, 8, 8), 3, seed=0)
    good = model.state_dict()
    reference = model.forward(image((1, 8, 8)))

    missing = dict(good)
    del missing["layers.0.bias"]
    with pytest.raises(SpecError, match=r"missing: layers\.0\.bias"):
        model.load_state_dict(missing)

    extra = dict(good, **{"layers.9.weight": np.zeros(3, np.float32)})
    with pytest.raises(SpecError, match=r"unexpected: layers\.9\.weight"):
        model.load_state_dict(extra)

    bad = dict(good, **{"layers.3.weight": np.zeros((3, 7), np.float32)})
    with pytest.raises(SpecError, match=r"layers\.3\.weight.*\(3, 7\)"):
        model.load_state_dict(bad)

    transposed = dict(good, **{"layers.3.weight": good["layers.3.weight"].T.copy()})
    with pytest.raises(SpecError, match=r"layers\.3\.weight"):
        model.load_state_dict(transposed)
    # A refused load leaves the model as it was.
    assert model.forward(image((1, 8, 8))).tobytes() == reference.tobytes()


def test_seeded_init_is_reproducible_and_seeds_differ():
    a = Model("m1", (1, 28, 28), 3, seed=7).state_dict()
    b = Model("m1", (1, 28, 28), 3, seed=7).state_dict()
    c = Model("m1", (1, 28, 28), 3, seed=8).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes()
        if name.endswith("weight"):
            assert not np.array_equal(a[name], c[name]), name
            assert np.all(np.isfinite(a[name])) and a[name].std() > 0
        else:
            assert not a[name].any()  # biases start at zero


def test_summary_and_parameter_count():
    model = Model("conv2k3-relu-pool2-fc", (3, 6, 6), 4)
    rows = model.summary()
    assert [r[0] for r in rows] == ["conv2k3", "relu", "pool2", "fc4"]  # the output layer has one unit per class
    assert [r[1] for r in rows] == [(2, 4, 4), (2, 4, 4), (2, 2, 2), (4, 1, 1)]
    assert [r[2] for r in rows] == [2 * 3 * 3 * 3 + 2, 0, 0, 4 * 8 + 4]
    assert model.num_params() == sum(r[2] for r in rows)


@pytest.mark.parametrize("n", [3, 12])  # the numpy twins (small batches) and the numba kernels
@pytest.mark.parametrize("spec", ["conv4k3-relu-pool2-conv6k3p1-relu-fc", "conv5k3s2-relu-conv4-relu-fc"])
def test_inference_fuses_conv_and_relu_with_the_same_results(spec, n):
    model = Model(spec, (3, 12, 12), 4, seed=1)
    x = image((3, 12, 12), n=n, seed=2)
    h = x
    for layer in model.layers:  # layer by layer, no fusion
        h = layer.forward(h).copy()
    np.testing.assert_array_equal(model.forward(x), h.reshape(n, 4))
