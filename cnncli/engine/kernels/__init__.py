"""Numba kernels: convolution, max pooling and element-wise activations on NCHW arrays.

Arrays and integers in, arrays out, no I/O. The public functions (re-exported here) check their arguments'
shapes, dtypes and layout (ValueError) and then call private compiled cores that trust them; the layers in
`cnncli.engine.layers` allocate the outputs. Every kernel is generic over float32 (production) and float64
(gradient checks).

Design, from measurements on a 2-core machine:
- Each compiled kernel is serial and works on a range [lo, hi) of images, channels or elements; the
  public functions split the work into chunks and run them on a small pool of Python threads (the
  kernels release the GIL). Serial kernels compile in about a second where numba's parallel mode
  kernels took 4-17 s each, which matters for a cold first `cnncli predict`.
- Stride-1 convolutions work in "wide" coordinates (see `wide`): every filter tap is one contiguous
  shift of the padded image, so inner loops are long, unit-stride and vectorized. With 1-3 input channels the
  forward pass is direct (one vectorized pass over the output per filter tap, any filter size); otherwise, and
  for every backward pass, im2col (one row copy per tap) + one GEMM per chunk of images. Other strides use
  im2col + GEMM with general index arithmetic.
- 3 x 3 stride-1 convolutions with 4 or more input channels (the bulk of a training step) use Winograd
  F(2x2, 3x3) instead, forward and backward (see `winograd`): 16 GEMMs, 2.25x fewer multiplies.
- GEMMs run inside the compiled kernels (`np.dot`, which numba binds to scipy's Cython BLAS; see `blas`), so a
  chunk's transforms and GEMMs are one call that releases the GIL once: two worker threads handing the GIL to
  each other between many short calls spent as long waking each other as computing. BLAS is single-threaded
  (see cnncli.config), so exactly one thread pool is busy at any time.
- Inner loops index arrays with the bare loop variable (views carry the offsets): numba adds a wrap-around check
  to any index it cannot prove non-negative, and that check alone stops LLVM from vectorizing the loop.
- Results are bit-identical for any --threads: where chunks' results are added together (weight and bias
  gradients), chunk boundaries depend only on the array shapes and the partial sums are added in chunk order.
  Kernels whose work items are independent (the direct forward pass: one (image, filter) pair each) may split
  by the thread count, since no item's arithmetic depends on which chunk it is in.

One module per job: `threads` (the worker pool and chunking), `claim` (the atomic counter from which a training
region's threads take chunks inside compiled code), `scratch` (per-thread scratch buffers), `blas` (BLAS for
compiled kernels), `cache_repair` (a damaged numba cache entry is compiled again), `checks`
(argument checks), `sums` (fixed-order sums), `conv` (the public convolutions, choosing among `winograd`, `wide`
and `im2col`), `fused` (inference: convolution + bias + ReLU + 2 x 2 max pooling in one pass), `dense`
(inference: a dense layer + bias + ReLU), `regions` (training: a convolution, its ReLU and a 2 x 2 max pooling
in one parallel region, forward and backward), `pooling` (max pooling), `norm` (batch normalisation and global
average pooling) and `elementwise` (activations, the SGD momentum update). No module outside this package imports numba.
"""

from cnncli.engine.kernels import blas, cache_repair

cache_repair.install()  # before any kernel is loaded from numba's cache: a damaged entry is compiled again

blas.preload()  # before any kernel that calls np.dot runs: numba looks the BLAS module up on the first call

from cnncli.engine.kernels.conv import conv2d_backward, conv2d_forward
from cnncli.engine.kernels.dense import dense_forward
from cnncli.engine.kernels.fused import conv2d_relu_pool2
from cnncli.engine.kernels.elementwise import activation_backward, activation_forward, sgd_momentum
from cnncli.engine.kernels.norm import (bn_backward, bn_grad_apply, bn_grad_sums, bn_normalize, bn_shift,
                                       bn_statistics, bn_sums, bn_train_forward, channel_affine, gap_backward,
                                       gap_forward)
from cnncli.engine.kernels.pooling import maxpool_backward, maxpool_forward
from cnncli.engine.kernels.regions import conv2d_relu_maxpool2, maxpool2_relu_conv2d_backward
from cnncli.engine.kernels.threads import get_threads, run_whole, set_threads

__all__ = ["activation_backward", "activation_forward", "bn_backward", "bn_grad_apply", "bn_grad_sums", "bn_normalize",
           "bn_shift", "bn_statistics", "bn_sums", "bn_train_forward", "channel_affine",
           "conv2d_backward", "conv2d_forward", "conv2d_relu_maxpool2", "conv2d_relu_pool2", "dense_forward",
           "gap_backward", "gap_forward", "get_threads", "maxpool2_relu_conv2d_backward", "maxpool_backward",
           "maxpool_forward", "run_whole", "set_threads", "sgd_momentum"]
