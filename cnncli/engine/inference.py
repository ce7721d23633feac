"""Inference passes split by images: each worker thread takes whole chunks of images through the conv layers.

A batch of more than CHUNK_IMAGES images is cut into chunks of at most CHUNK_IMAGES images; each chunk runs through
the convolutional layers (everything before the first dense layer) on one thread, its kernels serial and its
layer buffers that thread's own, and the threads take chunks as they come free. Against splitting every layer's
work across the threads, a pass has one hand-off instead of one per layer, and a chunk's activations stay in that
core's cache from one layer to the next. Smaller batches (photo-sized images: a pass holds few) run layer by layer,
each kernel splitting its work across the threads. Dense layers join the chunks when their weights together fit a
core's L2 cache (M1's: 200 KB), so such a pass has no serial tail; larger ones see the whole batch, one GEMM each,
whose weights are read once (per chunk, a 2 MB weight matrix cost 5x the GEMM's time, measured).

The chunks depend on the batch size only, never on the thread count, so logits are the same bit for bit for
any --threads. Within a chunk the kernels are the ones a whole batch uses (numba, fused passes).
"""

import numpy as np

CHUNK_IMAGES = 32
CHUNK_DENSE_BYTES = 512 * 1024  # dense weights (all dense layers together) that still run inside the chunks


def chunk_stop(net):
    """How many of the layers `net` (a list) a chunk takes its images through: all of them when the dense layers'
    weights total at most CHUNK_DENSE_BYTES, else those before the first dense layer."""
    from cnncli.engine.layers import Dense

    dense = [layer for layer in net if isinstance(layer, Dense)]
    if sum(layer.params["weight"].nbytes for layer in dense) <= CHUNK_DENSE_BYTES:
        return len(net)
    return net.index(dense[0])


def chunk_count(n):
    """How many chunks a pass of n > SMALL_BATCH images is cut into (sizes differ by at most one image)."""
    return -(-n // CHUNK_IMAGES)


def forward_chunked(forward, x, out_shape):
    """forward(x[lo:hi]) -> (hi - lo, *out_shape) over chunks of x (N, C, H, W), C-contiguous, gathered into one
    (N, *out_shape) array; the chunks run on the kernels' worker threads. A batch of one chunk (up to CHUNK_IMAGES
    images): forward(x) as it is, each kernel splitting its own work across the threads (or, up to SMALL_BATCH
    images, the numpy twins: this process may not have imported numba)."""
    from cnncli.engine import layers

    n = x.shape[0]
    if n <= layers.SMALL_BATCH or chunk_count(n) == 1:
        return forward(x)
    out = np.empty((n, *out_shape), dtype=x.dtype)

    def chunk(lo, hi):
        layers._per_thread.slots = getattr(layers._per_thread, "kept", None) or {}
        layers._per_thread.kept = layers._per_thread.slots
        try:
            out[lo:hi] = forward(x[lo:hi])
        finally:
            layers._per_thread.slots = None

    layers._numba().run_whole(chunk, n, chunk_count(n))
    return out
