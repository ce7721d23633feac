"""Element-wise activations (relu, tanh, sigmoid) and their gradients on arrays of any shape."""

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.checks import _expect, _input
from cnncli.engine.kernels.threads import _run, get_threads

# Element-wise kernels slice their [lo, hi) range first and index the slices from 0: with `range(lo, hi)` numba
# cannot prove the index non-negative, adds a wrap-around check per access, and the loop stays scalar.

@njit(**JIT)
def _relu_if(v, relu, zero):
    """ReLU of v when relu (the rule of _relu_chunk, bit for bit), else v; zero is a zero of v's type. For
    kernels that apply the ReLU as they write their output, instead of a second pass over memory."""
    return v if not relu or v > zero else zero


@njit(**JIT)
def _relu_chunk(x, out, lo, hi):
    xs, os_ = x[lo:hi], out[lo:hi]
    # A zero of x's own type: a bare 0.0 is float64 and would turn the select into conversions.
    zero = np.zeros(1, dtype=x.dtype)[0]
    for i in range(hi - lo):
        v = xs[i]
        os_[i] = v if v > zero else zero


@njit(**JIT)
def _relu_backward_chunk(y, dy, dx, lo, hi):
    ys, gs, ds = y[lo:hi], dy[lo:hi], dx[lo:hi]
    zero = np.zeros(1, dtype=dx.dtype)[0]
    for i in range(hi - lo):
        # Load dy unconditionally: a load inside the select made LLVM emit a branch per element (10x slower).
        g = gs[i]
        ds[i] = g if ys[i] > zero else zero


@njit(**JIT)
def _tanh_chunk(x, out, lo, hi):
    xs, os_ = x[lo:hi], out[lo:hi]
    for i in range(hi - lo):
        os_[i] = np.tanh(xs[i])


@njit(**JIT)
def _tanh_backward_chunk(y, dy, dx, lo, hi):
    ys, gs, ds = y[lo:hi], dy[lo:hi], dx[lo:hi]
    for i in range(hi - lo):
        ds[i] = gs[i] * (1.0 - ys[i] * ys[i])


@njit(**JIT)
def _sigmoid_chunk(x, out, lo, hi):
    xs, os_ = x[lo:hi], out[lo:hi]
    for i in range(hi - lo):
        v = xs[i]
        # Two branches so that exp never overflows.
        if v >= 0:
            os_[i] = 1.0 / (1.0 + np.exp(-v))
        else:
            e = np.exp(v)
            os_[i] = e / (1.0 + e)


@njit(**JIT)
def _sigmoid_backward_chunk(y, dy, dx, lo, hi):
    ys, gs, ds = y[lo:hi], dy[lo:hi], dx[lo:hi]
    for i in range(hi - lo):
        ds[i] = gs[i] * ys[i] * (1.0 - ys[i])


_ACTIVATIONS = {
    "relu": (_relu_chunk, _relu_backward_chunk),
    "tanh": (_tanh_chunk, _tanh_backward_chunk),
    "sigmoid": (_sigmoid_chunk, _sigmoid_backward_chunk),
}

# Element-wise work is memory-bound and handing a chunk to another thread costs 60-90 us here: split only
# arrays of a million elements or more (one thread did a 700,000-element ReLU in 0.09 ms, two took 0.18 ms).
_MIN_ELEMENTWISE_CHUNK = 1 << 19


def _elementwise_chunks(size):
    return max(1, min(get_threads(), size // _MIN_ELEMENTWISE_CHUNK))


def _check_elementwise(kind, x, **others):
    if kind not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {kind!r} (known: {', '.join(_ACTIVATIONS)})")
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        raise ValueError("activation input: expected a C-contiguous float32 or float64 array")
    for name, a in others.items():
        _expect(name, a, x.shape, x.dtype)


def activation_forward(kind, x, out):
    """out = f(x) element-wise for kind in relu | tanh | sigmoid; x and out C-contiguous, any shape."""
    _check_elementwise(kind, x, out=out)
    flat = x.reshape(-1)
    _run(_ACTIVATIONS[kind][0], flat.size, flat, out.reshape(-1), n_chunks=_elementwise_chunks(flat.size))


def activation_backward(kind, y, dy, dx):
    """dx = dy * f'(.) expressed through the activation's output y; all C-contiguous, same shape."""
    _check_elementwise(kind, y, dy=dy, dx=dx)
    flat = y.reshape(-1)
    _run(_ACTIVATIONS[kind][1], flat.size, flat, dy.reshape(-1), dx.reshape(-1),
         n_chunks=_elementwise_chunks(flat.size))


@njit(**JIT)
def _sgd_momentum(p, v, g, lr, mu):
    for i in range(p.shape[0]):
        vi = v[i] * mu + g[i]  # two roundings, as numpy's `v *= mu; v += g` (no FMA contraction: JIT flags)
        v[i] = vi
        p[i] -= lr * vi


def sgd_momentum(p, v, g, lr, momentum):
    """In place, element by element: v = momentum * v + g, then p -= lr * v; p, v, g one shape and float dtype,
    C-contiguous. lr and momentum are rounded to that dtype first, so the results are numpy's
    `v *= momentum; v += g; p -= lr * v` bit for bit, in one compiled pass instead of four array operations."""
    _input("p", p, p.ndim)
    _expect("v", v, p.shape, p.dtype)
    _expect("g", g, p.shape, p.dtype)
    t = p.dtype.type
    _sgd_momentum(p.reshape(-1), v.reshape(-1), g.reshape(-1), t(lr), t(momentum))
