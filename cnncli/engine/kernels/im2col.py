"""Convolution of any stride through im2col + GEMM with general index arithmetic, forward and backward."""

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.elementwise import _relu_if
from cnncli.engine.kernels.sums import _row_sums


@njit(**JIT)
def _valid_range(size, stride, offset, limit):
    """Output positions o in [lo, hi) for which 0 <= o * stride + offset < limit."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = size
    last = limit - 1 - offset
    if last < 0:
        hi = 0
    else:
        hi = min(size, last // stride + 1)
    return lo, max(lo, hi)


@njit(**JIT)
def _im2col(img, kh, kw, sh, sw, ph, pw, oh, ow, cols, col0, back=False):
    """Write image (C, H, W)'s patches into cols[:, col0 : col0 + oh*ow]; rows are (c, i, j), padding gives zeros.

    back=True is the inverse (col2im): add those columns back into img instead."""
    C, H, W = img.shape
    row = 0
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                x_lo, x_hi = _valid_range(ow, sw, j - pw, W)
                for y in range(oh):
                    src = y * sh + i - ph
                    base = col0 + y * ow
                    inside = 0 <= src < H
                    if back:
                        if inside:
                            for x in range(x_lo, x_hi):
                                img[c, src, x * sw + j - pw] += cols[row, base + x]
                        continue
                    for x in range(x_lo if inside else ow):
                        cols[row, base + x] = 0.0
                    if inside:
                        for x in range(x_lo, x_hi):
                            cols[row, base + x] = img[c, src, x * sw + j - pw]
                        for x in range(x_hi, ow):
                            cols[row, base + x] = 0.0
                row += 1


@njit(**JIT)
def _strided_cols(x, KH, KW, sh, sw, ph, pw, OH, OW, cols, lo, hi):
    """im2col of images [lo, hi) into cols (C*KH*KW, (hi - lo) * OH*OW)."""
    for n in range(lo, hi):
        _im2col(x[n], KH, KW, sh, sw, ph, pw, OH, OW, cols, (n - lo) * OH * OW)


@njit(**JIT)
def _bias_scatter(res, b, out3, relu, lo, hi):
    """out3[n, f, :] = res[f, (n - lo) * P : (n - lo + 1) * P] + b[f] for images [lo, hi) (ReLU of it when relu);
    out3 is (N, F, P)."""
    F, P = out3.shape[1], out3.shape[2]
    zero = np.zeros(1, dtype=out3.dtype)[0]
    for n in range(lo, hi):
        off = (n - lo) * P
        for f in range(F):
            bf = b[f]
            dst = out3[n, f]
            src = res[f, off:]
            for p in range(P):
                dst[p] = _relu_if(src[p] + bf, relu, zero)


def _conv_gemm_chunk(x, w2, b, sh, sw, ph, pw, KH, KW, out3, OH, OW, relu, lo, hi):
    cols = np.empty((w2.shape[1], (hi - lo) * OH * OW), dtype=x.dtype)
    _strided_cols(x, KH, KW, sh, sw, ph, pw, OH, OW, cols, lo, hi)
    _bias_scatter(w2 @ cols, b, out3, relu, lo, hi)


@njit(**JIT)
def _strided_col2ims(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx, lo, hi):
    for n in range(lo, hi):
        dx[n] = 0.0
        _im2col(dx[n], KH, KW, sh, sw, ph, pw, OH, OW, dcols, (n - lo) * OH * OW, True)


def _conv_backward_chunk(x, w2t, dout3, sh, sw, ph, pw, KH, KW, OH, OW, need_dx, dx, dw_parts, db_parts, slot,
                         lo, hi):
    """The gradients of conv2d_backward for images [lo, hi), any stride (im2col + GEMM)."""
    cols = np.empty((w2t.shape[0], (hi - lo) * OH * OW), dtype=x.dtype)
    _strided_cols(x, KH, KW, sh, sw, ph, pw, OH, OW, cols, lo, hi)
    # (F, images * OH*OW): each image's gradient block side by side, matching the columns of cols.
    dmat = np.ascontiguousarray(dout3[lo:hi].transpose(1, 0, 2)).reshape(dout3.shape[1], -1)
    np.matmul(dmat, cols.T, out=dw_parts[slot[lo]])
    _row_sums(dmat, db_parts[slot[lo]])
    if need_dx:
        _strided_col2ims(w2t @ dmat, KH, KW, sh, sw, ph, pw, OH, OW, dx, lo, hi)
