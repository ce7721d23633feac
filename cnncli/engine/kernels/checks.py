"""Argument checks shared by the public kernel functions (ValueError on a wrong shape, dtype or layout)."""

import numpy as np


# Cheap checks in the public wrappers: the compiled cores run without bounds checks, so an array of the wrong
# shape, dtype or layout would make them read or write outside its memory instead of failing.

def _expect(what, a, shape, dtype):
    """Raise ValueError unless a is a C-contiguous array of exactly this shape and dtype."""
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype or not a.flags.c_contiguous:
        got = f"{a.dtype} {a.shape}" + ("" if a.flags.c_contiguous else " (not C-contiguous)") \
            if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{what}: expected a C-contiguous {np.dtype(dtype)} array of shape {tuple(shape)}, got {got}")


def _input(what, x, ndim):
    if not isinstance(x, np.ndarray) or x.ndim != ndim or x.dtype not in (np.float32, np.float64) \
            or not x.flags.c_contiguous:
        raise ValueError(f"{what}: expected a C-contiguous float32 or float64 array with {ndim} dimensions")


def _out_shape(x_shape, kernel, stride, padding):
    """(OH, OW) of a window of size kernel (kh, kw) sliding over x_shape's last two axes; ValueError if < 1."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"stride {stride} must be >= 1 and padding {padding} >= 0")
    oh, ow = (x_shape[-2] + 2 * ph - kh) // sh + 1, (x_shape[-1] + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} window does not fit a {x_shape[-2]}x{x_shape[-1]} input with padding {padding}")
    return oh, ow


def _check_conv(x, w, b, stride, padding, out, name):
    """Check conv2d arguments: x (N, C, H, W), w (F, C, KH, KW), b (F,) unless None, out (N, F, OH, OW)."""
    _input("x", x, 4)
    _input("w", w, 4)
    if w.dtype != x.dtype or w.shape[1] != x.shape[1]:
        raise ValueError(f"w: {w.dtype} {w.shape} does not fit x {x.dtype} {x.shape} (same dtype, w[1] == x[1])")
    if b is not None:
        _expect("b", b, (w.shape[0],), x.dtype)
    oh, ow = _out_shape(x.shape, w.shape[2:], stride, padding)
    _expect(name, out, (x.shape[0], w.shape[0], oh, ow), x.dtype)
