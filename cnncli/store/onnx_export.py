"""A trained classifier as an ONNX graph, built with the `onnx` package's helpers (optional: `cnncli[onnx]`).

The graph computes exactly what `Classifier.proba` computes: the layers in spec order, then softmax.
Input `input`: float32 (N, C, H, W), normalised as the weight file's `preprocess` says; with
`with_preprocess`, `image`: uint8 (N, H, W, C) already resized (the graph casts, scales by 1/255 and
subtracts mean / divides by std itself). Output `probabilities`: float32 (N, K). The classes, input size,
colour, resize rule, normalisation and threshold go into the model's metadata_props as JSON strings.
"""

from __future__ import annotations

import json

import numpy as np

from cnncli import __version__
from cnncli.engine.layers import Activation, Conv, Dense, Dropout, MaxPool
from cnncli.engine.norm import EPS, MOMENTUM, BatchNorm, GlobalAvgPool
from cnncli.errors import UsageError

OPSET = 17
INSTALL_HINT = "pip install 'cnncli[onnx]' (or: pip install onnx)"
_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def require_onnx():
    """The onnx module; UsageError (exit 2) saying how to install it when it is missing."""
    try:
        import onnx
    except ImportError:
        raise UsageError(f"export needs the onnx package, which is not installed: {INSTALL_HINT}") from None
    return onnx


class _Graph:
    """Nodes and initializers being collected, with fresh tensor names."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.inits = onnx, [], []

    def const(self, name, array):
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def _preprocess(g, clf, x):
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W), the same one multiply-add as images.normalize:
    x * (1 / (255 std)) + (-mean / std), constants rounded to float32 exactly as there."""
    c = clf.channels
    mean = np.asarray(clf.mean, np.float64)
    std = np.asarray(clf.std, np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(1, c, 1, 1)
    bias = (-mean / std).astype(np.float32).reshape(1, c, 1, 1)
    x = g.node("Cast", [x], "pixels_float", to=g.onnx.TensorProto.FLOAT)
    x = g.node("Transpose", [x], "pixels_nchw", perm=[0, 3, 1, 2])
    x = g.node("Mul", [x, g.const("pre_scale", scale)], "pixels_scaled")
    return g.node("Add", [x, g.const("pre_bias", bias)], "normalised")


def _batch_norm(g, i, layer, x):
    """A bn that does not follow a conv or dense layer (those are folded): BatchNormalization, eval mode."""
    names = [g.const(f"layers.{i}.{k}", layer.params[k]) for k in ("weight", "bias")]
    names += [g.const(f"layers.{i}.{k}", layer.buffers[k]) for k in ("running_mean", "running_var")]
    return g.node("BatchNormalization", [x, *names], f"l{i}_bn", epsilon=EPS, momentum=1.0 - MOMENTUM)


def _layer(g, i, layer, x, rank, params=None):
    """Append layer i's nodes after tensor x of rank 4 (N, C, H, W) or 2 (N, units); returns (tensor, rank).
    params: the conv or dense weights to use instead of layer.params (a following bn folded in)."""
    if isinstance(layer, Dropout):  # inference: identity
        return x, rank
    if isinstance(layer, BatchNorm):  # ONNX's BatchNormalization takes (N, C) and (N, C, H, W) alike
        return _batch_norm(g, i, layer, x), rank
    if isinstance(layer, GlobalAvgPool) and rank == 4:  # (N, C, 1, 1), as cnncli's layer; Gemm flattens it
        return g.node("GlobalAveragePool", [x], f"l{i}_gap"), 4
    if isinstance(layer, GlobalAvgPool):  # after a dense layer: the mean of a 1x1 map is the value itself
        return x, rank
    if isinstance(layer, (Conv, MaxPool)) and rank == 2:  # a dense output seen as a 1x1 map, as in layers.py
        x = g.node("Reshape", [x, g.const(f"l{i}_shape", np.array([0, -1, 1, 1], np.int64))], f"l{i}_as_map")
    params = params or getattr(layer, "params", {})
    if isinstance(layer, Conv):
        (ph, pw) = layer.padding
        return g.node("Conv", [x, g.const(f"layers.{i}.weight", params["weight"]),
                               g.const(f"layers.{i}.bias", params["bias"])], f"l{i}_{layer.token}",
                      kernel_shape=list(layer.kernel), strides=list(layer.stride), pads=[ph, pw, ph, pw]), 4
    if isinstance(layer, MaxPool):
        (ph, pw) = layer.padding
        # ONNX MaxPool ignores padded cells (they never win), as cnncli's -inf padding does; floor rounding.
        return g.node("MaxPool", [x], f"l{i}_{layer.token}", kernel_shape=list(layer.size),
                      strides=list(layer.stride), pads=[ph, pw, ph, pw]), 4
    if isinstance(layer, Activation) and layer.kind in _ACTIVATIONS:
        return g.node(_ACTIVATIONS[layer.kind], [x], f"l{i}_{layer.token}"), rank
    if isinstance(layer, Dense):
        if rank != 2:
            x = g.node("Flatten", [x], f"l{i}_flat", axis=1)  # (N, C*H*W) in C, H, W order, as Dense flattens
        return g.node("Gemm", [x, g.const(f"layers.{i}.weight", params["weight"]),
                               g.const(f"layers.{i}.bias", params["bias"])], f"l{i}_{layer.token}",
                      transB=1), 2
    raise UsageError(f"export: layer {i + 1} '{layer.token}' ({type(layer).__name__}) has no ONNX translation")


def metadata(clf, with_preprocess: bool) -> dict:
    """{key: string} for metadata_props: what a server needs to feed the graph the way cnncli does."""
    c, h, w = clf.model.input_shape
    layout = "uint8 NHWC, resized, not normalised" if with_preprocess else "float32 NCHW, normalised"
    props = {
        "cnncli_format": "cnncli-onnx",
        "cnncli_version": __version__,
        "arch": clf.model.spec,
        "classes": clf.classes,
        "input": {"channels": c, "height": h, "width": w, "color": clf.color, "layout": layout},
        "resize": "shorter-side-then-center-crop",
        "preprocess": {"scale": 1 / 255, "mean": list(clf.mean), "std": list(clf.std),
                       "alpha_background": "white", "exif_transpose": True, "in_graph": with_preprocess},
        "threshold": clf.threshold,
        "positive_class": clf.classes[1] if len(clf.classes) == 2 else None,
    }
    return {k: json.dumps(v) for k, v in props.items()}


def build(clf, with_preprocess: bool = False):
    """The onnx.ModelProto for ``clf`` (a modelfile.Classifier), checked by onnx.checker.

    Raises UsageError when onnx is not installed or a layer has no ONNX translation (naming it).
    """
    onnx = require_onnx()
    helper, TP = onnx.helper, onnx.TensorProto
    g = _Graph(onnx)
    c, h, w = clf.model.input_shape
    if with_preprocess:
        inp = helper.make_tensor_value_info("image", TP.UINT8, ["N", h, w, c])
        x = _preprocess(g, clf, "image")
    else:
        inp = helper.make_tensor_value_info("input", TP.FLOAT, ["N", c, h, w])
        x = "input"
    rank, layers, i = 4, clf.model.layers, 0
    while i < len(layers):
        # A bn right after a conv or dense layer goes into its weights, as cnncli's own inference does.
        if isinstance(layers[i], (Conv, Dense)) and i + 1 < len(layers) and isinstance(layers[i + 1], BatchNorm):
            x, rank = _layer(g, i, layers[i], x, rank, layers[i + 1].fold(layers[i].params))
            i += 2
            continue
        x, rank = _layer(g, i, layers[i], x, rank)
        i += 1
    if rank != 2:
        x = g.node("Flatten", [x], "logits", axis=1)
    g.node("Softmax", [x], "probabilities", axis=1)
    out = helper.make_tensor_value_info("probabilities", TP.FLOAT, ["N", len(clf.classes)])
    graph = helper.make_graph(g.nodes, "cnncli", [inp], [out], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cnncli",
                              producer_version=__version__, doc_string=f"cnncli classifier {clf.model.spec}")
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime releases from 1.14 on
    helper.set_model_props(model, metadata(clf, with_preprocess))
    onnx.checker.check_model(model)
    return model


def to_bytes(clf, with_preprocess: bool = False) -> bytes:
    """The serialised ONNX model (see ``build``)."""
    return build(clf, with_preprocess).SerializeToString()
