"""Winograd F(2x2, 3x3) convolution, forward and backward, for 3 x 3 stride-1 layers with 4+ input channels."""

import threading

import numpy as np
from numba import njit

from cnncli.config import CHUNKS, JIT
from cnncli.engine.kernels.elementwise import _relu_if
from cnncli.engine.kernels.sums import _sum_parts
from cnncli.engine.kernels.threads import _bounds


# ---------------------------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3) for 3 x 3 stride-1 convolutions with 4 or more input channels (Lavin & Gray 2015).
#
# Each 2 x 2 output tile comes from a 4 x 4 input tile d: Y = A^T [ (G g G^T) * (B^T d B) ] A. Summed over input
# channels, the element-wise product becomes 16 independent GEMMs, M[k] (F, tiles) = U[k] (F, C) @ V[k] (C, tiles):
# 16 multiplies per tile per (f, c) where the direct form needs 36. The transforms are additions only (G holds
# halves, exact in binary). Both gradients go back through the transposed transforms: the weight gradient from
# dM (the output tiles' gradients) and V, the input gradient from dV[k] = U[k]^T dM[k]. Against float64
# direct convolution the float32 results differ by about 1e-6 of the output's scale (tests pin 1e-5).
# ---------------------------------------------------------------------------------------------------------------

@njit(**JIT)
def _wino_weights(w, U):
    """U (16, F, C) = G g G^T of each 3 x 3 filter g = w[f, c], flattened row-major."""
    F, C = w.shape[0], w.shape[1]
    t = np.empty((4, 3), dtype=w.dtype)
    half = 0.5
    for f in range(F):
        for c in range(C):
            g = w[f, c]
            for j in range(3):  # t = G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2
                t[0, j] = g[0, j]
                t[1, j] = (g[0, j] + g[1, j] + g[2, j]) * half
                t[2, j] = (g[0, j] - g[1, j] + g[2, j]) * half
                t[3, j] = g[2, j]
            for i in range(4):  # U = t G^T, the same combination along the other axis
                U[4 * i, f, c] = t[i, 0]
                U[4 * i + 1, f, c] = (t[i, 0] + t[i, 1] + t[i, 2]) * half
                U[4 * i + 2, f, c] = (t[i, 0] - t[i, 1] + t[i, 2]) * half
                U[4 * i + 3, f, c] = t[i, 2]


@njit(**JIT)
def _wino_input(x, ph, pw, TH, TW, V, lo, hi):
    """V[k, c * T + t] = (B^T d B)[k] for the 4 x 4 tile t of channel c of images [lo, hi) (zero padding);
    T = (hi - lo) * TH * TW tiles, tile t = (n - lo) * TH * TW + ty * TW + tx starts at padded (2 ty, 2 tx)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Hp, Wp = 2 * TH + 2, 2 * TW + 2
    d = np.zeros((Hp, Wp), dtype=x.dtype)  # the padded channel; the border stays zero
    T = (hi - lo) * TH * TW
    y_hi, x_hi = min(H, Hp - ph), min(W, Wp - pw)  # input rows and columns that land inside d
    for n in range(lo, hi):
        base = (n - lo) * TH * TW
        for c in range(C):
            img = x[n, c]
            for y in range(y_hi):
                row = d[y + ph, pw:]
                irow = img[y]
                for q in range(x_hi):
                    row[q] = irow[q]
            for ty in range(TH):
                r0, r1, r2, r3 = d[2 * ty], d[2 * ty + 1], d[2 * ty + 2], d[2 * ty + 3]
                for tx in range(TW):
                    q = 2 * tx
                    # B^T d: rows r0 - r2, r1 + r2, r2 - r1, r1 - r3; then the same along the columns.
                    a0 = r0[q] - r2[q]; a1 = r0[q + 1] - r2[q + 1]; a2 = r0[q + 2] - r2[q + 2]; a3 = r0[q + 3] - r2[q + 3]
                    b0 = r1[q] + r2[q]; b1 = r1[q + 1] + r2[q + 1]; b2 = r1[q + 2] + r2[q + 2]; b3 = r1[q + 3] + r2[q + 3]
                    e0 = r2[q] - r1[q]; e1 = r2[q + 1] - r1[q + 1]; e2 = r2[q + 2] - r1[q + 2]; e3 = r2[q + 3] - r1[q + 3]
                    h0 = r1[q] - r3[q]; h1 = r1[q + 1] - r3[q + 1]; h2 = r1[q + 2] - r3[q + 2]; h3 = r1[q + 3] - r3[q + 3]
                    ct = c * T + base + ty * TW + tx
                    V[0, ct] = a0 - a2; V[1, ct] = a1 + a2; V[2, ct] = a2 - a1; V[3, ct] = a1 - a3
                    V[4, ct] = b0 - b2; V[5, ct] = b1 + b2; V[6, ct] = b2 - b1; V[7, ct] = b1 - b3
                    V[8, ct] = e0 - e2; V[9, ct] = e1 + e2; V[10, ct] = e2 - e1; V[11, ct] = e1 - e3
                    V[12, ct] = h0 - h2; V[13, ct] = h1 + h2; V[14, ct] = h2 - h1; V[15, ct] = h1 - h3


@njit(**JIT)
def _wino_output(M, b, TH, TW, out, relu, lo, hi):
    """out[n, f] = A^T m A + b[f] for every 2 x 2 output tile of images [lo, hi); M is (16, F * T) as V.
    relu=True writes ReLU of that (the rule of activation_forward) instead."""
    F, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    T = (hi - lo) * TH * TW
    zero = np.zeros(1, dtype=out.dtype)[0]
    for n in range(lo, hi):
        base = (n - lo) * TH * TW
        for f in range(F):
            o = out[n, f]
            bf = b[f]
            for ty in range(TH):
                y = 2 * ty
                for tx in range(TW):
                    t = f * T + base + ty * TW + tx
                    # A^T m: rows m0 + m1 + m2 and m1 - m2 - m3; then the same along the columns.
                    s0 = M[0, t] + M[4, t] + M[8, t]
                    s1 = M[1, t] + M[5, t] + M[9, t]
                    s2 = M[2, t] + M[6, t] + M[10, t]
                    s3 = M[3, t] + M[7, t] + M[11, t]
                    u0 = M[4, t] - M[8, t] - M[12, t]
                    u1 = M[5, t] - M[9, t] - M[13, t]
                    u2 = M[6, t] - M[10, t] - M[14, t]
                    u3 = M[7, t] - M[11, t] - M[15, t]
                    xq = 2 * tx
                    o[y, xq] = _relu_if(s0 + s1 + s2 + bf, relu, zero)
                    if xq + 1 < OW:
                        o[y, xq + 1] = _relu_if(s1 - s2 - s3 + bf, relu, zero)
                    if y + 1 < OH:
                        o[y + 1, xq] = _relu_if(u0 + u1 + u2 + bf, relu, zero)
                        if xq + 1 < OW:
                            o[y + 1, xq + 1] = _relu_if(u1 - u2 - u3 + bf, relu, zero)


_scratch = threading.local()  # each worker thread's plane buffers, by purpose and shape
_SCRATCH_ENTRIES = 24


def _planes(rows, T, dtype, purpose):
    """A (16, plane) buffer and its (16, rows, T) view. The 16 planes are read and written as parallel streams:
    a plane stride of a power of two puts them all in the same cache sets (measured 5x slower at 128 KiB), so
    it is rounded to an odd multiple of 64 bytes.

    The buffer is the calling thread's own for this purpose (a name: buffers in use at the same time need
    different ones) and shape, reused from call to call: allocating fresh ones cost 4-5% of a backward pass.
    Its contents are undefined; every caller writes the whole view before reading it."""
    plane = -(-rows * T // 16) * 16
    if (plane // 16) % 2 == 0:
        plane += 16
    cache = getattr(_scratch, "bufs", None)
    if cache is None or len(cache) > _SCRATCH_ENTRIES:  # bounded: batch shapes change rarely, but they may
        cache = _scratch.bufs = {}
    key = (purpose, plane, np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = np.empty((16, plane), dtype)
    return buf, buf[:, :rows * T].reshape(16, rows, T)


@njit(**JIT)
def _wino_gemms(U, V, M, T):
    """M[k] (F, T) = U[k] (F, C) @ V[k] (C, T) for the 16 planes of the (16, plane) buffers V and M (BLAS)."""
    F, C = U.shape[1], U.shape[2]
    for k in range(16):
        np.dot(U[k], V[k, :C * T].reshape(C, T), M[k, :F * T].reshape(F, T))


@njit(**JIT)
def _wino_products_into(x, U, ph, pw, TH, TW, V, M, lo, hi):
    """M (16, F * T) = the 16 GEMMs U[k] @ V[k] over the TH x TW tiles of images [lo, hi) of x, V its input
    transform (both (16, plane) buffers, see _planes): one compiled call."""
    _wino_input(x, ph, pw, TH, TW, V, lo, hi)
    _wino_gemms(U, V, M, (hi - lo) * TH * TW)


@njit(**JIT)
def _wino_chunk_into(x, U, b, ph, pw, TH, TW, V, M, out, relu, lo, hi):
    _wino_products_into(x, U, ph, pw, TH, TW, V, M, lo, hi)
    _wino_output(M, b, TH, TW, out, relu, lo, hi)


def _wino_chunk(x, U, b, ph, pw, TH, TW, out, relu, lo, hi):
    """Winograd convolution of images [lo, hi) of x into out (with ReLU when relu): one compiled call."""
    T = (hi - lo) * TH * TW
    V, _ = _planes(x.shape[1], T, x.dtype, "V")
    M, _ = _planes(U.shape[1], T, x.dtype, "M")
    _wino_chunk_into(x, U, b, ph, pw, TH, TW, V, M, out, relu, lo, hi)


@njit(**JIT)
def _wino_dout(dout, TH, TW, dM, lo, hi, db):
    """dM[k, f * T + t] = (A dy A^T)[k] for the 2 x 2 tile t of dout[n, f], images [lo, hi) (zeros past the edge):
    the transpose of _wino_output, so that dU[k] = dM[k] @ V[k]^T is the gradient of U. db[f] = the sum of
    dout[lo:hi, f] (tile by tile, images in order), in the same pass."""
    F, OH, OW = dout.shape[1], dout.shape[2], dout.shape[3]
    T = (hi - lo) * TH * TW
    zero = np.zeros(1, dtype=dout.dtype)[0]
    db[:] = 0.0
    for n in range(lo, hi):
        base = (n - lo) * TH * TW
        for f in range(F):
            g = dout[n, f]
            s = zero
            for ty in range(TH):
                y = 2 * ty
                for tx in range(TW):
                    xq = 2 * tx
                    y00 = g[y, xq]
                    y01 = g[y, xq + 1] if xq + 1 < OW else zero
                    y10 = g[y + 1, xq] if y + 1 < OH else zero
                    y11 = g[y + 1, xq + 1] if y + 1 < OH and xq + 1 < OW else zero
                    # p = A y: rows y0, y0 + y1, y0 - y1, -y1; then dM = p A^T: (a, b) -> (a, a + b, a - b, -b).
                    p10, p11 = y00 + y10, y01 + y11
                    p20, p21 = y00 - y10, y01 - y11
                    t = f * T + base + ty * TW + tx
                    dM[0, t] = y00; dM[1, t] = y00 + y01; dM[2, t] = y00 - y01; dM[3, t] = -y01
                    dM[4, t] = p10; dM[5, t] = p10 + p11; dM[6, t] = p10 - p11; dM[7, t] = -p11
                    dM[8, t] = p20; dM[9, t] = p20 + p21; dM[10, t] = p20 - p21; dM[11, t] = -p21
                    dM[12, t] = -y10; dM[13, t] = -(y10 + y11); dM[14, t] = y11 - y10; dM[15, t] = y11
                    s += (y00 + y01) + (y10 + y11)
            db[f] += s


@njit(**JIT)
def _wino_weight_grad(dU, dw):
    """dw[f, c] (3 x 3) = G^T X G for X = dU[:, f, c] as a 4 x 4 tile: the gradient through U = G g G^T."""
    C = dw.shape[1]
    t = np.empty((3, 4), dtype=dw.dtype)
    half = 0.5
    for fc in range(dw.shape[0] * C):
        f, c = fc // C, fc % C
        for j in range(4):  # t = G^T X: rows X0 + (X1 + X2) / 2, (X1 - X2) / 2, (X1 + X2) / 2 + X3
            x0, x1, x2, x3 = dU[j, f, c], dU[4 + j, f, c], dU[8 + j, f, c], dU[12 + j, f, c]
            t[0, j] = x0 + (x1 + x2) * half
            t[1, j] = (x1 - x2) * half
            t[2, j] = (x1 + x2) * half + x3
        for i in range(3):  # dw = t G, the same combination along the other axis
            dw[f, c, i, 0] = t[i, 0] + (t[i, 1] + t[i, 2]) * half
            dw[f, c, i, 1] = (t[i, 1] - t[i, 2]) * half
            dw[f, c, i, 2] = (t[i, 1] + t[i, 2]) * half + t[i, 3]


@njit(**JIT)
def _wino_input_grad(dV, ph, pw, TH, TW, dx, lo, hi):
    """dx[n, c] for images [lo, hi) from dV (16, C * T) laid out as _wino_input's V: the transpose of that input
    transform. Each 4 x 4 tile B dV B^T is added into a padded plane (tiles overlap by 2 rows and columns, added
    in tile order), whose inside is dx; input pixels no tile reads get 0."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    Hp, Wp = 2 * TH + 2, 2 * TW + 2
    d = np.empty((Hp, Wp), dtype=dx.dtype)
    T = (hi - lo) * TH * TW
    for n in range(lo, hi):
        base = (n - lo) * TH * TW
        for c in range(C):
            d[:, :] = 0.0
            for ty in range(TH):
                r0, r1, r2, r3 = d[2 * ty], d[2 * ty + 1], d[2 * ty + 2], d[2 * ty + 3]
                for tx in range(TW):
                    ct = c * T + base + ty * TW + tx
                    q = 2 * tx
                    # B v: rows v0, v1 - v2 + v3, v1 + v2 - v0, -v3 (the transpose of B^T d), per column j.
                    p00 = dV[0, ct]; p01 = dV[1, ct]; p02 = dV[2, ct]; p03 = dV[3, ct]
                    p10 = dV[4, ct] - dV[8, ct] + dV[12, ct]; p11 = dV[5, ct] - dV[9, ct] + dV[13, ct]
                    p12 = dV[6, ct] - dV[10, ct] + dV[14, ct]; p13 = dV[7, ct] - dV[11, ct] + dV[15, ct]
                    p20 = dV[4, ct] + dV[8, ct] - dV[0, ct]; p21 = dV[5, ct] + dV[9, ct] - dV[1, ct]
                    p22 = dV[6, ct] + dV[10, ct] - dV[2, ct]; p23 = dV[7, ct] + dV[11, ct] - dV[3, ct]
                    p30 = -dV[12, ct]; p31 = -dV[13, ct]; p32 = -dV[14, ct]; p33 = -dV[15, ct]
                    # ... then the same combination along each row, added into the plane.
                    r0[q] += p00; r0[q + 1] += p01 - p02 + p03; r0[q + 2] += p01 + p02 - p00; r0[q + 3] -= p03
                    r1[q] += p10; r1[q + 1] += p11 - p12 + p13; r1[q + 2] += p11 + p12 - p10; r1[q + 3] -= p13
                    r2[q] += p20; r2[q + 1] += p21 - p22 + p23; r2[q + 2] += p21 + p22 - p20; r2[q + 3] -= p23
                    r3[q] += p30; r3[q + 1] += p31 - p32 + p33; r3[q + 2] += p31 + p32 - p30; r3[q + 3] -= p33
            g = dx[n, c]
            for y in range(H):
                row = g[y]
                if y + ph < Hp:
                    src = d[y + ph]
                    for xq in range(W):
                        row[xq] = src[xq + pw] if xq + pw < Wp else 0.0
                else:
                    row[:] = 0.0


@njit(**JIT)
def _wino_backward_into(x, dout, Ut, ph, pw, TH, TW, need_dx, dx, V, dM, dU, db, lo, hi):
    """The chunk's whole backward pass in one compiled call (see _wino_backward_chunk); dU (16, F, C), db (F,)."""
    F, C = dout.shape[1], x.shape[1]
    T = (hi - lo) * TH * TW
    _wino_input(x, ph, pw, TH, TW, V, lo, hi)
    _wino_dout(dout, TH, TW, dM, lo, hi, db)
    for k in range(16):
        np.dot(dM[k, :F * T].reshape(F, T), V[k, :C * T].reshape(C, T).T, dU[k])
    if need_dx:
        _wino_gemms(Ut, dM, V, T)  # V's planes are free once dU is formed
        _wino_input_grad(V, ph, pw, TH, TW, dx, lo, hi)


def _wino_backward_chunk(x, dout, Ut, ph, pw, TH, TW, need_dx, dx, dU_parts, db_parts, slot, lo, hi):
    """Winograd weight, bias and (when need_dx) input gradients for images [lo, hi).

    The input gradient goes back through the forward pass's own transforms: dV[k] = U[k]^T dM[k] (Ut holds the
    U[k]^T), then the transpose of the input transform. It reuses dM, which the weight gradient needs anyway,
    so it costs one GEMM and one tile pass (a full correlation with the flipped filters cost a second input
    transform, of dout, over more tiles)."""
    T = (hi - lo) * TH * TW
    V, _ = _planes(x.shape[1], T, x.dtype, "V")
    dM, _ = _planes(dout.shape[1], T, x.dtype, "dM")
    k = slot[lo]
    _wino_backward_into(x, dout, Ut, ph, pw, TH, TW, need_dx, dx, V, dM, dU_parts[k], db_parts[k], lo, hi)


# Winograd pays where the transformed tiles of one image stay in cache; beyond this, im2col + GEMM is faster.
_WINO_MAX_IMAGE_BYTES = 1 << 20
_WINO_CHUNK_BYTES = 256 * 1024


def _wino_fits(C, KH, KW, OH, OW, ph, pw):
    """Whether a stride-1 convolution takes the Winograd path (also used for its input gradient)."""
    return (KH == 3 and KW == 3 and C >= 4 and ph <= 2 and pw <= 2
            and 16 * C * ((OH + 1) // 2) * ((OW + 1) // 2) * 4 <= _WINO_MAX_IMAGE_BYTES)


def _wino_plan(x, w, b, ph, pw, out, relu=False):
    """(chunk function, item count, arguments, chunk count) of out = conv(x, w) + b through Winograd F(2x2, 3x3);
    chunks of images sized from the shapes only."""
    N, C = x.shape[:2]
    OH, OW = out.shape[2], out.shape[3]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    U = np.empty((16, w.shape[0], C), dtype=x.dtype)
    _wino_weights(w, U)
    per_image = 16 * C * TH * TW * 4
    # About _WINO_CHUNK_BYTES of tiles per chunk, the count rounded up to a multiple of CHUNKS: with 9 equal chunks
    # (M1's second conv) one of 2 threads ran 5 and the other waited for it, 25% of the region.
    n_chunks = -(-N * per_image // _WINO_CHUNK_BYTES)
    return _wino_chunk, N, (x, U, b, ph, pw, TH, TW, out, relu), max(1, min(N, -(-n_chunks // CHUNKS) * CHUNKS))


def _wino_backward_plan(x, w, dout, ph, pw, dx):
    """conv2d_backward through Winograd F(2x2, 3x3), as (chunk function, arguments, chunk count, finish): the
    chunks write partial dU and db; finish() adds them in chunk order and returns (dw = G^T dU G, db)."""
    N, C = x.shape[:2]
    F = w.shape[0]
    TH, TW = (dout.shape[2] + 1) // 2, (dout.shape[3] + 1) // 2
    per_image = 16 * max(C, F) * TH * TW * 4
    n_chunks = max(CHUNKS, min(N, -(-N * per_image // _WINO_CHUNK_BYTES)))
    starts = [lo for lo, hi in _bounds(N, min(N, n_chunks)) if hi > lo]
    slot = {lo: k for k, lo in enumerate(starts)}
    dU_parts = np.empty((len(starts), 16, F, C), dtype=x.dtype)
    db_parts = np.empty((len(starts), F), dtype=x.dtype)
    Ut = np.empty((16, C, F), dtype=x.dtype)
    if dx is not None:  # U[k]^T: the transforms of the filters with input and output channels swapped
        _wino_weights(np.ascontiguousarray(w.transpose(1, 0, 2, 3)), Ut)
    dx_arg = dx if dx is not None else np.empty((1, 1, 1, 1), dtype=x.dtype)

    def finish():
        dU, db = _sum_parts(dU_parts, db_parts)
        dw = np.empty(w.shape, dtype=x.dtype)
        _wino_weight_grad(dU, dw)
        return dw, db

    args = (x, dout, Ut, ph, pw, TH, TW, dx is not None, dx_arg, dU_parts, db_parts, slot)
    return _wino_backward_chunk, args, n_chunks, finish
