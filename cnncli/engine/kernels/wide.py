"""Stride-1 convolutions in "wide" coordinates: direct for few input channels, else im2col + GEMM."""

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.elementwise import _relu_if
from cnncli.engine.kernels.scratch import thread_buffer
from cnncli.engine.kernels.sums import _row_sums


# ---------------------------------------------------------------------------------------------------------------
# Stride-1 convolutions in "wide" coordinates.
#
# With stride 1, output position (y, x) reads input (y + i, x + j) of the zero-padded image (Hp, Wp). Indexing the
# output by q = y * Wp + x turns every filter tap into one contiguous shift: tap (i, j) reads padded-flat[q + i*Wp + j].
# The q range [0, L) with L = (OH - 1) * Wp + OW also covers Wp - OW "garbage" columns per row that are computed and
# dropped; in exchange every inner loop is a long unit-stride loop that LLVM vectorizes, and im2col becomes one
# contiguous copy per (channel, tap) row.
# ---------------------------------------------------------------------------------------------------------------

@njit(**JIT)
def _pad_image(img, ph, pw, dst):
    """Copy image (C, H, W) into the middle of dst (C, Hp * Wp) and zero the border."""
    C, H, W = img.shape
    Wp = W + 2 * pw
    Hp = H + 2 * ph
    for c in range(C):
        d = dst[c]
        for q in range(ph * Wp):
            d[q] = 0.0
        for q in range((ph + H) * Wp, Hp * Wp):
            d[q] = 0.0
        for y in range(H):
            base = (y + ph) * Wp
            for q in range(base, base + pw):
                d[q] = 0.0
            row = img[c, y]
            dr = d[base + pw:]
            for xx in range(W):
                dr[xx] = row[xx]
            for q in range(base + pw + W, base + Wp):
                d[q] = 0.0


@njit(**JIT)
def _wide_forward_direct(x, w, b, ph, pw, out, relu, lo, hi):
    """Direct stride-1 convolution for few input channels (ReLU on the way out when relu); work items are
    (image, filter) pairs."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    L = (OH - 1) * Wp + OW
    xp = np.empty((C, Hp * Wp), dtype=x.dtype)
    acc = np.empty(L, dtype=x.dtype)
    zero = np.zeros(1, dtype=x.dtype)[0]
    last_n = -1
    for nf in range(lo, hi):
        n = nf // F
        f = nf % F
        if n != last_n:
            _pad_image(x[n], ph, pw, xp)
            last_n = n
        bf = b[f]
        for q in range(L):
            acc[q] = bf
        for c in range(C):
            s = xp[c]
            for i in range(KH):
                for j in range(KW):
                    wv = w[f, c, i, j]
                    # A view per tap, indexed by the loop variable alone: an index like q + off could be
                    # negative as far as numba knows, and its wrap-around check stops LLVM from vectorizing.
                    st = s[i * Wp + j:]
                    for q in range(L):
                        acc[q] += wv * st[q]
        o = out[n, f]
        for y in range(OH):
            o_row = o[y]
            a = acc[y * Wp:]
            for xx in range(OW):
                o_row[xx] = _relu_if(a[xx], relu, zero)


@njit(**JIT)
def _wide_im2col(src, KH, KW, Wp, L, cols, col0):
    """cols[(c, i, j), col0 + q] = src[c, q + i * Wp + j] for q in [0, L): one contiguous copy per row."""
    C = src.shape[0]
    row = 0
    for c in range(C):
        s = src[c]
        for i in range(KH):
            for j in range(KW):
                tap = s[i * Wp + j:]
                dst = cols[row, col0:]
                for q in range(L):
                    dst[q] = tap[q]
                row += 1


@njit(**JIT)
def _wide_cols(x, KH, KW, ph, pw, L, cols, lo, hi):
    """Wide-coordinate im2col of images [lo, hi) into cols (C*KH*KW, (hi - lo) * L)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Wp = W + 2 * pw
    if ph > 0 or pw > 0:
        xp = np.empty((C, (H + 2 * ph) * Wp), dtype=x.dtype)
        for n in range(lo, hi):
            _pad_image(x[n], ph, pw, xp)
            _wide_im2col(xp, KH, KW, Wp, L, cols, (n - lo) * L)
    else:
        for n in range(lo, hi):
            _wide_im2col(x[n].reshape(C, H * W), KH, KW, Wp, L, cols, (n - lo) * L)


@njit(**JIT)
def _wide_bias_scatter(res, b, Wp, L, out, relu, lo, hi):
    """out[n, f, y, x] = res[f, (n - lo) * L + y * Wp + x] + b[f] (ReLU of it when relu): drops the garbage
    columns."""
    F, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    zero = np.zeros(1, dtype=out.dtype)[0]
    for n in range(lo, hi):
        col0 = (n - lo) * L
        for f in range(F):
            bf = b[f]
            o = out[n, f]
            for y in range(OH):
                r = res[f, col0 + y * Wp:]
                o_row = o[y]
                for xx in range(OW):
                    o_row[xx] = _relu_if(r[xx] + bf, relu, zero)


def _wide_forward_gemm(x, w2, b, KH, KW, ph, pw, out, relu, lo, hi):
    """im2col + GEMM stride-1 convolution for images [lo, hi) (ReLU on the way out when relu)."""
    Wp = x.shape[3] + 2 * pw
    L = (out.shape[2] - 1) * Wp + out.shape[3]
    cols = np.empty((w2.shape[1], (hi - lo) * L), dtype=x.dtype)
    _wide_cols(x, KH, KW, ph, pw, L, cols, lo, hi)
    _wide_bias_scatter(w2 @ cols, b, Wp, L, out, relu, lo, hi)


@njit(**JIT)
def _wide_dout(dout_nf, Wp, L, dst, col0):
    """dst[col0 + y * Wp + x] = dout_nf[y, x]; the garbage columns get zeros so they add nothing."""
    OH, OW = dout_nf.shape
    for y in range(OH):
        base = col0 + y * Wp
        src = dout_nf[y]
        d = dst[base:]
        for xx in range(OW):
            d[xx] = src[xx]
        if y < OH - 1:
            for q in range(base + OW, base + Wp):
                dst[q] = 0.0


@njit(**JIT)
def _wide_col2im_crop(dcols, col0, KH, KW, ph, pw, H, W, L, dxp, dx_n):
    """dxp (C, Hp * Wp) = sum of the taps' shifted rows of dcols; dx_n (C, H, W) = dxp without its border."""
    C = dx_n.shape[0]
    Wp = W + 2 * pw
    dxp[:, :] = 0.0
    row = 0
    for c in range(C):
        d = dxp[c]
        for i in range(KH):
            for j in range(KW):
                dst = d[i * Wp + j:i * Wp + j + L]
                s = dcols[row, col0:col0 + L]
                for q in range(L):
                    dst[q] += s[q]
                row += 1
        for y in range(H):
            src = d[(y + ph) * Wp + pw:]
            dst = dx_n[c, y]
            for xx in range(W):
                dst[xx] = src[xx]


@njit(**JIT)
def _wide_douts(dout, Wp, L, dmat, lo, hi):
    """dmat (F, (hi - lo) * L) = dout of images [lo, hi) in wide coordinates."""
    for n in range(lo, hi):
        for f in range(dout.shape[1]):
            _wide_dout(dout[n, f], Wp, L, dmat[f], (n - lo) * L)


@njit(**JIT)
def _wide_col2ims(dcols, KH, KW, ph, pw, L, dx, lo, hi):
    """dx[n] for images [lo, hi) from the wide-coordinate column gradients dcols."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    dxp = np.empty((C, (H + 2 * ph) * (W + 2 * pw)), dtype=dx.dtype)
    for n in range(lo, hi):
        _wide_col2im_crop(dcols, (n - lo) * L, KH, KW, ph, pw, H, W, L, dxp, dx[n])


@njit(**JIT)
def _wide_backward_into(x, w2t, dout, KH, KW, ph, pw, need_dx, dx, cols, dmat, dcols, dw, db, lo, hi):
    """Weight (dw (F, C*KH*KW)), bias (db (F,)) and, when need_dx, input gradients (into dx) of a stride-1
    convolution for images [lo, hi), in one compiled call (it holds no GIL: BLAS through np.dot). cols
    (C*KH*KW, width), dmat (F, width) and dcols (C*KH*KW, width, only used when need_dx) are scratch with
    width = (hi - lo) * L."""
    Wp = x.shape[3] + 2 * pw
    L = (dout.shape[2] - 1) * Wp + dout.shape[3]
    _wide_cols(x, KH, KW, ph, pw, L, cols, lo, hi)
    _wide_douts(dout, Wp, L, dmat, lo, hi)
    np.dot(dmat, cols.T, dw)
    _row_sums(dmat, db)
    if need_dx:
        np.dot(w2t, dmat, dcols)
        _wide_col2ims(dcols, KH, KW, ph, pw, L, dx, lo, hi)


def _wide_scratch(x, w2t, dout, pw, need_dx, lo, hi):
    """The calling thread's (cols, dmat, dcols) scratch for _wide_backward_into on images [lo, hi)."""
    Wp = x.shape[3] + 2 * pw
    width = (hi - lo) * ((dout.shape[2] - 1) * Wp + dout.shape[3])
    rows = w2t.shape[0]
    return (thread_buffer((rows, width), x.dtype, "wide cols"),
            thread_buffer((dout.shape[1], width), x.dtype, "wide dmat"),
            thread_buffer((rows, width) if need_dx else (1, 1), x.dtype, "wide dcols"))


def _wide_backward_gemm(x, w2t, dout, KH, KW, ph, pw, need_dx, dx, dw_parts, db_parts, slot, lo, hi):
    """Weight, bias and (when need_dx) input gradients of a stride-1 convolution for images [lo, hi): the
    thread's scratch buffers, then one compiled call; the partial sums go to slot[lo] of dw_parts, db_parts."""
    k = slot[lo]
    _wide_backward_into(x, w2t, dout, KH, KW, ph, pw, need_dx, dx, *_wide_scratch(x, w2t, dout, pw, need_dx, lo, hi),
                        dw_parts[k], db_parts[k], lo, hi)
