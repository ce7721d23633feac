"""The public convolution functions: check the arguments, choose a path (Winograd, wide, im2col), run it."""

import numpy as np

from cnncli.config import CHUNKS
from cnncli.engine.kernels.checks import _check_conv, _expect
from cnncli.engine.kernels.im2col import _conv_backward_chunk, _conv_gemm_chunk
from cnncli.engine.kernels.sums import _sum_parts
from cnncli.engine.kernels.threads import _bounds, _run, get_threads
from cnncli.engine.kernels.wide import (_wide_backward_gemm, _wide_forward_direct,
                                        _wide_forward_gemm)
from cnncli.engine.kernels.winograd import _wino_backward_plan, _wino_fits, _wino_plan


def _gemm_chunks(n_images, k_rows, cols_per_image):
    """Chunk count for the im2col + GEMM paths, from shapes only: about 512 KiB of columns per chunk, at least CHUNKS."""
    per_image = max(1, k_rows * cols_per_image * 4)
    return max(1, min(n_images, max(CHUNKS, (n_images * per_image) // (512 * 1024))))


def conv2d_forward(x, w, b, stride, padding, out, relu=False):
    """out (N, F, OH, OW) = cross-correlation of x (N, C, H, W) with w (F, C, KH, KW), plus b (F,).

    stride and padding are (sh, sw) and (ph, pw); padding is zeros. All arrays C-contiguous, one float dtype.
    relu=True applies ReLU to out as activation_forward would, bit for bit, as each path writes its output (the
    model fuses a conv with the ReLU after it, in training and inference: no second pass over memory).
    """
    _check_conv(x, w, b, stride, padding, out, "out")
    fn, total, args, n_chunks = _forward_plan(x, w, b, stride, padding, out, relu)
    _run(fn, total, *args, n_chunks=n_chunks)


def _forward_plan(x, w, b, stride, padding, out, relu):
    """(chunk function, item count, arguments, chunk count) of conv2d_forward's path for these (checked) arrays.
    Items are images, or (image, filter) pairs on the direct path: item count // N per image."""
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = out.shape[2], out.shape[3]
    if sh == 1 and sw == 1 and _wino_fits(C, KH, KW, OH, OW, ph, pw):
        return _wino_plan(x, w, b, ph, pw, out, relu)
    if sh == 1 and sw == 1 and C <= 3:
        return _wide_forward_direct, N * F, (x, w, b, ph, pw, out, relu), 2 * get_threads()
    if sh == 1 and sw == 1:
        n_chunks = _gemm_chunks(N, C * KH * KW, (OH - 1) * (x.shape[3] + 2 * pw) + OW)
        return _wide_forward_gemm, N, (x, w.reshape(F, C * KH * KW), b, KH, KW, ph, pw, out, relu), n_chunks
    args = (x, w.reshape(F, C * KH * KW), b, sh, sw, ph, pw, KH, KW, out.reshape(N, F, OH * OW), OH, OW, relu)
    return _conv_gemm_chunk, N, args, CHUNKS


def conv2d_backward(x, w, dout, stride, padding, dx=None):
    """Gradients of conv2d_forward given dout (N, F, OH, OW), all of x's float dtype and C-contiguous.

    Returns (dw (F, C, KH, KW), db (F,)); fills dx (N, C, H, W) when one is given. Each chunk of images writes
    its own partial dw and db; the partials are then added in chunk order, and chunk boundaries depend on the
    shapes only, so the sums are the same bit for bit for any thread count.
    """
    _check_conv(x, w, None, stride, padding, dout, "dout")
    if dx is not None:
        _expect("dx", dx, x.shape, x.dtype)
    fn, args, n_chunks, finish = _backward_plan(x, w, dout, stride, padding, dx)
    _run(fn, x.shape[0], *args, n_chunks=n_chunks)
    return finish()


def _backward_plan(x, w, dout, stride, padding, dx):
    """(chunk function over images, its arguments, chunk count from the shapes only, finish) of
    conv2d_backward for these (checked) arrays; after the chunks have run, finish() returns (dw, db)."""
    N, C = x.shape[:2]
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = dout.shape[2], dout.shape[3]
    if sh == 1 and sw == 1 and _wino_fits(C, KH, KW, OH, OW, ph, pw):
        return _wino_backward_plan(x, w, dout, ph, pw, dx)
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

    def finish():
        dw, db = _sum_parts(dw_parts, db_parts)
        return dw.reshape(w.shape), db

    return fn, (*args, dx is not None, dx_arg, dw_parts, db_parts, slot), n_chunks, finish
