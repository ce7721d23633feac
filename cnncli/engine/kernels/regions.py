"""Training passes that run a convolution and the 2 x 2 max pooling after its ReLU in one parallel region.

Handing chunks to the worker threads costs tens of microseconds per region on a small machine (a wake-up of
each thread and a wait for the last chunk), as much as a whole pooling pass over a small map takes. So in
training a conv -> ReLU -> pool2 block runs as one region per pass: each chunk of images is convolved and then
pooled (forward), or routed back through the pooling and ReLU and then through the convolution (backward),
while its maps are still in the worker's cache. Each step is the stand-alone kernel's own code on the same
images, so the results are theirs bit for bit, for any thread count (`tests/test_train_fusion.py`).

On the paths M1 takes (the direct 1-channel convolution, the wide GEMM backward and Winograd) each thread makes
ONE compiled call per region, which claims chunks from an atomic counter until none are left (run_claimed):
every return from compiled code takes the GIL back, and with two threads that can mean waiting for the other thread's Python and waking it
(a futex call, tens of microseconds on a small VM). Chunk boundaries are the stand-alone kernels' (shapes only),
each chunk's partial sums go to that chunk's slot, and which thread runs a chunk changes nothing it computes.
"""

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.claim import _fetch_add
from cnncli.engine.kernels.checks import _check_conv, _expect
from cnncli.engine.kernels.conv import _backward_plan, _forward_plan
from cnncli.engine.kernels.pooling import _maxpool2_forward_chunk, _maxpool_backward_chunk
from cnncli.engine.kernels.scratch import thread_buffer
from cnncli.engine.kernels.threads import _bounds, _run, run_claimed
from cnncli.engine.kernels.wide import _wide_backward_gemm, _wide_backward_into, _wide_forward_direct
from cnncli.engine.kernels.winograd import (_planes, _wino_backward_chunk, _wino_backward_into, _wino_chunk,
                                            _wino_chunk_into)


def _pool_shape(out):
    return (out.shape[0], out.shape[1], out.shape[2] // 2, out.shape[3] // 2)


def _chunk_bounds(n, n_chunks):
    """(chunks, 2) int64 [lo, hi) of the non-empty chunks _run makes of range(n), in its order."""
    return np.array([b for b in _bounds(n, max(1, min(n, n_chunks))) if b[1] > b[0]], dtype=np.int64).reshape(-1, 2)


def _forward_chunk(conv_fn, conv_args, per_image, out, pooled, argmax, lo, hi):
    """Images [lo, hi): the convolution's chunk, then the pooling's (two compiled calls: the general paths)."""
    conv_fn(*conv_args, lo * per_image, hi * per_image)
    _maxpool2_forward_chunk(out, pooled, argmax, lo * out.shape[1], hi * out.shape[1])


@njit(**JIT)
def _direct_pool_chunks(x, w, b, ph, pw, out, pooled, argmax, bounds, counter):
    """The chunks of bounds this thread claims from counter: direct convolution with ReLU, then 2 x 2 max pooling."""
    F = w.shape[0]
    k = _fetch_add(counter)
    while k < bounds.shape[0]:
        lo, hi = bounds[k, 0] * F, bounds[k, 1] * F
        _wide_forward_direct(x, w, b, ph, pw, out, True, lo, hi)
        _maxpool2_forward_chunk(out, pooled, argmax, lo, hi)
        k = _fetch_add(counter)


def _direct_pool(x, w, b, ph, pw, out, pooled, argmax, bounds, counter):
    _direct_pool_chunks(x, w, b, ph, pw, out, pooled, argmax, bounds, counter)


@njit(**JIT)
def _wino_pool_chunks(x, U, b, ph, pw, TH, TW, V, M, out, pooled, argmax, bounds, counter):
    """The chunks of bounds this thread claims from counter: Winograd convolution with ReLU, then 2 x 2 max pooling."""
    F = out.shape[1]
    k = _fetch_add(counter)
    while k < bounds.shape[0]:
        lo, hi = bounds[k, 0], bounds[k, 1]
        _wino_chunk_into(x, U, b, ph, pw, TH, TW, V, M, out, True, lo, hi)
        _maxpool2_forward_chunk(out, pooled, argmax, lo * F, hi * F)
        k = _fetch_add(counter)


def _largest(bounds):
    return int((bounds[:, 1] - bounds[:, 0]).max())


def _wino_pool(x, U, b, ph, pw, TH, TW, out, pooled, argmax, bounds, counter):
    T = _largest(bounds) * TH * TW  # this thread's planes, sized for the largest chunk
    V, _ = _planes(x.shape[1], T, x.dtype, "V")
    M, _ = _planes(U.shape[1], T, x.dtype, "M")
    _wino_pool_chunks(x, U, b, ph, pw, TH, TW, V, M, out, pooled, argmax, bounds, counter)


def conv2d_relu_maxpool2(x, w, b, stride, padding, out, pooled, argmax):
    """Training forward of convolution, ReLU and 2 x 2 stride-2 max pooling, in one parallel region.

    x (N, C, H, W), w (F, C, KH, KW), b (F,) as conv2d_forward; out (N, F, OH, OW) gets the ReLU'd convolution
    (conv2d_forward with relu=True), pooled (N, F, OH // 2, OW // 2) and argmax (int32, pooled's shape) what
    maxpool_forward writes from out, bit for bit. All C-contiguous, one float dtype (argmax int32).
    """
    _check_conv(x, w, b, stride, padding, out, "out")
    _expect("pooled", pooled, _pool_shape(out), x.dtype)
    _expect("argmax", argmax, _pool_shape(out), np.int32)
    fn, total, args, n_chunks = _forward_plan(x, w, b, stride, padding, out, True)
    # Forward chunks never add across images, so splitting the conv's items by whole images changes nothing.
    claimed = {_wide_forward_direct: _direct_pool, _wino_chunk: _wino_pool}.get(fn)
    if claimed is not None:
        bounds = _chunk_bounds(x.shape[0], n_chunks)
        run_claimed(claimed, len(bounds), *args[:-1], pooled, argmax, bounds)  # args end with relu (True)
    else:
        _run(_forward_chunk, x.shape[0], fn, args, total // x.shape[0], out, pooled, argmax, n_chunks=n_chunks)


def _backward_chunk(dpooled, argmax, pooled, dconv, conv_fn, conv_args, lo, hi):
    """Images [lo, hi): the pooling's and ReLU's gradient, then the convolution's chunk (the general paths)."""
    C = dconv.shape[1]
    _maxpool_backward_chunk(dpooled, argmax, True, pooled, dconv, lo * C, hi * C)
    conv_fn(*conv_args, lo, hi)


@njit(**JIT)
def _pool_wide_backward_chunks(dpooled, argmax, pooled, dconv, x, w2t, KH, KW, ph, pw, need_dx, dx, cols, dmat,
                               dcols, dw_parts, db_parts, bounds, counter):
    """The chunks of bounds this thread claims from counter: pooling and ReLU backward, then _wide_backward_into; cols,
    dmat and dcols are flat scratch for the largest chunk, chunk k's partial sums go to dw_parts[k], db_parts[k]."""
    F, rows = dconv.shape[1], w2t.shape[0]
    L = (dconv.shape[2] - 1) * (x.shape[3] + 2 * pw) + dconv.shape[3]
    k = _fetch_add(counter)
    while k < bounds.shape[0]:
        lo, hi = bounds[k, 0], bounds[k, 1]
        width = (hi - lo) * L
        _maxpool_backward_chunk(dpooled, argmax, True, pooled, dconv, lo * F, hi * F)
        dc = dcols[:rows * width].reshape(rows, width) if need_dx else dcols[:1].reshape(1, 1)
        _wide_backward_into(x, w2t, dconv, KH, KW, ph, pw, need_dx, dx, cols[:rows * width].reshape(rows, width),
                            dmat[:F * width].reshape(F, width), dc, dw_parts[k], db_parts[k], lo, hi)
        k = _fetch_add(counter)


def _pool_wide_backward(dpooled, argmax, pooled, dconv, x, w2t, _dout, KH, KW, ph, pw, need_dx, dx, dw_parts,
                        db_parts, bounds, counter):
    width = _largest(bounds) * ((dconv.shape[2] - 1) * (x.shape[3] + 2 * pw) + dconv.shape[3])
    rows = w2t.shape[0]
    cols = thread_buffer((rows * width,), x.dtype, "wide cols")
    dmat = thread_buffer((dconv.shape[1] * width,), x.dtype, "wide dmat")
    dcols = thread_buffer((rows * width if need_dx else 1,), x.dtype, "wide dcols")
    _pool_wide_backward_chunks(dpooled, argmax, pooled, dconv, x, w2t, KH, KW, ph, pw, need_dx, dx, cols, dmat, dcols,
                               dw_parts, db_parts, bounds, counter)


@njit(**JIT)
def _pool_wino_backward_chunks(dpooled, argmax, pooled, dconv, x, Ut, ph, pw, TH, TW, need_dx, dx, V, dM, dU_parts,
                               db_parts, bounds, counter):
    """The chunks of bounds this thread claims from counter: pooling and ReLU backward, then _wino_backward_into."""
    F = dconv.shape[1]
    k = _fetch_add(counter)
    while k < bounds.shape[0]:
        lo, hi = bounds[k, 0], bounds[k, 1]
        _maxpool_backward_chunk(dpooled, argmax, True, pooled, dconv, lo * F, hi * F)
        _wino_backward_into(x, dconv, Ut, ph, pw, TH, TW, need_dx, dx, V, dM, dU_parts[k], db_parts[k], lo, hi)
        k = _fetch_add(counter)


def _pool_wino_backward(dpooled, argmax, pooled, dconv, x, _dout, Ut, ph, pw, TH, TW, need_dx, dx, dU_parts,
                        db_parts, bounds, counter):
    T = _largest(bounds) * TH * TW
    V, _ = _planes(x.shape[1], T, x.dtype, "V")
    dM, _ = _planes(dconv.shape[1], T, x.dtype, "dM")
    _pool_wino_backward_chunks(dpooled, argmax, pooled, dconv, x, Ut, ph, pw, TH, TW, need_dx, dx, V, dM, dU_parts,
                               db_parts, bounds, counter)


def maxpool2_relu_conv2d_backward(dpooled, argmax, pooled, x, w, stride, padding, dconv, dx=None):
    """Training backward of conv2d_relu_maxpool2, in one parallel region; returns (dw, db) as conv2d_backward.

    dpooled (N, F, PH, PW) is the gradient at the pooled output, argmax and pooled what the forward pass wrote;
    dconv (N, F, OH, OW) gets the gradient at the convolution's output (maxpool_backward through the ReLU,
    bit for bit), and dx (N, C, H, W), when given, the gradient at x. Chunks of images follow
    conv2d_backward's shape-only split, so dw and db are its sums bit for bit, for any thread count.
    """
    _check_conv(x, w, None, stride, padding, dconv, "dconv")
    for name, a, dtype in (("dpooled", dpooled, x.dtype), ("argmax", argmax, np.int32), ("pooled", pooled, x.dtype)):
        _expect(name, a, _pool_shape(dconv), dtype)
    if dx is not None:
        _expect("dx", dx, x.shape, x.dtype)
    fn, args, n_chunks, finish = _backward_plan(x, w, dconv, stride, padding, dx)
    # args start with (x, w2t or dout, ...) and end with (dw parts, db parts, slot), as the plan's chunk function
    # takes them; the claimed versions take the same, with the chunk bounds in place of slot.
    claimed = {_wide_backward_gemm: _pool_wide_backward, _wino_backward_chunk: _pool_wino_backward}.get(fn)
    if claimed is not None:
        bounds = _chunk_bounds(x.shape[0], n_chunks)
        run_claimed(claimed, len(bounds), dpooled, argmax, pooled, dconv, *args[:-1], bounds)
    else:
        _run(_backward_chunk, x.shape[0], dpooled, argmax, pooled, dconv, fn, args, n_chunks=n_chunks)
    return finish()
