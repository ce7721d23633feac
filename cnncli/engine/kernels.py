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
  forward pass is direct (3 x 3 filters unrolled); otherwise, and for every backward pass, im2col (one row copy
  per tap) + one GEMM per chunk of images. Other strides use the older general loops.
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
def _im2col(img, kh, kw, sh, sw, ph, pw, oh, ow, cols, col0):
    """Write image (C, H, W)'s patches into cols[:, col0 : col0 + oh*ow]; rows are (c, i, j)."""
    C, H, W = img.shape
    row = 0
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                x_lo, x_hi = _valid_range(ow, sw, j - pw, W)
                for y in range(oh):
                    src = y * sh + i - ph
                    base = col0 + y * ow
                    if src < 0 or src >= H:
                        for x in range(ow):
                            cols[row, base + x] = 0.0
                        continue
                    for x in range(x_lo):
                        cols[row, base + x] = 0.0
                    for x in range(x_lo, x_hi):
                        cols[row, base + x] = img[c, src, x * sw + j - pw]
                    for x in range(x_hi, ow):
                        cols[row, base + x] = 0.0
                row += 1


@njit(**JIT)
def _col2im_add(cols, col0, kh, kw, sh, sw, ph, pw, oh, ow, img):
    """Inverse of _im2col: add cols[:, col0 : col0 + oh*ow] back into image (C, H, W)."""
    C, H, W = img.shape
    row = 0
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                x_lo, x_hi = _valid_range(ow, sw, j - pw, W)
                for y in range(oh):
                    src = y * sh + i - ph
                    if src < 0 or src >= H:
                        continue
                    base = col0 + y * ow
                    for x in range(x_lo, x_hi):
                        img[c, src, x * sw + j - pw] += cols[row, base + x]
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


def conv2d_forward(x, w, b, stride, padding, out):
    """out (N, F, OH, OW) = cross-correlation of x (N, C, H, W) with w (F, C, KH, KW), plus b (F,).

    stride and padding are (sh, sw) and (ph, pw); padding is zeros. All arrays C-contiguous, one float dtype.
    """
    _check_conv(x, w, b, stride, padding, out, "out")
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = out.shape[2], out.shape[3]
    if sh == 1 and sw == 1:
        if C <= 3:
            _run(_wide_forward_direct, N * F, x, w, b, ph, pw, out, n_chunks=2 * _threads)
        else:
            _run(_wide_forward_gemm, N, x, w.reshape(F, C * KH * KW), b, KH, KW, ph, pw, out,
                 n_chunks=_gemm_chunks(N, C * KH * KW, (OH - 1) * (x.shape[3] + 2 * pw) + OW))
    else:
        w2 = w.reshape(F, C * KH * KW)
        _run(_conv_gemm_chunk, N, x, w2, b, sh, sw, ph, pw, KH, KW, out.reshape(N, F, OH * OW), OH, OW)


@njit(**JIT)
def _strided_col2ims(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx, lo, hi):
    for n in range(lo, hi):
        dx[n] = 0.0
        _col2im_add(dcols, (n - lo) * OH * OW, KH, KW, sh, sw, ph, pw, OH, OW, dx[n])


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
    dw, db = dw_parts[0].copy(), db_parts[0].copy()
    for k in range(1, len(starts)):
        dw += dw_parts[k]
        db += db_parts[k]
    return dw.reshape(w.shape), db


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


def maxpool_forward(x, size, stride, padding, out, argmax):
    """out (N, C, OH, OW) = window maxima of x (N, C, H, W); argmax (int32, same shape) gets y * W + x of each.

    size, stride, padding are (h, w) pairs; padding counts as -inf.
    """
    _input("x", x, 4)
    if padding[0] > size[0] // 2 or padding[1] > size[1] // 2:
        raise ValueError(f"padding {padding} may be at most half the window {size}")
    shape = (*x.shape[:2], *_out_shape(x.shape, size, stride, padding))
    _expect("out", out, shape, x.dtype)
    _expect("argmax", argmax, shape, np.int32)
    N, C = x.shape[:2]
    if tuple(size) == (2, 2) and tuple(stride) == (2, 2) and tuple(padding) == (0, 0):
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
