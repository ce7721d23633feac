"""Numerical gradients by central differences, in the style of cs231n's gradient_check.

For a function f(x) -> array y and an upstream gradient dy, the quantity checked is the
vector-Jacobian product d/dx sum(f(x) * dy): a random dy exercises every output at once, so a
single check covers the whole Jacobian. Use float64 inputs: the step h = 1e-5 is too small for float32.
"""

import numpy as np


def numerical_gradient(f, x, dy=None, h=1e-5):
    """d/dx of sum(f() * dy), where f reads x (modified in place and restored); dy=None means f returns a scalar."""
    grad = np.zeros(x.shape, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        plus = np.array(f(), np.float64)  # a copy: a layer's output is valid only until its next forward
        x[ix] = old - h
        minus = np.array(f(), np.float64)
        x[ix] = old
        if dy is None:
            grad[ix] = (float(plus) - float(minus)) / (2 * h)
        else:
            grad[ix] = np.sum((np.asarray(plus, np.float64) - np.asarray(minus, np.float64)) * dy) / (2 * h)
        it.iternext()
    return grad


def rel_error(a, b, floor=1e-8):
    """Largest element-wise |a - b| / max(|a| + |b|, floor): ~1e-7 or below for a correct float64 gradient."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)))
