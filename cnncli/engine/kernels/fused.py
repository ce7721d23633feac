"""Inference only: convolution + bias + ReLU + 2 x 2 max pooling (stride 2) in one pass per image.

The convolution's output map never goes through memory: each (image, filter) map is computed into a small
buffer that stays in L1 (direct path) or each Winograd output tile is pooled in the output transform (an F(2x2,
3x3) output tile is exactly one 2 x 2 pooling window; one vectorized loop per filter over a chunk's tiles), and
only the pooled values are written. ReLU and pooling
fold into one running maximum that starts at 0: max(0, v0, v1, v2, v3) over the window, NaNs never win, which
is what ReLU (NaN -> 0) followed by max pooling gives.

- Few input channels (1-3), stride 1: direct convolution in wide coordinates (see `wide`). For 3 x 3 filters
  the nine taps of two filters are one expression per output position, so each input value is loaded once for
  both and each sum is stored once (the general path loads and stores the accumulator once per tap).
- 3 x 3 stride-1 with 4+ input channels where Winograd fits: the `winograd` input transform and GEMMs, then a
  pooled output transform.
The arithmetic is the unfused kernels' own, in the same order (no FMA contraction, see cnncli.config), so the
pooled values equal convolution, ReLU and pooling run one after the other, bit for bit. Work items are
independent (one (image, filter) map, or one chunk of images whose chunk count depends on the shapes only), so
results are the same for any thread count too.
"""

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.checks import _expect, _input, _out_shape
from cnncli.engine.kernels.conv import conv2d_forward
from cnncli.engine.kernels.pooling import maxpool_forward
from cnncli.engine.kernels.threads import _run, get_threads, in_whole_chunk
from cnncli.engine.kernels.wide import _pad_image
from cnncli.engine.kernels.winograd import (_WINO_CHUNK_BYTES, _planes, _wino_fits, _wino_products_into,
                                            _wino_weights)


@njit(**JIT)
def _taps3x3_two(s, wc, vc, Wp, L, acc, acd, first, bf, bg):
    """acc[q] (+)= the 9 taps of filter slice wc (3, 3) over padded-flat channel s, and acd[q] those of vc; first:
    start from the biases bf and bg. One expression per output position (each input value loaded once for both
    filters, the sums kept in registers), summed in the order of the unfused kernel's tap loop (c, i, j)."""
    w00, w01, w02 = wc[0, 0], wc[0, 1], wc[0, 2]
    w10, w11, w12 = wc[1, 0], wc[1, 1], wc[1, 2]
    w20, w21, w22 = wc[2, 0], wc[2, 1], wc[2, 2]
    v00, v01, v02 = vc[0, 0], vc[0, 1], vc[0, 2]
    v10, v11, v12 = vc[1, 0], vc[1, 1], vc[1, 2]
    v20, v21, v22 = vc[2, 0], vc[2, 1], vc[2, 2]
    a0, a1, a2 = s[0:], s[1:], s[2:]
    b0, b1, b2 = s[Wp:], s[Wp + 1:], s[Wp + 2:]
    c0, c1, c2 = s[2 * Wp:], s[2 * Wp + 1:], s[2 * Wp + 2:]
    if first:
        for q in range(L):
            acc[q] = bf
            acd[q] = bg
    for q in range(L):
        p0, p1, p2, p3, p4, p5, p6, p7, p8 = a0[q], a1[q], a2[q], b0[q], b1[q], b2[q], c0[q], c1[q], c2[q]
        start = acc[q]
        other = acd[q]
        acc[q] = (start + w00 * p0 + w01 * p1 + w02 * p2 + w10 * p3 + w11 * p4 + w12 * p5
                  + w20 * p6 + w21 * p7 + w22 * p8)
        acd[q] = (other + v00 * p0 + v01 * p1 + v02 * p2 + v10 * p3 + v11 * p4 + v12 * p5
                  + v20 * p6 + v21 * p7 + v22 * p8)


@njit(**JIT)
def _taps_any(s, wc, Wp, L, acc, first, bf):
    """acc[q] (+)= the taps of one filter slice wc (KH, KW), any size: one pass over acc per tap (first: from bf)."""
    if first:
        for q in range(L):
            acc[q] = bf
    for i in range(wc.shape[0]):
        for j in range(wc.shape[1]):
            wv = wc[i, j]
            st = s[i * Wp + j:]
            for q in range(L):
                acc[q] += wv * st[q]


@njit(**JIT)
def _relu_pool2_rows(acc, Wp, o, pair):
    """o[py, px] = max(0, the 2 x 2 window at (2 py, 2 px) of the wide-coordinate map acc (row stride Wp)).

    Two vectorizable steps per pooled row: the maximum of the two rows (unit stride, into pair (2 * POW,)), then
    of neighbouring columns. The maximum is exact, so the order does not change any value."""
    POH, POW = o.shape
    zero = np.zeros(1, dtype=acc.dtype)[0]
    for py in range(POH):
        top = acc[2 * py * Wp:]
        bot = acc[(2 * py + 1) * Wp:]
        for j in range(2 * POW):
            t = top[j]
            u = bot[j]
            m = t if t > zero else zero
            pair[j] = u if u > m else m
        orow = o[py]
        for px in range(POW):
            a = pair[2 * px]
            c = pair[2 * px + 1]
            orow[px] = c if c > a else a


@njit(**JIT)
def _direct_pool_chunk(x, w, b, ph, pw, OH, OW, out, lo, hi):
    """Fused direct convolution for (image, filter) items [lo, hi) (item n * F + f): out[n, f] = pool2(relu(conv
    + b)). The image is padded once per image, the map of one filter lives in acc (L1-sized)."""
    C = x.shape[1]
    F, KH, KW = w.shape[0], w.shape[2], w.shape[3]
    Wp = x.shape[3] + 2 * pw
    L = (OH - 1) * Wp + OW
    xp = np.empty((C, (x.shape[2] + 2 * ph) * Wp), dtype=x.dtype)
    acc = np.empty(L, dtype=x.dtype)
    acd = np.empty(L, dtype=x.dtype)
    pair = np.empty(2 * (OW // 2), dtype=x.dtype)
    three = KH == 3 and KW == 3
    for n in range(lo // F, (hi - 1) // F + 1):
        _pad_image(x[n], ph, pw, xp)
        f, f_end = max(lo - n * F, 0), min(hi - n * F, F)
        while f < f_end:
            two = three and f + 1 < f_end
            g = f + 1 if two else f  # an odd last filter: computed twice, the copy in acd is not used
            for c in range(C):
                if three:
                    _taps3x3_two(xp[c], w[f, c], w[g, c], Wp, L, acc, acd, c == 0, b[f], b[g])
                else:
                    _taps_any(xp[c], w[f, c], Wp, L, acc, c == 0, b[f])
            _relu_pool2_rows(acc, Wp, out[n, f], pair)
            if two:
                _relu_pool2_rows(acd, Wp, out[n, f + 1], pair)
            f += 2 if two else 1


@njit(**JIT)
def _relu_max4(a, b, c, d, zero):
    """max(0, a, b, c, d) with NaNs never winning: ReLU (NaN -> 0) and then a 2 x 2 window's maximum (as
    selects, so that loops calling it vectorize)."""
    m = a if a > zero else zero
    m = b if b > m else m
    m = c if c > m else m
    return d if d > m else m


@njit(**JIT)
def _wino_pool_output(M, b, TH, TW, out, lo, hi):
    """out[n, f, ty, tx] = max(0, the 2 x 2 output tile (ty, tx) of A^T m A + b[f]) for images [lo, hi); M is
    (16, F * T) as in `winograd._wino_output`, whose arithmetic (and so whose values, bit for bit) this repeats.

    The fused pass computes only the tiles pooling keeps, so tile t of filter f is pooled value t of the images'
    (f) maps in order: one long unit-stride loop per filter over M's planes (vectorized) into `row`, then one
    contiguous copy per image."""
    F = out.shape[1]
    T = (hi - lo) * TH * TW
    TT = TH * TW
    zero = np.zeros(1, dtype=M.dtype)[0]
    row = np.empty(T, dtype=M.dtype)
    for f in range(F):
        bf = b[f]
        t0 = f * T
        m0, m1, m2, m3 = M[0, t0:], M[1, t0:], M[2, t0:], M[3, t0:]
        m4, m5, m6, m7 = M[4, t0:], M[5, t0:], M[6, t0:], M[7, t0:]
        m8, m9, m10, m11 = M[8, t0:], M[9, t0:], M[10, t0:], M[11, t0:]
        m12, m13, m14, m15 = M[12, t0:], M[13, t0:], M[14, t0:], M[15, t0:]
        for q in range(T):
            # A^T m: rows m0 + m1 + m2 and m1 - m2 - m3 (s, u); then the same along the columns.
            s0 = m0[q] + m4[q] + m8[q]
            s1 = m1[q] + m5[q] + m9[q]
            s2 = m2[q] + m6[q] + m10[q]
            s3 = m3[q] + m7[q] + m11[q]
            u0 = m4[q] - m8[q] - m12[q]
            u1 = m5[q] - m9[q] - m13[q]
            u2 = m6[q] - m10[q] - m14[q]
            u3 = m7[q] - m11[q] - m15[q]
            row[q] = _relu_max4(s0 + s1 + s2 + bf, s1 - s2 - s3 + bf, u0 + u1 + u2 + bf, u1 - u2 - u3 + bf, zero)
        for n in range(lo, hi):
            o = out[n, f].reshape(TT)
            r = row[(n - lo) * TT:]
            for q in range(TT):
                o[q] = r[q]


@njit(**JIT)
def _wino_pool_into(x, U, b, ph, pw, TH, TW, V, M, out, lo, hi, n_sub):
    """Winograd convolution + bias + ReLU + 2 x 2 pooling of images [lo, hi) of x into out (pooled shape), in
    n_sub sub-chunks of images (_bounds' split) whose tiles fit the (16, plane) scratch buffers V and M."""
    n = hi - lo
    for t in range(n_sub):
        a, z = lo + t * n // n_sub, lo + (t + 1) * n // n_sub
        if z > a:
            _wino_products_into(x, U, ph, pw, TH, TW, V, M, a, z)
            _wino_pool_output(M, b, TH, TW, out, a, z)


def _wino_pool_chunk(x, U, b, ph, pw, TH, TW, out, lo, hi, n_sub=1):
    """_wino_pool_into with the calling thread's scratch planes: one compiled call."""
    T = -(-(hi - lo) // n_sub) * TH * TW
    V, _ = _planes(x.shape[1], T, x.dtype, "V")
    M, _ = _planes(U.shape[1], T, x.dtype, "M")
    _wino_pool_into(x, U, b, ph, pw, TH, TW, V, M, out, lo, hi, n_sub)


def conv2d_relu_pool2(x, w, b, stride, padding, out):
    """out (N, F, OH // 2, OW // 2) = 2 x 2 max pooling (stride 2) of ReLU(conv2d_forward(x, w, b)), for inference.

    x (N, C, H, W), w (F, C, KH, KW), b (F,), all C-contiguous, one float dtype; (OH, OW) is the convolution's
    output size. Shapes no fused kernel covers (strides other than 1, 4+ channels where Winograd does not fit) run
    conv2d_forward with its fused ReLU into a scratch map, then the pooling kernel.
    """
    _input("x", x, 4)
    _input("w", w, 4)
    if w.dtype != x.dtype or w.shape[1] != x.shape[1]:
        raise ValueError(f"w: {w.dtype} {w.shape} does not fit x {x.dtype} {x.shape} (same dtype, w[1] == x[1])")
    _expect("b", b, (w.shape[0],), x.dtype)
    OH, OW = _out_shape(x.shape, w.shape[2:], stride, padding)
    _expect("out", out, (x.shape[0], w.shape[0], OH // 2, OW // 2), x.dtype)
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    ph, pw = padding
    if tuple(stride) == (1, 1) and _wino_fits(C, KH, KW, OH, OW, ph, pw):
        TH, TW = OH // 2, OW // 2  # only the tiles pooling keeps: an odd last row or column is never computed
        U = np.empty((16, F, C), dtype=x.dtype)
        _wino_weights(w, U)
        n_chunks = max(1, min(N, -(-N * 16 * C * TH * TW * 4 // _WINO_CHUNK_BYTES)))
        if in_whole_chunk():  # the same sub-chunks, serially, in one compiled call
            _wino_pool_chunk(x, U, b, ph, pw, TH, TW, out, 0, N, n_chunks)
        else:
            _run(_wino_pool_chunk, N, x, U, b, ph, pw, TH, TW, out, n_chunks=n_chunks)
    elif tuple(stride) == (1, 1) and C <= 3:
        # items are independent (one (image, filter) map each), so any split computes the same values
        _run(_direct_pool_chunk, N * F, x, w, b, ph, pw, OH, OW, out,
             n_chunks=1 if in_whole_chunk() else 2 * get_threads())
    else:
        full = np.empty((N, F, OH, OW), dtype=x.dtype)
        conv2d_forward(x, w, b, stride, padding, full, relu=True)
        maxpool_forward(full, (2, 2), (2, 2), (0, 0), out)
