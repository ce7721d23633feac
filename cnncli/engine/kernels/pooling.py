"""Max pooling over NCHW windows, forward (maxima and their indices) and backward."""

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.checks import _expect, _input, _out_shape
from cnncli.engine.kernels.threads import _run


@njit(**JIT)
def _maxpool_forward_chunk(x, kh, kw, sh, sw, ph, pw, out, argmax, lo, hi):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        img = x[n, c]
        for y in range(OH):
            r_lo = max(0, y * sh - ph)
            r_hi = min(H, y * sh - ph + kh)
            for xo in range(OW):
                c_lo = max(0, xo * sw - pw)
                c_hi = min(W, xo * sw - pw + kw)
                # Start from the window's first valid value (padding never wins, and an all-NaN window still
                # gets a valid index); strictly greater keeps the first maximum. Typed like x, never float64.
                best = img[r_lo, c_lo]
                where = r_lo * W + c_lo
                for r in range(r_lo, r_hi):
                    for col in range(c_lo, c_hi):
                        v = img[r, col]
                        if v > best:
                            best = v
                            where = r * W + col
                out[n, c, y, xo] = best
                argmax[n, c, y, xo] = where


@njit(**JIT)
def _maxpool2_forward_chunk(x, out, argmax, lo, hi):
    """2 x 2 windows, stride 2, no padding: the common case, written without window loops."""
    C, W = x.shape[1], x.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        img = x[n, c]
        o = out[n, c]
        a = argmax[n, c]
        for y in range(OH):
            r0 = img[2 * y]
            r1 = img[2 * y + 1]
            base = 2 * y * W
            for xo in range(OW):
                j = 2 * xo
                best = r0[j]
                where = base + j
                v = r0[j + 1]
                if v > best:
                    best = v
                    where = base + j + 1
                v = r1[j]
                if v > best:
                    best = v
                    where = base + W + j
                v = r1[j + 1]
                if v > best:
                    best = v
                    where = base + W + j + 1
                o[y, xo] = best
                a[y, xo] = where


@njit(**JIT)
def _maxpool2_max_chunk(x, out, lo, hi):
    """2 x 2 windows, stride 2, no padding, maxima only (inference): the rule of _maxpool2_forward_chunk."""
    C = x.shape[1]
    OH, OW = out.shape[2], out.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        img = x[n, c]
        o = out[n, c]
        for y in range(OH):
            r0 = img[2 * y]
            r1 = img[2 * y + 1]
            orow = o[y]
            for xo in range(OW):
                j = 2 * xo
                best = r0[j]
                v = r0[j + 1]
                if v > best:
                    best = v
                v = r1[j]
                if v > best:
                    best = v
                v = r1[j + 1]
                if v > best:
                    best = v
                orow[xo] = best


def maxpool_forward(x, size, stride, padding, out, argmax=None):
    """out (N, C, OH, OW) = window maxima of x (N, C, H, W); argmax (int32, same shape) gets y * W + x of each.

    size, stride, padding are (h, w) pairs; padding counts as -inf. argmax=None (inference) skips the indices.
    """
    _input("x", x, 4)
    if padding[0] > size[0] // 2 or padding[1] > size[1] // 2:
        raise ValueError(f"padding {padding} may be at most half the window {size}")
    shape = (*x.shape[:2], *_out_shape(x.shape, size, stride, padding))
    _expect("out", out, shape, x.dtype)
    N, C = x.shape[:2]
    two = tuple(size) == (2, 2) and tuple(stride) == (2, 2) and tuple(padding) == (0, 0)
    if argmax is None:
        if two:
            _run(_maxpool2_max_chunk, N * C, x, out)
            return
        argmax = np.empty(shape, np.int32)
    _expect("argmax", argmax, shape, np.int32)
    if two:
        _run(_maxpool2_forward_chunk, N * C, x, out, argmax)
    else:
        _run(_maxpool_forward_chunk, N * C, x, size[0], size[1], stride[0], stride[1], padding[0], padding[1],
             out, argmax)


@njit(**JIT)
def _maxpool_backward_chunk(dout, argmax, relu, pooled, dx, lo, hi):
    """dx = dout routed to each window's maximum. relu=True: the pool's input was a ReLU's output, and the ReLU's
    gradient is applied in the same pass: the maximum a window routes to is pooled[p], so the ReLU passes dout[p]
    exactly where pooled[p] > 0 (activation_backward's rule, bit for bit)."""
    C, HW = dx.shape[1], dx.shape[2] * dx.shape[3]
    OHW = dout.shape[2] * dout.shape[3]
    zero = np.zeros(1, dtype=dx.dtype)[0]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        # Flat views: argmax is already a flat index, so no division per element.
        d = dx[n, c].reshape(HW)
        g = dout[n, c].reshape(OHW)
        a = argmax[n, c].reshape(OHW)
        y = pooled[n, c].reshape(OHW)
        d[:] = 0.0
        if relu:
            for p in range(OHW):
                v = g[p]  # loaded unconditionally, as in _relu_backward_chunk
                d[a[p]] += v if y[p] > zero else zero
        else:
            for p in range(OHW):
                d[a[p]] += g[p]


def maxpool_backward(dout, argmax, dx, relu_pooled=None):
    """Overwrite dx (N, C, H, W) with dout (N, C, OH, OW) routed to each window's maximum.

    argmax (int32, dout's shape) must come from maxpool_forward on an input of dx's shape: its values index dx.
    relu_pooled (dout's shape and dtype): the pool's output, when its input was a ReLU's output; dx is then the
    gradient through the ReLU as well (activation_backward's rule, bit for bit), in one pass instead of two.
    """
    _input("dx", dx, 4)
    _expect("dout", dout, (*dx.shape[:2], *dout.shape[2:]), dx.dtype)
    _expect("argmax", argmax, dout.shape, np.int32)
    if relu_pooled is not None:
        _expect("relu_pooled", relu_pooled, dout.shape, dx.dtype)
    _run(_maxpool_backward_chunk, dx.shape[0] * dx.shape[1], dout, argmax, relu_pooled is not None,
         dout if relu_pooled is None else relu_pooled, dx)
