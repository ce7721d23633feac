"""Numba kernels: convolution, max pooling and element-wise activations on NCHW arrays.

Arrays and integers in, arrays out, no I/O. The public functions check their arguments' shapes, dtypes and
layout (ValueError) and then call private compiled cores that trust them; the layers in `cnncli.engine.layers`
allocate the outputs. Every kernel is generic over float32 (production) and float64 (gradient checks).

Design, from measurements on a 2-core machine:
- Each compiled kernel is serial and works on a range [lo, hi) of images, channels or elements; the
  public functions split the work into chunks and run them on a small pool of Python threads (the
  kernels release the GIL). Serial kernels compile in about a second where numba's parallel mode
  kernels took 4-17 s each, which matters for a cold first `cnncli predict`.
- Stride-1 convolutions work in "wide" coordinates (see _pad_image below): every filter tap is one contiguous
  shift of the padded image, so inner loops are long, unit-stride and vectorized. With 1-3 input channels the
  forward pass is direct (one vectorized pass over the output per filter tap, any filter size); otherwise, and
  for every backward pass, im2col (one row copy per tap) + one GEMM per chunk of images. Other strides use
  im2col + GEMM with general index arithmetic.
- 3 x 3 stride-1 convolutions with 4 or more input channels (the bulk of a training step) use Winograd
  F(2x2, 3x3) instead, forward and backward (see that section below): 16 GEMMs, 2.25x fewer multiplies.
- The GEMMs are numpy's matmul, called between compiled steps: numba never binds BLAS itself, so no process
  imports scipy (0.3-0.5 s here). BLAS is single-threaded (see cnncli.config) and releases the GIL, so
  exactly one thread pool is busy at any time.
- Inner loops index arrays with the bare loop variable (views carry the offsets): numba adds a wrap-around check
  to any index it cannot prove non-negative, and that check alone stops LLVM from vectorizing the loop.
- Results are bit-identical for any --threads: where chunks' results are added together (weight and bias
  gradients), chunk boundaries depend only on the array shapes and the partial sums are added in chunk order.
  Kernels whose work items are independent (the direct forward pass: one (image, filter) pair each) may split
  by the thread count, since no item's arithmetic depends on which chunk it is in.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from cnncli.config import CHUNKS, JIT

_pool = None
_threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def set_threads(n: int) -> None:
    """Use n worker threads (n >= 1) for every later kernel call."""
    global _pool, _threads
    if n != _threads and _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _threads = max(1, int(n))


def get_threads() -> int:
    """The number of worker threads kernels run on."""
    return _threads


def _bounds(total, n_chunks):
    return [(t * total // n_chunks, (t + 1) * total // n_chunks) for t in range(n_chunks)]


def _run(fn, total, *args, n_chunks=CHUNKS):
    """Call fn(*args, lo, hi) over chunks of range(total); chunks run on the worker threads.

    The calling thread works too and the pool has threads - 1 workers, so exactly `threads` threads are busy
    (a pool of `threads` workers plus the caller oversubscribed the cores). Chunks are handed out one at a time
    to whichever thread is free; which thread runs a chunk never changes what the chunk computes.
    """
    global _pool
    chunks = [b for b in _bounds(total, max(1, min(total, n_chunks))) if b[1] > b[0]]
    helpers = min(_threads, len(chunks)) - 1
    if helpers <= 0:
        for lo, hi in chunks:
            fn(*args, lo, hi)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="cnncli-kernel")
    pending = iter(chunks)
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                chunk = next(pending, None)
            if chunk is None:
                return
            fn(*args, *chunk)

    futures = [_pool.submit(work) for _ in range(helpers)]
    try:
        work()
    finally:
        for f in futures:
            f.result()


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
def _bias_scatter(res, b, out3, lo, hi):
    """out3[n, f, :] = res[f, (n - lo) * P : (n - lo + 1) * P] + b[f] for images [lo, hi); out3 is (N, F, P)."""
    F, P = out3.shape[1], out3.shape[2]
    for n in range(lo, hi):
        off = (n - lo) * P
        for f in range(F):
            bf = b[f]
            dst = out3[n, f]
            src = res[f, off:]
            for p in range(P):
                dst[p] = src[p] + bf


def _conv_gemm_chunk(x, w2, b, sh, sw, ph, pw, KH, KW, out3, OH, OW, lo, hi):
    cols = np.empty((w2.shape[1], (hi - lo) * OH * OW), dtype=x.dtype)
    _strided_cols(x, KH, KW, sh, sw, ph, pw, OH, OW, cols, lo, hi)
    _bias_scatter(w2 @ cols, b, out3, lo, hi)


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
def _wide_forward_direct(x, w, b, ph, pw, out, lo, hi):
    """Direct stride-1 convolution for few input channels; work items are (image, filter) pairs."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    L = (OH - 1) * Wp + OW
    xp = np.empty((C, Hp * Wp), dtype=x.dtype)
    acc = np.empty(L, dtype=x.dtype)
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
                o_row[xx] = a[xx]


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
def _wide_bias_scatter(res, b, Wp, L, out, lo, hi):
    """out[n, f, y, x] = res[f, (n - lo) * L + y * Wp + x] + b[f]: drops the garbage columns."""
    F, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    for n in range(lo, hi):
        col0 = (n - lo) * L
        for f in range(F):
            bf = b[f]
            o = out[n, f]
            for y in range(OH):
                r = res[f, col0 + y * Wp:]
                o_row = o[y]
                for xx in range(OW):
                    o_row[xx] = r[xx] + bf


def _wide_forward_gemm(x, w2, b, KH, KW, ph, pw, out, lo, hi):
    """im2col + GEMM stride-1 convolution for images [lo, hi)."""
    Wp = x.shape[3] + 2 * pw
    L = (out.shape[2] - 1) * Wp + out.shape[3]
    cols = np.empty((w2.shape[1], (hi - lo) * L), dtype=x.dtype)
    _wide_cols(x, KH, KW, ph, pw, L, cols, lo, hi)
    _wide_bias_scatter(w2 @ cols, b, Wp, L, out, lo, hi)


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


def _wide_backward_gemm(x, w2t, dout, KH, KW, ph, pw, need_dx, dx, dw_parts, db_parts, slot, lo, hi):
    """Weight, bias and (when need_dx) input gradients of a stride-1 convolution for images [lo, hi)."""
    Wp = x.shape[3] + 2 * pw
    L = (dout.shape[2] - 1) * Wp + dout.shape[3]
    width = (hi - lo) * L
    cols = np.empty((w2t.shape[0], width), dtype=x.dtype)
    dmat = np.empty((dout.shape[1], width), dtype=x.dtype)
    _wide_cols(x, KH, KW, ph, pw, L, cols, lo, hi)
    _wide_douts(dout, Wp, L, dmat, lo, hi)
    np.matmul(dmat, cols.T, out=dw_parts[slot[lo]])
    _row_sums(dmat, db_parts[slot[lo]])
    if need_dx:
        _wide_col2ims(w2t @ dmat, KH, KW, ph, pw, L, dx, lo, hi)


# ---------------------------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3) for 3 x 3 stride-1 convolutions with 4 or more input channels (Lavin & Gray 2015).
#
# Each 2 x 2 output tile comes from a 4 x 4 input tile d: Y = A^T [ (G g G^T) * (B^T d B) ] A. Summed over input
# channels, the element-wise product becomes 16 independent GEMMs, M[k] (F, tiles) = U[k] (F, C) @ V[k] (C, tiles):
# 16 multiplies per tile per (f, c) where the direct form needs 36. The transforms are additions only (G holds
# halves, exact in binary). The same routine gives the input gradient: a full correlation of dout with the
# filters flipped and transposed, and the weight gradient comes through the transposed transforms. Against float64
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
def _wino_output(M, b, TH, TW, out, lo, hi):
    """out[n, f] = A^T m A + b[f] for every 2 x 2 output tile of images [lo, hi); M is (16, F * T) as V."""
    F, OH, OW = out.shape[1], out.shape[2], out.shape[3]
    T = (hi - lo) * TH * TW
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
                    o[y, xq] = s0 + s1 + s2 + bf
                    if xq + 1 < OW:
                        o[y, xq + 1] = s1 - s2 - s3 + bf
                    if y + 1 < OH:
                        o[y + 1, xq] = u0 + u1 + u2 + bf
                        if xq + 1 < OW:
                            o[y + 1, xq + 1] = u1 - u2 - u3 + bf


def _planes(rows, T, dtype):
    """A (16, plane) buffer and its (16, rows, T) view. The 16 planes are read and written as parallel streams:
    a plane stride of a power of two puts them all in the same cache sets (measured 5x slower at 128 KiB), so
    it is rounded to an odd multiple of 64 bytes."""
    plane = -(-rows * T // 16) * 16
    if (plane // 16) % 2 == 0:
        plane += 16
    buf = np.empty((16, plane), dtype)
    return buf, buf[:, :rows * T].reshape(16, rows, T)


def _wino_chunk(x, U, b, ph, pw, TH, TW, out, lo, hi):
    """Winograd convolution of images [lo, hi) of x into out."""
    T = (hi - lo) * TH * TW
    V, V3 = _planes(x.shape[1], T, x.dtype)
    M, M3 = _planes(U.shape[1], T, x.dtype)
    _wino_input(x, ph, pw, TH, TW, V, lo, hi)
    np.matmul(U, V3, out=M3)
    _wino_output(M, b, TH, TW, out, lo, hi)


@njit(**JIT)
def _wino_dout(dout, TH, TW, dM, lo, hi):
    """dM[k, f * T + t] = (A dy A^T)[k] for the 2 x 2 tile t of dout[n, f], images [lo, hi) (zeros past the edge):
    the transpose of _wino_output, so that dU[k] = dM[k] @ V[k]^T is the gradient of U."""
    F, OH, OW = dout.shape[1], dout.shape[2], dout.shape[3]
    T = (hi - lo) * TH * TW
    zero = np.zeros(1, dtype=dout.dtype)[0]
    for n in range(lo, hi):
        base = (n - lo) * TH * TW
        for f in range(F):
            g = dout[n, f]
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
def _dout_sums(dout, lo, hi, db):
    """db[f] = the sum of dout[lo:hi, f] over images and pixels, in a fixed order."""
    F, P = dout.shape[1], dout.shape[2] * dout.shape[3]
    db[:] = 0.0
    for n in range(lo, hi):
        for f in range(F):
            db[f] += _sum_lanes(dout[n, f].reshape(P), P)


def _wino_backward_chunk(x, dout, U_flip, ph, pw, TH, TW, need_dx, dx, dU_parts, db_parts, slot, lo, hi):
    """Winograd weight, bias and (when need_dx) input gradients for images [lo, hi)."""
    T = (hi - lo) * TH * TW
    V, V3 = _planes(x.shape[1], T, x.dtype)
    dM, dM3 = _planes(dout.shape[1], T, x.dtype)
    _wino_input(x, ph, pw, TH, TW, V, lo, hi)
    _wino_dout(dout, TH, TW, dM, lo, hi)
    np.matmul(dM3, V3.transpose(0, 2, 1), out=dU_parts[slot[lo]])
    _dout_sums(dout, lo, hi, db_parts[slot[lo]])
    if need_dx:  # a full correlation of dout with the flipped, transposed filters
        H, W = dx.shape[2], dx.shape[3]
        _wino_chunk(dout, U_flip, np.zeros(dx.shape[1], dx.dtype), 2 - ph, 2 - pw, (H + 1) // 2, (W + 1) // 2,
                    dx, lo, hi)


# Winograd pays where the transformed tiles of one image stay in cache; beyond this, im2col + GEMM is faster.
_WINO_MAX_IMAGE_BYTES = 1 << 20
_WINO_CHUNK_BYTES = 256 * 1024


def _wino_fits(C, KH, KW, OH, OW, ph, pw):
    """Whether a stride-1 convolution takes the Winograd path (also used for its input gradient)."""
    return (KH == 3 and KW == 3 and C >= 4 and ph <= 2 and pw <= 2
            and 16 * C * ((OH + 1) // 2) * ((OW + 1) // 2) * 4 <= _WINO_MAX_IMAGE_BYTES)


def _wino_plan(x, w, b, ph, pw, out):
    """(chunk function, item count, arguments, chunk count) of out = conv(x, w) + b through Winograd F(2x2, 3x3);
    chunks of images sized from the shapes only."""
    N, C = x.shape[:2]
    OH, OW = out.shape[2], out.shape[3]
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    U = np.empty((16, w.shape[0], C), dtype=x.dtype)
    _wino_weights(w, U)
    per_image = 16 * C * TH * TW * 4
    return _wino_chunk, N, (x, U, b, ph, pw, TH, TW, out), max(1, min(N, -(-N * per_image // _WINO_CHUNK_BYTES)))


_LANES = 16


@njit(**JIT)
def _sum_lanes(v, n):
    """Sum of v[:n] over 16 interleaved lanes, then the lanes in order: vectorizable and the same on every run."""
    acc = np.zeros(_LANES, dtype=v.dtype)
    blocks = n // _LANES
    for blk in range(blocks):
        q0 = blk * _LANES
        for l in range(_LANES):
            acc[l] += v[q0 + l]
    for q in range(blocks * _LANES, n):
        acc[q - blocks * _LANES] += v[q]
    s = acc[0]
    for l in range(1, _LANES):
        s += acc[l]
    return s


@njit(**JIT)
def _row_sums(m, out):
    """out[r] = the sum of row r of m (R, K), in a fixed order."""
    for r in range(m.shape[0]):
        out[r] = _sum_lanes(m[r], m.shape[1])


def _gemm_chunks(n_images, k_rows, cols_per_image):
    """Chunk count for the im2col + GEMM paths, from shapes only: about 512 KiB of columns per chunk, at least CHUNKS."""
    per_image = max(1, k_rows * cols_per_image * 4)
    return max(1, min(n_images, max(CHUNKS, (n_images * per_image) // (512 * 1024))))


def conv2d_forward(x, w, b, stride, padding, out, relu=False):
    """out (N, F, OH, OW) = cross-correlation of x (N, C, H, W) with w (F, C, KH, KW), plus b (F,).

    stride and padding are (sh, sw) and (ph, pw); padding is zeros. All arrays C-contiguous, one float dtype.
    relu=True applies ReLU to out as activation_forward would (inference fusion: no second pass over memory).
    """
    _check_conv(x, w, b, stride, padding, out, "out")
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = out.shape[2], out.shape[3]
    if sh == 1 and sw == 1 and _wino_fits(C, KH, KW, OH, OW, ph, pw):
        fn, total, args, n_chunks = _wino_plan(x, w, b, ph, pw, out)
    elif sh == 1 and sw == 1 and C <= 3:
        fn, total, args, n_chunks = _wide_forward_direct, N * F, (x, w, b, ph, pw, out), 2 * _threads
    elif sh == 1 and sw == 1:
        fn, total, args = _wide_forward_gemm, N, (x, w.reshape(F, C * KH * KW), b, KH, KW, ph, pw, out)
        n_chunks = _gemm_chunks(N, C * KH * KW, (OH - 1) * (x.shape[3] + 2 * pw) + OW)
    else:
        fn, total, n_chunks = _conv_gemm_chunk, N, CHUNKS
        args = (x, w.reshape(F, C * KH * KW), b, sh, sw, ph, pw, KH, KW, out.reshape(N, F, OH * OW), OH, OW)
    if relu:
        fn = _then_relu(fn, out.reshape(total, -1))
    _run(fn, total, *args, n_chunks=n_chunks)


def _then_relu(fn, items):
    """A chunk function that runs fn and then ReLU in place over its own items (rows of items), still in cache."""
    def chunk(*args):
        fn(*args)
        part = items[args[-2]:args[-1]].reshape(-1)
        _relu_chunk(part, part, 0, part.size)
    return chunk


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


def conv2d_backward(x, w, dout, stride, padding, dx=None):
    """Gradients of conv2d_forward given dout (N, F, OH, OW), all of x's float dtype and C-contiguous.

    Returns (dw (F, C, KH, KW), db (F,)); fills dx (N, C, H, W) when one is given. Each chunk of images writes
    its own partial dw and db; the partials are then added in chunk order, and chunk boundaries depend on the
    shapes only, so the sums are the same bit for bit for any thread count.
    """
    _check_conv(x, w, None, stride, padding, dout, "dout")
    if dx is not None:
        _expect("dx", dx, x.shape, x.dtype)
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = dout.shape[2], dout.shape[3]
    w2t = np.ascontiguousarray(w.reshape(F, C * KH * KW).T)
    if sh == 1 and sw == 1 and _wino_fits(C, KH, KW, OH, OW, ph, pw) \
            and (dx is None or _wino_fits(F, KH, KW, x.shape[2], x.shape[3], 2 - ph, 2 - pw)):
        return _wino_backward(x, w, dout, ph, pw, dx)
    if sh == 1 and sw == 1:
        n_chunks = _gemm_chunks(N, C * KH * KW, (OH - 1) * (x.shape[3] + 2 * pw) + OW)
        fn, args = _wide_backward_gemm, (x, w2t, dout, KH, KW, ph, pw)
    else:
        n_chunks = CHUNKS
        fn, args = _conv_backward_chunk, (x, w2t, dout.reshape(N, F, OH * OW), sh, sw, ph, pw, KH, KW, OH, OW)
    starts = [lo for lo, hi in _bounds(N, min(N, n_chunks)) if hi > lo]
    slot = {lo: k for k, lo in enumerate(starts)}  # a chunk's partial sums go to the slot of its first image
    dw_parts = np.empty((len(starts), F, C * KH * KW), dtype=x.dtype)
    db_parts = np.empty((len(starts), F), dtype=x.dtype)
    dx_arg = dx if dx is not None else np.empty((1, 1, 1, 1), dtype=x.dtype)
    _run(fn, N, *args, dx is not None, dx_arg, dw_parts, db_parts, slot, n_chunks=n_chunks)
    dw, db = _sum_parts(dw_parts, db_parts)
    return dw.reshape(w.shape), db


def _sum_parts(dw_parts, db_parts):
    """The chunks' partial sums added in chunk order (the same order for any thread count)."""
    dw, db = dw_parts[0].copy(), db_parts[0].copy()
    for k in range(1, len(dw_parts)):
        dw += dw_parts[k]
        db += db_parts[k]
    return dw, db


def _wino_backward(x, w, dout, ph, pw, dx):
    """conv2d_backward through Winograd F(2x2, 3x3): dU[k] = sum over tiles of dM[k] V[k]^T, dw = G^T dU G."""
    N, C = x.shape[:2]
    F = w.shape[0]
    TH, TW = (dout.shape[2] + 1) // 2, (dout.shape[3] + 1) // 2
    per_image = 16 * max(C, F) * TH * TW * 4
    n_chunks = max(CHUNKS, min(N, -(-N * per_image // _WINO_CHUNK_BYTES)))
    starts = [lo for lo, hi in _bounds(N, min(N, n_chunks)) if hi > lo]
    slot = {lo: k for k, lo in enumerate(starts)}
    dU_parts = np.empty((len(starts), 16, F, C), dtype=x.dtype)
    db_parts = np.empty((len(starts), F), dtype=x.dtype)
    U_flip = np.empty((16, C, F), dtype=x.dtype)
    if dx is not None:
        _wino_weights(np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)), U_flip)
    dx_arg = dx if dx is not None else np.empty((1, 1, 1, 1), dtype=x.dtype)
    _run(_wino_backward_chunk, N, x, dout, U_flip, ph, pw, TH, TW, dx is not None, dx_arg, dU_parts, db_parts, slot,
         n_chunks=n_chunks)
    dU, db = _sum_parts(dU_parts, db_parts)
    dw = np.empty(w.shape, dtype=x.dtype)
    _wino_weight_grad(dU, dw)
    return dw, db


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
def _maxpool_backward_chunk(dout, argmax, dx, lo, hi):
    C, HW = dx.shape[1], dx.shape[2] * dx.shape[3]
    OHW = dout.shape[2] * dout.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        # Flat views: argmax is already a flat index, so no division per element.
        d = dx[n, c].reshape(HW)
        g = dout[n, c].reshape(OHW)
        a = argmax[n, c].reshape(OHW)
        d[:] = 0.0
        for p in range(OHW):
            d[a[p]] += g[p]


def maxpool_backward(dout, argmax, dx):
    """Overwrite dx (N, C, H, W) with dout (N, C, OH, OW) routed to each window's maximum.

    argmax (int32, dout's shape) must come from maxpool_forward on an input of dx's shape: its values index dx.
    """
    _input("dx", dx, 4)
    _expect("dout", dout, (*dx.shape[:2], *dout.shape[2:]), dx.dtype)
    _expect("argmax", argmax, dout.shape, np.int32)
    _run(_maxpool_backward_chunk, dx.shape[0] * dx.shape[1], dout, argmax, dx)



# Element-wise kernels slice their [lo, hi) range first and index the slices from 0: with `range(lo, hi)` numba
# cannot prove the index non-negative, adds a wrap-around check per access, and the loop stays scalar.

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
    return max(1, min(_threads, size // _MIN_ELEMENTWISE_CHUNK))


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
