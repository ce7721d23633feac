"""Numpy twins of the inference kernels: conv2d_forward, maxpool_forward, activation_forward, channel_affine
(batch norm outside training) and gap_forward.

Same signatures and results (to float rounding) as the numba kernels in `cnncli.engine.kernels`, forward only and
without numba: importing numba and loading its cached machine code costs about 0.9 s per process, far more than
the arithmetic of one small inference batch, so `cnncli.engine.layers` uses these for small batches outside training.
Every function writes into the `out` arrays it is given; any float dtype, any stride, padding and shape.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _pad(x, ph, pw, fill):
    """x (N, C, H, W) with ph rows and pw columns of `fill` on every side."""
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill) if ph or pw else x


def conv2d_forward(x, w, b, stride, padding, out, relu=False):
    """out (N, F, OH, OW) = cross-correlation of x (N, C, H, W) with w (F, C, KH, KW), plus b (F,).

    stride and padding are (sh, sw) and (ph, pw); padding is zeros; out C-contiguous. im2col and one GEMM per
    image: columns (N, C*KH*KW, OH*OW) copied from a window view, so the product lands in out's own layout.
    relu=True applies ReLU to out afterwards, as the numba kernel's inference fusion does.
    """
    n, f, oh, ow = out.shape
    (sh, sw), (ph, pw) = stride, padding
    win = sliding_window_view(_pad(x, ph, pw, 0), w.shape[2:], axis=(2, 3))[:, :, ::sh, ::sw]  # (N, C, OH, OW, KH, KW)
    cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, -1, oh * ow)
    res = out.reshape(n, f, oh * ow)
    np.matmul(w.reshape(f, -1), cols, out=res)
    res += b[:, None]
    if relu:  # the fused ReLU of the numba kernel, with activation_forward's rule
        np.fmax(res, 0, out=res)


def maxpool_forward(x, size, stride, padding, out, argmax=None):
    """out (N, C, OH, OW) = window maxima of x (N, C, H, W); argmax (int32, same shape) gets y * W + x of each
    (argmax=None: a scratch array, for inference).

    size, stride, padding are (h, w) pairs; padding counts as -inf. The numba kernel's rule, one tap at a time:
    start from each window's first valid value (so padding never wins) and move to a later value only when it
    is strictly greater (the first maximum wins ties; NaNs never win, and a NaN first value is kept).
    """
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    if argmax is None:
        argmax = np.empty(out.shape, np.int32)
    width = x.shape[3]
    oh, ow = out.shape[2:]
    top = np.arange(oh)[:, None] * sh - ph  # each window's top-left corner, possibly in the padding
    left = np.arange(ow)[None, :] * sw - pw
    r0, c0 = np.maximum(top, 0), np.maximum(left, 0)
    first = x[:, :, r0, c0]
    out[...] = first
    argmax[...] = r0 * width + c0
    xp = _pad(x, ph, pw, -np.inf)
    step = np.empty(argmax.shape, np.int32)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            better = tap > out
            np.fmax(out, tap, out=out)  # equals where(better, tap, out) except where out is NaN (fixed below)
            # argmax = where(better, this tap's index, argmax) in plain arithmetic: masked writes are 5x slower.
            np.subtract((top + i) * width + left + j, argmax, out=step, casting="unsafe")
            step *= better
            argmax += step
    nan = np.isnan(first)
    if nan.any():
        np.copyto(out, first, where=nan)
        np.copyto(argmax, r0 * width + c0, where=nan, casting="unsafe")


def _sigmoid(x, out):
    e = np.exp(-np.abs(x))  # never overflows: the exponent is <= 0
    np.divide(np.where(x >= 0, 1, e), 1 + e, out=out)


def activation_forward(kind, x, out):
    """out = f(x) element-wise for kind in relu | tanh | sigmoid; x and out the same shape and dtype."""
    if kind == "relu":
        np.fmax(x, 0, out=out)  # fmax, not maximum: NaN becomes 0, as in the kernel's `v if v > 0 else 0`
    elif kind == "tanh":
        np.tanh(x, out=out)
    elif kind == "sigmoid":
        _sigmoid(x, out)
    else:
        raise KeyError(kind)


def channel_affine(x, scale, shift, out):
    """out = x * scale[c] + shift[c] for x (N, C, H, W); scale, shift (C,) and out like x (batch norm's
    inference form, as the numba kernel)."""
    np.multiply(x, scale[:, None, None], out=out)
    out += shift[:, None, None]


def gap_forward(x, out):
    """out (N, C, 1, 1) = the mean of each (H, W) map of x (N, C, H, W), summed in float64 as the numba kernel."""
    out[:, :, 0, 0] = x.sum(axis=(2, 3), dtype=np.float64) / (x.shape[2] * x.shape[3])


def conv2d_relu_pool2(x, w, b, stride, padding, out):
    """out (N, F, OH // 2, OW // 2) = 2 x 2 max pooling (stride 2) of ReLU(conv2d_forward(x, w, b)): the numpy twin
    of the numba kernels' fused inference pass, through conv2d_forward and maxpool_forward."""
    (kh, kw), (sh, sw), (ph, pw) = w.shape[2:], stride, padding
    oh, ow = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
    full = np.empty((x.shape[0], w.shape[0], oh, ow), x.dtype)
    conv2d_forward(x, w, b, stride, padding, full, relu=True)
    maxpool_forward(full, (2, 2), (2, 2), (0, 0), out)
