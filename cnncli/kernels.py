"""Numba kernels: convolution, max pooling and element-wise activations on NCHW arrays.

Arrays and integers in, arrays out: no validation, no I/O, no Python objects. The layers in
`cnncli.layers` check shapes, allocate outputs and call the public functions here. Every kernel is
generic over float32 (production) and float64 (gradient checks).

Design, from measurements on a 2-core machine:
- Each compiled kernel is serial and works on a range [lo, hi) of images, channels or elements; the
  public functions split the work into chunks and run them on a small pool of Python threads (the
  kernels release the GIL). Serial kernels compile in about a second where numba `parallel=True`
  kernels took 4-17 s each, which matters for a cold first `cnncli predict`.
- Convolutions with many input channels use im2col + one GEMM per chunk of images; BLAS itself is
  single-threaded (see cnncli.config), so exactly one thread pool is busy at any time.
- Convolutions with 1-3 input channels go direct: im2col would copy more than it saves.
- Chunk boundaries depend only on the array shapes (config.CHUNKS), never on the thread count, and
  weight-gradient partial sums are added in chunk order: results are bit-identical for any --threads.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from .config import CHUNKS, JIT

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
    """Call fn(*args, lo, hi) over chunks of range(total); chunks run on the worker threads."""
    global _pool
    chunks = [b for b in _bounds(total, max(1, min(total, n_chunks))) if b[1] > b[0]]
    if _threads == 1 or len(chunks) == 1:
        for lo, hi in chunks:
            fn(*args, lo, hi)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_threads, thread_name_prefix="cnncli-kernel")
    futures = [_pool.submit(fn, *args, lo, hi) for lo, hi in chunks[1:]]
    fn(*args, *chunks[0])
    for f in futures:
        f.result()


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
def _conv_gemm_chunk(x, w2, b, sh, sw, ph, pw, KH, KW, out3, OH, OW, lo, hi):
    ohw = OH * OW
    F = w2.shape[0]
    cols = np.empty((w2.shape[1], (hi - lo) * ohw), dtype=x.dtype)
    for n in range(lo, hi):
        _im2col(x[n], KH, KW, sh, sw, ph, pw, OH, OW, cols, (n - lo) * ohw)
    res = np.dot(w2, cols)
    for n in range(lo, hi):
        off = (n - lo) * ohw
        for f in range(F):
            bf = b[f]
            dst = out3[n, f]
            for p in range(ohw):
                dst[p] = res[f, off + p] + bf


@njit(**JIT)
def _conv_direct_chunk(x, w, b, sh, sw, ph, pw, out, lo, hi):
    # One (image, filter) pair per step, so a single image still splits across threads.
    C, W = x.shape[1], x.shape[3]
    H = x.shape[2]
    F, _, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    for nf in range(lo, hi):
        n = nf // F
        f = nf % F
        o = out[n, f]
        o[:, :] = b[f]
        for c in range(C):
            img = x[n, c]
            for i in range(KH):
                for j in range(KW):
                    wv = w[f, c, i, j]
                    x_lo, x_hi = _valid_range(OW, sw, j - pw, W)
                    for y in range(OH):
                        src = y * sh + i - ph
                        if src < 0 or src >= H:
                            continue
                        orow = o[y]
                        irow = img[src]
                        for xo in range(x_lo, x_hi):
                            orow[xo] += wv * irow[xo * sw + j - pw]


def conv2d_forward(x, w, b, stride, padding, out):
    """out (N, F, OH, OW) = cross-correlation of x (N, C, H, W) with w (F, C, KH, KW), plus b (F,).

    stride and padding are (sh, sw) and (ph, pw); padding is zeros. All arrays C-contiguous, one dtype.
    """
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = out.shape[2], out.shape[3]
    if C <= 3:
        _run(_conv_direct_chunk, N * F, x, w, b, sh, sw, ph, pw, out, n_chunks=2 * _threads)
    else:
        w2 = w.reshape(F, C * KH * KW)
        _run(_conv_gemm_chunk, N, x, w2, b, sh, sw, ph, pw, KH, KW, out.reshape(N, F, OH * OW), OH, OW)


@njit(**JIT)
def _conv_backward_chunk(x, w2t, dout3, sh, sw, ph, pw, KH, KW, OH, OW, need_dx, dx, dw_parts, db_parts, lo, hi):
    F = dout3.shape[1]
    ohw = OH * OW
    width = (hi - lo) * ohw
    cols = np.empty((w2t.shape[0], width), dtype=x.dtype)
    dmat = np.empty((F, width), dtype=x.dtype)
    for n in range(lo, hi):
        _im2col(x[n], KH, KW, sh, sw, ph, pw, OH, OW, cols, (n - lo) * ohw)
        for f in range(F):
            dmat[f, (n - lo) * ohw:(n - lo + 1) * ohw] = dout3[n, f]
    # Partials are indexed by the chunk's first image, so each chunk owns its slot.
    dw_parts[lo] = np.dot(dmat, cols.T)
    for f in range(F):
        db_parts[lo, f] = dmat[f].sum()
    if need_dx:
        dcols = np.dot(w2t, dmat)
        for n in range(lo, hi):
            dx[n] = 0.0
            _col2im_add(dcols, (n - lo) * ohw, KH, KW, sh, sw, ph, pw, OH, OW, dx[n])


def conv2d_backward(x, w, dout, stride, padding, dx=None):
    """Gradients of conv2d_forward given dout (N, F, OH, OW).

    Returns (dw (F, C, KH, KW), db (F,)); fills dx (N, C, H, W) when one is given.
    """
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = dout.shape[2], dout.shape[3]
    w2t = np.ascontiguousarray(w.reshape(F, C * KH * KW).T)
    starts = [lo for lo, hi in _bounds(N, min(N, CHUNKS)) if hi > lo]
    # One partial slot per possible chunk start; only the slots at chunk starts are written and read.
    dw_parts = np.empty((N, F, C * KH * KW), dtype=x.dtype)
    db_parts = np.empty((N, F), dtype=x.dtype)
    need_dx = dx is not None
    dx_arg = dx if need_dx else np.empty((1, 1, 1, 1), dtype=x.dtype)
    _run(_conv_backward_chunk, N, x, w2t, dout.reshape(N, F, OH * OW), sh, sw, ph, pw, KH, KW, OH, OW,
         need_dx, dx_arg, dw_parts, db_parts)
    dw = dw_parts[starts[0]].copy()
    db = db_parts[starts[0]].copy()
    for s in starts[1:]:
        dw += dw_parts[s]
        db += db_parts[s]
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
            for xo in range(OW):
                best = -np.inf
                where = -1
                for i in range(kh):
                    r = y * sh + i - ph
                    if r < 0 or r >= H:
                        continue
                    for j in range(kw):
                        col = xo * sw + j - pw
                        if col < 0 or col >= W:
                            continue
                        v = img[r, col]
                        # `where < 0` keeps a valid index even when every value is NaN.
                        if v > best or where < 0:
                            best = v
                            where = r * W + col
                out[n, c, y, xo] = best
                argmax[n, c, y, xo] = where


def maxpool_forward(x, size, stride, padding, out, argmax):
    """out (N, C, OH, OW) = window maxima of x (N, C, H, W); argmax (int32, same shape) gets y * W + x of each.

    size, stride, padding are (h, w) pairs; padding counts as -inf.
    """
    N, C = x.shape[:2]
    _run(_maxpool_forward_chunk, N * C, x, size[0], size[1], stride[0], stride[1], padding[0], padding[1], out, argmax)


@njit(**JIT)
def _maxpool_backward_chunk(dout, argmax, dx, lo, hi):
    C, W = dx.shape[1], dx.shape[3]
    OH, OW = dout.shape[2], dout.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        d = dx[n, c]
        d[:, :] = 0.0
        for y in range(OH):
            for xo in range(OW):
                where = argmax[n, c, y, xo]
                d[where // W, where % W] += dout[n, c, y, xo]


def maxpool_backward(dout, argmax, dx):
    """Overwrite dx (N, C, H, W) with dout (N, C, OH, OW) routed to each window's maximum."""
    _run(_maxpool_backward_chunk, dx.shape[0] * dx.shape[1], dout, argmax, dx)


@njit(**JIT)
def _relu_chunk(x, out, lo, hi):
    for i in range(lo, hi):
        v = x[i]
        out[i] = v if v > 0 else 0.0


@njit(**JIT)
def _relu_backward_chunk(y, dy, dx, lo, hi):
    for i in range(lo, hi):
        dx[i] = dy[i] if y[i] > 0 else 0.0


@njit(**JIT)
def _tanh_chunk(x, out, lo, hi):
    for i in range(lo, hi):
        out[i] = np.tanh(x[i])


@njit(**JIT)
def _tanh_backward_chunk(y, dy, dx, lo, hi):
    for i in range(lo, hi):
        dx[i] = dy[i] * (1.0 - y[i] * y[i])


@njit(**JIT)
def _sigmoid_chunk(x, out, lo, hi):
    for i in range(lo, hi):
        v = x[i]
        # Two branches so that exp never overflows.
        if v >= 0:
            out[i] = 1.0 / (1.0 + np.exp(-v))
        else:
            e = np.exp(v)
            out[i] = e / (1.0 + e)


@njit(**JIT)
def _sigmoid_backward_chunk(y, dy, dx, lo, hi):
    for i in range(lo, hi):
        dx[i] = dy[i] * y[i] * (1.0 - y[i])


_ACTIVATIONS = {
    "relu": (_relu_chunk, _relu_backward_chunk),
    "tanh": (_tanh_chunk, _tanh_backward_chunk),
    "sigmoid": (_sigmoid_chunk, _sigmoid_backward_chunk),
}

# Element-wise work is memory-bound: split it only when a chunk is big enough to pay for a thread hand-off.
_MIN_ELEMENTWISE_CHUNK = 1 << 15


def _elementwise_chunks(size):
    return max(1, min(_threads, size // _MIN_ELEMENTWISE_CHUNK))


def activation_forward(kind, x, out):
    """out = f(x) element-wise for kind in relu | tanh | sigmoid; x and out C-contiguous, any shape."""
    flat = x.reshape(-1)
    _run(_ACTIVATIONS[kind][0], flat.size, flat, out.reshape(-1), n_chunks=_elementwise_chunks(flat.size))


def activation_backward(kind, y, dy, dx):
    """dx = dy * f'(.) expressed through the activation's output y; all C-contiguous, same shape."""
    flat = y.reshape(-1)
    _run(_ACTIVATIONS[kind][1], flat.size, flat, dy.reshape(-1), dx.reshape(-1),
         n_chunks=_elementwise_chunks(flat.size))
