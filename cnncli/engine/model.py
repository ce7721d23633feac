"""Architecture specs, presets and the Model: a stack of layers with shape inference.

A spec is one line a person can type in a shell, layers joined by '-' (or ',', spaces or '>>'):

    conv32k3-relu-pool2-conv64k3-relu-pool2-fc128-relu-fc

Parsing is a closed grammar: a weight file's spec goes through the same parser, so nothing in a file can
name code to import or run. See README.md ("Architecture specs") for the full syntax.
"""

import math
import re
from dataclasses import dataclass

import numpy as np

from cnncli.errors import SpecError
from cnncli.engine.inference import chunk_stop, forward_chunked
from cnncli.engine.layers import Activation, Conv, Dense, Dropout, MaxPool, softmax, softmax_cross_entropy
from cnncli.engine.norm import BatchNorm, GlobalAvgPool
from cnncli.engine.passes import in_passes

PRESETS = {
    # For tests and smoke runs: compiles and trains in seconds.
    "tiny": "conv8k3-relu-pool2-fc",
    # The reference network M1 of the benchmarks (valid convolutions, Fashion-MNIST sized).
    "m1": "conv16k3-relu-pool2-conv32k3-relu-pool2-fc64-relu-fc",
    # Default: three conv blocks; 'same' padding keeps small inputs (28 px) usable, pooling keeps 128 px cheap.
    "default": "conv32k3p1-relu-pool2-conv64k3p1-relu-pool2-conv64k3p1-relu-pool2-fc128-relu-drop0.25-fc",
    # Colour photos (64 px and up): batch norm after every conv, global average pooling instead of a wide
    # dense layer (README, "Architecture specs" has its measured comparison with default).
    "photo": "conv32k3p1-bn-relu-pool2-conv64k3p1-bn-relu-pool2-conv128k3p1-bn-relu-pool2-gap-fc",
}

DEFAULT_FILTERS, DEFAULT_KERNEL, DEFAULT_POOL, DEFAULT_UNITS, DEFAULT_DROP = 32, 3, 2, 128, 0.5
MAX_SPEC_LENGTH = 4096
OUTPUT_INIT_SCALE = 0.01  # the output layer's random weights are scaled by this: first logits near 0
MAX_LAYERS = 256
MAX_DIM = 65536

# Bounds on what a spec may ask for, checked by plan() with arithmetic only, before anything is allocated:
# a weight file's metadata (or an --arch) must not be able to make cnncli allocate terabytes. See README.md
# ("Weight files", "Limits").
MAX_INPUT_SIDE = 1024  # input height and width in pixels, as train --size allows
MAX_PARAMS = 2**26  # 67,108,864 parameters: 256 MiB of float32 (a checkpoint holds 4x, under the 2 GiB file cap)
MAX_ACTIVATIONS = 2**27  # floats per image, input plus every layer's output: 512 MiB
MAX_MACS = 2**34  # multiply-adds (and pooling comparisons) per image: about 17 billion, seconds per image
MAX_BATCH_ACTIVATIONS = 2**29  # a training batch: batch size x activations per image, 2 GiB of float32
INFERENCE_FLOATS = 2**27  # activations in flight during inference: images_per_pass() keeps a pass under 512 MiB
# Bytes a training step holds per activation value of its images: the forward outputs, the input gradients,
# pooling indices and kernel scratch. benchmarks/memory.py measured about 9 (default preset, 128 and 224 px:
# peak RSS minus the start-up, over batch x activations x 4 bytes is 2.2-2.3); 10 leaves some margin.
TRAIN_BYTES_PER_VALUE = 10

_SEP = re.compile(r"\s*(?:>>|->|[-,\s])\s*")
_PAIR = r"(\d+)(?:x(\d+))?"
_CONV = re.compile(rf"conv(\d+)?(?:k{_PAIR})?(?:s{_PAIR})?(?:p{_PAIR})?")
_POOL = re.compile(rf"(?:max)?pool(?:{_PAIR})?(?:s{_PAIR})?(?:p{_PAIR})?")
_DENSE = re.compile(r"(?:fc|dense)(\d+)?")
_DROP = re.compile(r"drop(?:out)?(0?\.\d+|0)?")


def _pair(a, b, default):
    if a is None:
        return default
    return (int(a), int(b) if b is not None else int(a))


def _bounded(token, what, value, lo, hi=MAX_DIM):
    if not lo <= value <= hi:
        raise SpecError(f"{token}: {what} must be between {lo} and {hi}, got {value}")
    return value


def _parse_token(token):
    if token in ("relu", "tanh", "sigmoid"):
        return Activation(token)
    if token in ("bn", "gap"):
        return BatchNorm() if token == "bn" else GlobalAvgPool()
    if m := _CONV.fullmatch(token):
        filters = _bounded(token, "filter count", int(m[1]) if m[1] else DEFAULT_FILTERS, 1)
        kernel = _pair(m[2], m[3], None)  # None: 3x3, or smaller when the input map is smaller
        stride = _pair(m[4], m[5], (1, 1))
        pad = _pair(m[6], m[7], (0, 0))
        for what, v, lo in (("filter size", kernel, 1), ("stride", stride, 1), ("padding", pad, 0)):
            if v is not None:
                _bounded(token, what, v[0], lo), _bounded(token, what, v[1], lo)
        return Conv(filters, kernel, stride, pad)
    if m := _POOL.fullmatch(token):
        size = _pair(m[1], m[2], (DEFAULT_POOL, DEFAULT_POOL))
        stride = _pair(m[3], m[4], size)
        pad = _pair(m[5], m[6], (0, 0))
        for what, v, lo in (("window", size, 1), ("stride", stride, 1), ("padding", pad, 0)):
            _bounded(token, what, v[0], lo), _bounded(token, what, v[1], lo)
        return MaxPool(size, stride, pad)
    if m := _DENSE.fullmatch(token):
        return Dense(_bounded(token, "units", int(m[1]), 1) if m[1] else None)
    if m := _DROP.fullmatch(token):
        rate = float(m[1]) if m[1] else DEFAULT_DROP
        if not 0.0 <= rate < 1.0:
            raise SpecError(f"{token}: the dropout rate must be in [0, 1)")
        return Dropout(rate)
    raise SpecError(f"unknown layer '{token}' (known: convNkK[sS][pP], relu, tanh, sigmoid, poolK[sS], bn, gap, fcN, fc, dropR)")


def parse_spec(spec):
    """Parse a spec string or preset name into a list of fresh layers; the last layer is always the output `fc`.

    A bare `fc` that is not last means fc128; a spec that does not end with a bare `fc` gets one appended.
    Raises SpecError naming the offending token.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("the architecture spec is empty")
    if len(spec) > MAX_SPEC_LENGTH:
        raise SpecError(f"the architecture spec is longer than {MAX_SPEC_LENGTH} characters")
    text = PRESETS.get(spec.strip().lower(), spec).strip().lower()
    tokens = [t for t in _SEP.split(text) if t]
    if len(tokens) > MAX_LAYERS:
        raise SpecError(f"the architecture has more than {MAX_LAYERS} layers")
    if not tokens:
        raise SpecError("the architecture spec has no layers")
    layers = [_parse_token(t) for t in tokens]
    if not (isinstance(layers[-1], Dense) and layers[-1].units is None):
        layers.append(Dense(None))
    for layer in layers[:-1]:
        if isinstance(layer, Dense) and layer.units is None:
            layer.units = DEFAULT_UNITS
    return layers


def canonical_spec(spec):
    """The spec in its canonical spelling, e.g. 'conv32k3-relu-pool2-fc' (a bare conv's filter size is
    only known with an input shape; Model.spec has it resolved, and weight files store that)."""
    return _spell_spec(parse_spec(spec))


def _spell_spec(layers):
    # The output layer is always written as a bare `fc`: its width comes from the class count.
    return "-".join([layer.token for layer in layers[:-1]] + ["fc"])


@dataclass
class Plan:
    """What a spec asks for on a given input, derived without allocating: fresh layers (parameters not yet
    created), each layer's output shape (C, H, W), every parameter's shape by state_dict name, the parameter
    count, the activations of one image (floats: the input plus every layer's output) and its work
    (multiply-adds of conv and dense layers plus the comparisons of pooling windows)."""

    layers: list
    shapes: list
    params: dict
    n_params: int
    activations: int
    macs: int = 0


def _param_shapes(layer, in_shape):
    """{"weight": shape, "bias": shape} a layer will create for input (C, H, W); {} for parameter-free layers."""
    if isinstance(layer, Conv):
        return {"weight": (layer.filters, in_shape[0], *layer.kernel), "bias": (layer.filters,)}
    if isinstance(layer, Dense):
        return {"weight": (layer.units, in_shape[0] * in_shape[1] * in_shape[2]), "bias": (layer.units,)}
    shapes = getattr(layer, "param_shapes", None)  # a layer type that has parameters says which
    return dict(shapes(in_shape)) if shapes is not None else {}


def plan(spec, input_shape, num_classes):
    """Parse spec for input (C, H, W) and num_classes outputs, and check it against the bounds above.

    Pure arithmetic on Python ints. Raises SpecError naming the layer that does not fit, or the bound that
    is exceeded (input side, parameter count, activations or multiply-adds per image).
    """
    c, h, w = (int(v) for v in input_shape)
    if not (1 <= h <= MAX_INPUT_SIDE and 1 <= w <= MAX_INPUT_SIDE and 1 <= c <= MAX_DIM):
        raise SpecError(f"input {c}x{h}x{w} (CxHxW) is out of range: sides of 1 to {MAX_INPUT_SIDE} pixels")
    if num_classes < 2:
        raise SpecError(f"a classifier needs at least 2 classes, got {num_classes}")
    layers = parse_spec(spec)
    layers[-1].units = int(num_classes)
    shape, shapes, params = (c, h, w), [], {}
    activations, macs = c * h * w, 0
    for i, layer in enumerate(layers):
        try:
            out = layer.output_shape(shape)
        except SpecError as exc:
            raise SpecError(f"layer {i + 1} {exc} (input {shape[0]}x{shape[1]}x{shape[2]} as CxHxW)") from None
        own = {k: tuple(int(d) for d in v) for k, v in _param_shapes(layer, shape).items()}
        params.update({f"layers.{i}.{k}": v for k, v in own.items()})
        activations += out[0] * out[1] * out[2]
        macs += _work(layer, own, out)
        shapes.append(out)
        shape = out
    n_params = sum(math.prod(v) for v in params.values())
    if n_params > MAX_PARAMS:
        raise SpecError(f"{_spell_spec(layers)} on {c}x{h}x{w} input needs {n_params:,} parameters, more than the "
                        f"limit of {MAX_PARAMS:,}")
    if activations > MAX_ACTIVATIONS:
        raise SpecError(f"{_spell_spec(layers)} on {c}x{h}x{w} input needs {activations:,} activation values per "
                        f"image, more than the limit of {MAX_ACTIVATIONS:,}")
    if macs > MAX_MACS:
        raise SpecError(f"{_spell_spec(layers)} on {c}x{h}x{w} input needs {macs:,} multiply-adds per image, more "
                        f"than the limit of {MAX_MACS:,}")
    return Plan(layers, shapes, params, n_params, activations, macs)


def _work(layer, params, out):
    """Multiply-adds (conv, dense: weight size x output positions) or comparisons (pooling) for one image."""
    if isinstance(layer, MaxPool):
        return out[0] * out[1] * out[2] * layer.size[0] * layer.size[1]
    return math.prod(params["weight"]) * out[1] * out[2] if "weight" in params else 0


def _is_relu(layers, i):
    return 0 <= i < len(layers) and isinstance(layers[i], Activation) and layers[i].kind == "relu"


class Model:
    """A CNN classifier: input (N, C, H, W) float32 -> logits (N, num_classes).

    Parameters live in `layers[i].params`; `state_dict()` names them "layers.{i}.{weight|bias}".
    """

    def __init__(self, spec, input_shape, num_classes, seed=0):
        # Shapes and bounds first (arithmetic only), so an oversized spec fails before anything is allocated.
        p = plan(spec, input_shape, num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.layers, self.shapes, self.activations = p.layers, p.shapes, p.activations
        rng = None if seed is None else np.random.default_rng(seed)  # None: zeros, for weights loaded next
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            # He initialisation (gain 2) feeding a ReLU, LeCun (gain 1: variance 1/fan_in) otherwise.
            gain = 2.0 if isinstance(nxt, Activation) and nxt.kind == "relu" else 1.0
            if isinstance(layer, (Conv, Dense)):
                layer.init(shape, rng, gain)
            else:  # a BatchNorm's constants; draws nothing from rng, so other layers' weights stay as they were
                layer.init(shape, rng)
            shape = self.shapes[i]
        # The output layer starts small, so the first logits are near 0 and the first loss near ln(K):
        # with He-initialised weights and no normalisation, random output weights gave first logits of several
        # units at 128 px and more, and Adam's first steps then blew the loss up (18.7 within 3 batches).
        out_layer = self.layers[-1]
        out_layer.params["weight"] *= OUTPUT_INIT_SCALE
        self.spec = _spell_spec(self.layers)
        self.fold_bn = True  # outside training, a bn right after a conv / dense runs folded into its weights

    def forward(self, x, training=False, stop=None):
        """Logits (N, num_classes) for x (N, C, H, W) float32; in training mode, caches for backward.
        stop (training only): run layers[:stop] only and return the last one's output (N, C, H, W)."""
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input shape {x.shape[1:]} does not match the model's {self.input_shape}")
        h = np.ascontiguousarray(x)
        if training:
            return self._layers_forward(h, True, stop)
        # Outside training the layers run in chunks of images, one thread per chunk (engine.inference), up to the
        # first dense layer unless the dense weights are small; the rest run on the whole batch.
        split = chunk_stop(self.layers)
        if split > 0:
            h = forward_chunked(lambda xs: self._layers_forward(xs, stop=split), h, self.shapes[split - 1])
        return self._layers_forward(h, start=split)

    def _layers_forward(self, h, training=False, stop=None, start=0):
        layers, i = self.layers, start
        while i < (len(layers) if stop is None else stop):
            layer, kw = layers[i], {}
            # Outside training a bn right after a conv / dense is folded into its weights (the bn is skipped).
            if (not training and self.fold_bn and isinstance(layer, (Conv, Dense)) and i + 1 < len(layers)
                    and isinstance(layers[i + 1], BatchNorm)):
                kw["params"] = layers[i + 1].fold(layer.params)
                i += 1
            # A conv or bn (or, outside training, a dense layer) followed by ReLU runs as one fused pass; the ReLU
            # layer only keeps the output for backward.
            # A 2 x 2 stride-2 max pooling ("pool2") after a conv's ReLU joins it: one pass outside training
            # (kernels.fused), one parallel region in training (kernels.regions; backward likewise).
            if (isinstance(layer, (Conv, BatchNorm)) or not training and isinstance(layer, Dense)) \
                    and _is_relu(layers, i + 1):
                pool2 = (isinstance(layer, Conv) and i + 2 < (len(layers) if stop is None else stop)
                         and layers[i + 2].token == "pool2")
                if training and pool2:
                    h = layer.forward_pooled(h, layers[i + 1], layers[i + 2])
                else:
                    h = layer.forward(h, training, relu=True, **kw, **({"pool2": True} if pool2 else {}))
                h = h if pool2 else layers[i + 1].fused(h)
                i += 3 if pool2 else 2
            else:
                h = layer.forward(h, training, **kw)
                i += 1
        return h.reshape(h.shape[0], self.num_classes) if stop is None else h

    def backward(self, dlogits, stop=0):
        """Fill every layer's grads from dlogits (N, num_classes); returns nothing. stop: run the backward passes
        of layers[stop:] only."""
        d = dlogits.reshape(dlogits.shape[0], self.num_classes, 1, 1)
        i = len(self.layers) - 1
        while i >= stop:
            # Max pooling after a ReLU: one pass gives the gradient through both (the same values bit for bit),
            # one parallel region with a conv before them (pool2, as in forward).
            if isinstance(self.layers[i], MaxPool) and _is_relu(self.layers, i - 1):
                if self.layers[i].token == "pool2" and i - 2 >= stop and isinstance(self.layers[i - 2], Conv):
                    d, i = self.layers[i - 2].backward_pooled(d, self.layers[i], need_dx=i > 2), i - 3
                else:
                    d, i = self.layers[i].backward(d, relu=True), i - 2
            else:
                d, i = self.layers[i].backward(d, need_dx=i > 0), i - 1

    def loss_and_grads(self, x, labels, class_weights=None, micro_batch=None):
        """Forward and backward on a batch x (N, C, H, W) with labels (N,); returns (mean loss, logits (N, K)).

        micro_batch (see micro_batch_size): run the batch in passes of at most that many images, adding their
        gradients in a fixed order, so only one pass's activations are held. The loss and gradients are the
        whole batch's (each pass weighted by its share of the batch), equal to a single pass up to float
        rounding, and the same for any thread count (batch norm gets the whole batch's statistics: see
        cnncli.engine.passes). Ignored for networks with a layer that declares couples_images."""
        if micro_batch is None or micro_batch >= x.shape[0] or self.couples_images():
            logits = self.forward(x, training=True)
            loss, dlogits = softmax_cross_entropy(logits, labels, class_weights)
            self.backward(dlogits)
            return loss, logits
        return in_passes(self, x, labels, class_weights, micro_batch)

    def couples_images(self):
        """True when a layer's training pass mixes the images of a batch (batch statistics), so the batch
        cannot be split into micro-batches without changing what is computed."""
        return any(getattr(layer, "couples_images", layer.token.startswith("bn")) for layer in self.layers)

    def micro_batch_size(self, budget_bytes):
        """Images per training pass whose buffers stay under budget_bytes (TRAIN_BYTES_PER_VALUE bytes per
        activation value; at least 1)."""
        return max(1, int(budget_bytes) // (TRAIN_BYTES_PER_VALUE * max(1, self.activations)))

    def predict_proba(self, x, batch_size=256):
        """Class probabilities (N, num_classes) float32 for x (N, C, H, W) float32, batch_size images per
        pass at most (fewer when their activations would exceed INFERENCE_FLOATS)."""
        batch_size = self.images_per_pass(batch_size)
        out = [softmax(self.forward(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def images_per_pass(self, limit=256):
        """How many images one inference pass may hold so that their activations stay under INFERENCE_FLOATS
        (at least 1, at most limit)."""
        return max(1, min(limit, INFERENCE_FLOATS // max(1, self.activations)))

    def training_batch_limit(self):
        """The largest training batch whose activations stay within MAX_BATCH_ACTIVATIONS (at least 1)."""
        return max(1, MAX_BATCH_ACTIVATIONS // max(1, self.activations))

    def set_dropout_rng(self, rng):
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.rng = rng

    def named(self, what="params"):
        """[(name, array)] of trained parameters (what="params"), their gradients ("grads") or the untrained
        stored tensors ("buffers": batch norm's running statistics) in a fixed order: layers.{i}.weight, ..."""
        return [(f"layers.{i}.{k}", v) for i, layer in enumerate(self.layers)
                for k, v in getattr(layer, what, {}).items()]

    def state_dict(self):
        """{name: float32 array} of everything a weight file holds: parameters and buffers (copies)."""
        return {name: np.array(v, np.float32) for name, v in self.named() + self.named("buffers")}

    def expected_shapes(self, buffers=True):
        """{name: shape} of the stored tensors; buffers=False: the trained parameters only (optimizer state)."""
        return {name: tuple(v.shape) for name, v in self.named() + (self.named("buffers") if buffers else [])}

    def load_state_dict(self, tensors):
        """Replace all parameters; raises SpecError naming any missing, extra or mis-shaped tensor."""
        expected = self.expected_shapes()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise SpecError(f"tensors do not match the architecture (missing: {', '.join(missing) or '-'}; "
                            f"unexpected: {', '.join(extra) or '-'})")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise SpecError(f"tensor {name} has shape {tuple(tensors[name].shape)}, the architecture needs {shape}")
        bad = [name for name in expected if name.endswith(".running_var") and (np.asarray(tensors[name]) < 0).any()]
        if bad:
            raise SpecError(f"tensor {bad[0]} holds a negative variance")
        for i, layer in enumerate(self.layers):
            for group in (layer.params, getattr(layer, "buffers", {})):
                for k in group:
                    # A copy: training updates them in place and must not reach into the caller's arrays.
                    group[k] = np.array(tensors[f"layers.{i}.{k}"], dtype=np.float32, order="C", copy=True)

    def summary(self):
        """[(layer token, output shape (C, H, W), parameter count)] for each layer."""
        return [(layer.token, shape, int(sum(v.size for v in layer.params.values())))
                for layer, shape in zip(self.layers, self.shapes)]

    def num_params(self):
        return sum(v.size for _, v in self.named())
