"""Training passes that run a convolution and the 2 x 2 max pooling after its ReLU in one parallel region.

Handing chunks to the worker threads costs tens of microseconds per region on a small machine (a wake-up of
each thread and a wait for the last chunk), as much as a whole pooling pass over a small map takes. So in
training a conv -> ReLU -> pool2 block runs as one region per pass: each chunk of images is convolved and then
pooled (forward), or routed back through the pooling and ReLU and then through the convolution (backward),
while its maps are still in the worker's cache. Each step is the stand-alone kernel's own code on the same
images, so the results are theirs bit for bit, for any thread count (`tests/test_train_fusion.py`).
"""

import numpy as np

from cnncli.engine.kernels.checks import _check_conv, _expect
from cnncli.engine.kernels.conv import _backward_plan, _forward_plan
from cnncli.engine.kernels.pooling import _maxpool2_forward_chunk, _maxpool_backward_chunk
from cnncli.engine.kernels.threads import _run


def _pool_shape(out):
    return (out.shape[0], out.shape[1], out.shape[2] // 2, out.shape[3] // 2)


def _forward_chunk(conv_fn, conv_args, per_image, out, pooled, argmax, lo, hi):
    conv_fn(*conv_args, lo * per_image, hi * per_image)
    _maxpool2_forward_chunk(out, pooled, argmax, lo * out.shape[1], hi * out.shape[1])


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
    _run(_forward_chunk, x.shape[0], fn, args, total // x.shape[0], out, pooled, argmax, n_chunks=n_chunks)


def _backward_chunk(dpooled, argmax, pooled, dconv, conv_fn, conv_args, lo, hi):
    C = dconv.shape[1]
    _maxpool_backward_chunk(dpooled, argmax, True, pooled, dconv, lo * C, hi * C)
    conv_fn(*conv_args, lo, hi)


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
    _run(_backward_chunk, x.shape[0], dpooled, argmax, pooled, dconv, fn, args, n_chunks=n_chunks)
    return finish()
