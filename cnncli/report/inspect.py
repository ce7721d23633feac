"""What a trained network does with one image, in plain numpy (no numba: one image costs milliseconds):
the first convolution's filters, the feature maps after each conv / activation / pool layer, and a saliency
map for the predicted class (Grad-CAM on the last convolution with a spatial map, else the input gradient).

The forward pass runs the model's own layers (a one-image batch takes their numpy kernels); the backward pass
needed for saliency is written here in numpy, inference only, so the compiled training kernels never load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncli.engine import kernels_np
from cnncli.engine.layers import Activation, Conv, Dense, Dropout, MaxPool, softmax
from cnncli.engine.norm import BatchNorm, GlobalAvgPool


@dataclass
class Trace:
    """One image through the model: ``inputs[i]`` / ``outputs[i]`` are layer i's input and output
    (float32 (1, C, H, W) copies), ``argmax[i]`` a max-pool layer's winner indices, ``proba`` (K,)."""

    inputs: list
    outputs: list
    argmax: dict
    proba: np.ndarray


def trace(model, x) -> Trace:
    """Run ``x`` float32 (1, C, H, W), already normalised, through ``model`` keeping every layer's input and
    output (copies: layers reuse their buffers between calls)."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got {x.shape}")
    h = np.ascontiguousarray(x, dtype=np.float32)
    inputs, outputs, argmax = [], [], {}
    for i, layer in enumerate(model.layers):
        inputs.append(h)
        if isinstance(layer, MaxPool):  # the layer keeps no winners outside training: pool here, keeping them
            _, oh, ow = layer.output_shape(h.shape[1:])
            out = np.empty((1, h.shape[1], oh, ow), np.float32)
            argmax[i] = np.empty(out.shape, np.int32)
            kernels_np.maxpool_forward(h, layer.size, layer.stride, layer.padding, out, argmax[i])
        else:
            out = layer.forward(h, training=False)
        h = np.array(out, dtype=np.float32, copy=True)
        outputs.append(h)
    logits = h.reshape(1, -1)
    return Trace(inputs, outputs, argmax, softmax(logits)[0])


def _conv_input_grad(layer, x_shape, dy):
    """d(loss)/d(input) of a convolution: every filter tap spreads dy back over the (padded) input."""
    w = layer.params["weight"]
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    n, c, h, wd = x_shape
    _, _, oh, ow = dy.shape
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.float32)
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            dxp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += np.einsum(
                "nfhw,fc->nchw", dy, w[:, :, i, j])
    return dxp[:, :, ph:ph + h, pw:pw + wd]


def _pool_input_grad(x_shape, argmax, dy):
    """Each pooled value's gradient goes to the input position that won its window."""
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), np.float32)
    rows = np.repeat(np.arange(n * c), argmax[0, 0].size)
    np.add.at(dx, (rows, argmax.reshape(-1)), dy.reshape(-1))
    return dx.reshape(x_shape)


def input_grad(model, tr: Trace, i: int, dy):
    """Gradient with respect to layer i's input, given ``dy`` with respect to its output (float32, numpy)."""
    layer, x_shape = model.layers[i], tr.inputs[i].shape
    if isinstance(layer, Dense):
        return (dy.reshape(dy.shape[0], -1) @ layer.params["weight"]).reshape(x_shape)
    if isinstance(layer, Activation):
        y = tr.outputs[i]
        local = {"relu": lambda: (y > 0), "tanh": lambda: 1 - y * y, "sigmoid": lambda: y * (1 - y)}[layer.kind]()
        return dy * local
    if isinstance(layer, MaxPool):
        return _pool_input_grad(x_shape, tr.argmax[i], dy)
    if isinstance(layer, Conv):
        return _conv_input_grad(layer, x_shape, dy)
    if isinstance(layer, Dropout):
        return dy
    if isinstance(layer, BatchNorm):  # inference form: x * scale + shift per channel
        return dy * layer.scale_shift()[0][:, None, None]
    if isinstance(layer, GlobalAvgPool):  # every cell of a map gets an equal share
        return np.broadcast_to(dy / np.float32(x_shape[2] * x_shape[3]), x_shape).astype(np.float32)
    raise ValueError(f"no gradient for layer {layer.token}")


def grad_of_class(model, tr: Trace, cls: int, down_to: int):
    """d(logit[cls]) / d(output of layer ``down_to``); ``down_to`` = -1 means the input image."""
    d = np.zeros(tr.outputs[-1].shape, np.float32)
    d.reshape(-1)[cls] = 1.0
    for i in range(len(model.layers) - 1, down_to, -1):
        d = input_grad(model, tr, i, d)
    return d


def gradcam_layer(model) -> int | None:
    """Index of the layer whose maps Grad-CAM weighs: the last convolution with a map larger than 1x1
    (after its batch norm and activation, when they follow it); None when there is none."""
    for i in range(len(model.layers) - 1, -1, -1):
        layer, shape = model.layers[i], model.shapes[i]
        if isinstance(layer, Conv) and shape[1] * shape[2] > 1:
            j = i + 1 if i + 1 < len(model.layers) and isinstance(model.layers[i + 1], BatchNorm) else i
            nxt = model.layers[j + 1] if j + 1 < len(model.layers) else None
            return j + 1 if isinstance(nxt, Activation) else j
    return None


def _resize(heat, size_hw):
    from PIL import Image

    img = Image.fromarray(heat.astype(np.float32), mode="F").resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    return np.asarray(img, np.float32)


def saliency(model, tr: Trace, cls: int | None = None) -> dict:
    """Where the image made the model decide ``cls`` (default: the predicted class).

    Returns {"method": "grad-cam" | "gradient", "layer": index or None, "class": cls, "heat": float32 (H, W)
    in [0, 1] at the input size}. Grad-CAM: the target maps A (C, h, w) weighted by the spatial mean of
    d logit / dA, summed, negative parts dropped, resized bilinearly. Gradient: the largest absolute input
    gradient over the channels.
    """
    cls = int(np.argmax(tr.proba)) if cls is None else int(cls)
    size = tr.inputs[0].shape[2:]
    t = gradcam_layer(model)
    if t is not None:
        a = tr.outputs[t][0]
        g = grad_of_class(model, tr, cls, t)[0]
        cam = np.maximum((g.mean(axis=(1, 2))[:, None, None] * a).sum(axis=0), 0)
        heat, method = _resize(cam, size), "grad-cam"
    else:
        heat, method = np.abs(grad_of_class(model, tr, cls, -1)[0]).max(axis=0), "gradient"
    top = float(heat.max())
    heat = heat / top if top > 0 else np.zeros_like(heat)
    return {"method": method, "layer": t, "class": cls, "heat": heat.astype(np.float32)}


def shown_layers(model) -> list[int]:
    """Layers whose outputs are drawn as feature maps: conv, activation and pool layers with a map larger
    than 1x1 (after a dense layer every map is 1x1)."""
    return [i for i, (layer, s) in enumerate(zip(model.layers, model.shapes))
            if isinstance(layer, (Conv, Activation, MaxPool)) and s[1] * s[2] > 1]


def first_conv(model) -> int | None:
    """Index of the first convolution, or None."""
    return next((i for i, layer in enumerate(model.layers) if isinstance(layer, Conv)), None)
