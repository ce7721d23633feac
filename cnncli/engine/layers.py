"""Layers: shape checks, parameters and gradients around the kernels.

Every activation is a C-contiguous (N, C, H, W) array; a dense layer's output is (N, units, 1, 1), so a
convolution placed after a dense layer sees a 1 x 1 map with `units` channels. Each layer has:
- `params` / `grads`: dicts of arrays with the same keys ("weight", "bias"), empty for parameter-free layers;
- `output_shape(in_shape)`: (C, H, W) -> (C, H, W), raising SpecError when the input does not fit;
- `init(in_shape, rng)`: create parameters; `forward(x, training)` caches what `backward(dy) -> dx` needs.
Float32 in production; float64 works too (the gradient checks use it).
"""

import math
import threading

import numpy as np

from cnncli.engine import kernels_np
from cnncli.errors import SpecError

# Batches of at most this many images use the numpy kernels when not training (see _forward_kernels).
SMALL_BATCH = 8
_kernels = None
# .slots: this thread's own layer buffers while it runs a chunk of an inference pass (see _take, engine.inference)
_per_thread = threading.local()


def _numba():
    """cnncli.engine.kernels, imported on first use: numba's import and its first cached-kernel load cost ~0.9 s."""
    global _kernels
    if _kernels is None:
        from cnncli.engine import kernels
        _kernels = kernels
    return _kernels


def _forward_kernels(x, training):
    """The kernel module for a forward pass over x (N, C, H, W): the one place that chooses.

    A small inference batch (a `cnncli predict` of a few images) costs milliseconds in numpy but about a second
    in numba's start-up, so it runs in numpy and such a process never imports numba. Training and larger batches,
    where the compiled kernels win, use numba. The two agree to float rounding; backward passes are numba only.
    """
    return kernels_np if not training and x.shape[0] <= SMALL_BATCH else _numba()


def _take(slot, shape, dtype):
    """The array held in `slot` (a one-element list) if it has this shape and dtype, else a new one put there.

    Explicit ownership: a layer keeps one buffer per purpose (its output, its input gradient, ...) and writes it
    again on every call, so training allocates no activation buffers per step. An array a layer returns is
    therefore valid until that layer's next forward (for forward outputs) or backward (for gradients); copy it
    to keep it longer. Model.forward's logits come from the last Dense layer, which allocates them afresh.
    Inside a chunked inference pass (engine.inference) each thread keeps its own buffer per slot and shape.
    """
    shape = tuple(shape)
    own = getattr(_per_thread, "slots", None)
    if own is not None:
        if len(own) > 256:  # bounded: kept across passes, but models and shapes may change
            own.clear()
        slot = own.setdefault((id(slot), shape), (slot, []))[1]  # holding `slot` keeps its id unique
    if slot and slot[0].shape == shape and slot[0].dtype == dtype:
        return slot[0]
    slot.clear()  # drop the old buffer before allocating: photo-sized maps are hundreds of MB
    slot.append(np.empty(shape, dtype))
    return slot[0]


def _spell_pair(prefix, pair):
    """A (height, width) pair in spec spelling: k3 for (3, 3), k3x5 for (3, 5)."""
    return f"{prefix}{pair[0]}" + (f"x{pair[1]}" if pair[1] != pair[0] else "")


def _out_size(size, kernel, stride, pad):
    """(W - F + 2P) / S + 1, rounded down."""
    return (size - kernel + 2 * pad) // stride + 1


def _uniform(rng, bound, shape):
    """float32 weights of shape, uniform in [-bound, bound) from rng; zeros when rng is None (weights that are
    loaded next: nothing is drawn, and a model load never imports numpy.random)."""
    if rng is None:
        return np.zeros(shape, np.float32)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


class Layer:
    token = ""
    params: dict
    grads: dict

    def __init__(self):
        self.params, self.grads = {}, {}
        self._fwd_slot, self._bwd_slot = [], []  # see _take: the forward output and the input gradient

    def output_shape(self, in_shape):
        return in_shape

    def init(self, in_shape, rng):
        pass

    def __repr__(self):
        return self.token


class Conv(Layer):
    """2-D convolution: F filters of size KH x KW over all input channels, zero padding, a bias per filter."""

    def __init__(self, filters, kernel, stride=(1, 1), padding=(0, 0)):
        super().__init__()
        self.filters, self.kernel, self.stride, self.padding = filters, kernel, stride, padding
        self._pooled_slot = []  # the fused inference pass's pooled output: training keeps its own buffer

    @property
    def token(self):
        # The kernel is None until shape inference picks a bare conv's filter size.
        return (f"conv{self.filters}" + (_spell_pair("k", self.kernel) if self.kernel is not None else "")
                + (_spell_pair("s", self.stride) if self.stride != (1, 1) else "")
                + (_spell_pair("p", self.padding) if self.padding != (0, 0) else ""))

    def output_shape(self, in_shape):
        c, h, w = in_shape
        if self.kernel is None:  # a bare `conv`: 3x3, shrunk to fit a smaller map (e.g. 1x1 after a dense layer)
            self.kernel = (min(3, h), min(3, w))
        oh = _out_size(h, self.kernel[0], self.stride[0], self.padding[0])
        ow = _out_size(w, self.kernel[1], self.stride[1], self.padding[1])
        if oh < 1 or ow < 1:
            raise SpecError(f"{self.token}: a {self.kernel[0]}x{self.kernel[1]} filter does not fit a {h}x{w} input "
                            f"(output would be {oh}x{ow}; (W - F + 2P)/S + 1 must be >= 1)")
        return (self.filters, oh, ow)

    def init(self, in_shape, rng, gain=2.0):
        fan_in = in_shape[0] * self.kernel[0] * self.kernel[1]
        bound = math.sqrt(3.0 * gain / fan_in)
        self.params = {
            "weight": _uniform(rng, bound, (self.filters, in_shape[0], *self.kernel)),
            "bias": np.zeros(self.filters, np.float32),
        }

    def forward(self, x, training=False, relu=False, pool2=False, params=None):
        """relu=True also applies the ReLU that follows, in the same pass over the output (the model then hands
        the output to that ReLU layer's `fused`); pool2=True (inference only, with relu) also the 2 x 2 stride-2
        max pooling after that ReLU: the output is then the pooled map. params (inference only): weights to use
        instead of self.params, e.g. with a batch norm folded in."""
        p = params or self.params
        n, _, h, wd = x.shape
        _, oh, ow = self.output_shape(x.shape[1:])
        kern = _forward_kernels(x, training)
        if relu and pool2 and not training:
            out = _take(self._pooled_slot, (n, self.filters, oh // 2, ow // 2), x.dtype)
            kern.conv2d_relu_pool2(x, p["weight"], p["bias"], self.stride, self.padding, out)
            self.x = x
            return out
        out = _take(self._fwd_slot, (n, self.filters, oh, ow), x.dtype)
        kern.conv2d_forward(x, p["weight"], p["bias"], self.stride, self.padding, out, relu=relu)
        self.x = x
        return out

    def backward(self, dy, need_dx=True):
        dx = _take(self._bwd_slot, self.x.shape, self.x.dtype) if need_dx else None
        dw, db = _numba().conv2d_backward(self.x, self.params["weight"], np.ascontiguousarray(dy),
                                          self.stride, self.padding, dx)
        self.grads = {"weight": dw, "bias": db}
        return dx

    def forward_pooled(self, x, relu, pool):
        """Training: this conv, the ReLU layer `relu` after it and `pool` (a pool2 MaxPool) after that, in one
        parallel region (kernels.regions); each layer keeps what its backward needs. Returns the pooled map."""
        _, oh, ow = self.output_shape(x.shape[1:])
        out = _take(self._fwd_slot, (x.shape[0], self.filters, oh, ow), x.dtype)
        pooled, argmax = pool.outputs_for(out)
        _numba().conv2d_relu_maxpool2(x, self.params["weight"], self.params["bias"], self.stride, self.padding,
                                      out, pooled, argmax)
        self.x = x
        relu.fused(out)
        return pooled

    def backward_pooled(self, dy, pool, need_dx=True):
        """The backward pass of forward_pooled, in one parallel region: dy is the gradient at pool's output;
        returns the gradient at this conv's input (None unless need_dx)."""
        dconv = _take(pool._bwd_slot, pool.in_shape, dy.dtype)
        dx = _take(self._bwd_slot, self.x.shape, self.x.dtype) if need_dx else None
        dw, db = _numba().maxpool2_relu_conv2d_backward(np.ascontiguousarray(dy), pool.argmax, pool.out, self.x,
                                                         self.params["weight"], self.stride, self.padding, dconv, dx)
        self.grads = {"weight": dw, "bias": db}
        return dx


class MaxPool(Layer):
    """Max pooling over KH x KW windows; stride defaults to the window size."""

    def __init__(self, size, stride=None, padding=(0, 0)):
        super().__init__()
        self.size, self.stride, self.padding = size, stride or size, padding
        self._arg_slot = []

    @property
    def token(self):
        return (_spell_pair("pool", self.size) + (_spell_pair("s", self.stride) if self.stride != self.size else "")
                + (_spell_pair("p", self.padding) if self.padding != (0, 0) else ""))

    def output_shape(self, in_shape):
        c, h, w = in_shape
        if self.padding[0] > self.size[0] // 2 or self.padding[1] > self.size[1] // 2:
            raise SpecError(f"{self.token}: padding may be at most half the window size")
        oh = _out_size(h, self.size[0], self.stride[0], self.padding[0])
        ow = _out_size(w, self.size[1], self.stride[1], self.padding[1])
        if oh < 1 or ow < 1:
            raise SpecError(f"{self.token}: a {self.size[0]}x{self.size[1]} window does not fit a {h}x{w} input")
        return (c, oh, ow)

    def forward(self, x, training=False):
        out, argmax = self.outputs_for(x)
        _forward_kernels(x, training).maxpool_forward(x, self.size, self.stride, self.padding, out, argmax)
        return out

    def outputs_for(self, x):
        """(output, argmax) buffers for pooling x (N, C, H, W), kept (with x's shape) for backward."""
        _, oh, ow = self.output_shape(x.shape[1:])
        self.out = _take(self._fwd_slot, (x.shape[0], x.shape[1], oh, ow), x.dtype)
        # The indices of the maxima, kept in inference too: `cnncli show` traces gradients through them.
        self.argmax = _take(self._arg_slot, self.out.shape, np.dtype(np.int32))
        self.in_shape = x.shape
        return self.out, self.argmax

    def backward(self, dy, need_dx=True, relu=False):
        """relu=True: the input was a ReLU's output, and dx is the gradient through that ReLU too (one pass)."""
        dx = _take(self._bwd_slot, self.in_shape, dy.dtype)
        _numba().maxpool_backward(np.ascontiguousarray(dy), self.argmax, dx, self.out if relu else None)
        return dx


class Activation(Layer):
    """Element-wise ReLU, tanh or sigmoid; the backward pass uses the cached output."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    @property
    def token(self):
        return self.kind

    def forward(self, x, training=False):
        out = _take(self._fwd_slot, x.shape, x.dtype)
        _forward_kernels(x, training).activation_forward(self.kind, x, out)
        self.y = out
        return out

    def fused(self, y):
        """The layer before applied this activation in its own pass and returned y: keep it for backward."""
        self.y = y
        return y

    def backward(self, dy, need_dx=True):
        dx = _take(self._bwd_slot, self.y.shape, self.y.dtype)
        _numba().activation_backward(self.kind, self.y, np.ascontiguousarray(dy), dx)
        return dx


class Dense(Layer):
    """Fully connected: flattens (N, C, H, W) to (N, C*H*W); output (N, units, 1, 1). weight (units, C*H*W)."""

    def __init__(self, units=None):
        super().__init__()
        self.units = units  # None until the model sets the class count on the output layer

    @property
    def token(self):
        return f"fc{self.units}" if self.units else "fc"

    def output_shape(self, in_shape):
        return (self.units, 1, 1)

    def init(self, in_shape, rng, gain=2.0):
        fan_in = int(np.prod(in_shape))
        bound = math.sqrt(3.0 * gain / fan_in)
        self.params = {
            "weight": _uniform(rng, bound, (self.units, fan_in)),
            "bias": np.zeros(self.units, np.float32),
        }

    def forward(self, x, training=False, params=None, relu=False):
        """params (inference only): weights to use instead of self.params, e.g. with a batch norm folded in.
        relu=True (inference only) also applies the ReLU that follows (the model hands the output to that ReLU
        layer's `fused`): one compiled call with the GEMM and the bias on the numba path."""
        p = params or self.params
        self.x2 = x.reshape(x.shape[0], -1)
        self.in_shape = x.shape
        if not training and _forward_kernels(x, training) is not kernels_np:
            out = np.empty((x.shape[0], self.units), x.dtype)
            _numba().dense_forward(self.x2, p["weight"], p["bias"], out, relu)
        else:
            out = self.x2 @ p["weight"].T
            out += p["bias"]
            if relu:
                kernels_np.activation_forward("relu", out, out)
        return out.reshape(x.shape[0], self.units, 1, 1)

    def backward(self, dy, need_dx=True):
        dy2 = dy.reshape(dy.shape[0], self.units)
        self.grads = {"weight": dy2.T @ self.x2, "bias": dy2.sum(axis=0)}
        return (dy2 @ self.params["weight"]).reshape(self.in_shape) if need_dx else None


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability `rate` and scale the rest by 1/(1-rate)."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate
        self.rng = np.random.default_rng(0)

    @property
    def token(self):
        return f"drop{self.rate:g}"

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self.mask = None
            return x
        keep = 1.0 - self.rate
        self.mask = (self.rng.random(x.shape, dtype=np.float32) < keep).astype(x.dtype) / x.dtype.type(keep)
        return x * self.mask

    def backward(self, dy, need_dx=True):
        return dy if self.mask is None else dy * self.mask


def softmax(logits):
    """Row-wise softmax of logits (N, K), computed from shifted values so it never overflows."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels, class_weights=None):
    """Mean cross-entropy of logits (N, K) against integer labels (N,), and its gradient (N, K).

    Uses log-sum-exp, so logits of +-1e4 give a finite loss and gradient. With class_weights (K,), each
    sample counts with its class's weight and the mean is taken over the total weight.
    """
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p = z - log_norm
    picked = -log_p[np.arange(n), labels]
    w = np.ones(n, logits.dtype) if class_weights is None else np.asarray(class_weights, logits.dtype)[labels]
    total = w.sum()
    loss = float((picked * w).sum() / total)
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1.0
    grad *= (w / total)[:, None]
    return loss, grad.astype(logits.dtype, copy=False)
