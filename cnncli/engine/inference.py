"""Inference passes split by images: each worker thread takes whole chunks of images through every layer.

A batch of more than SMALL_BATCH images is cut into chunks of about CHUNK_IMAGES images; each chunk runs through
all the layers on one thread (its kernels serial, its layer buffers that thread's own), and the threads take
chunks as they come free. Against splitting every layer's work across the threads, a pass has one hand-off
instead of one per layer, and a chunk's activations stay in that core's cache from one layer to the next.

The chunks depend on the batch size only, never on the thread count, so logits are the same bit for bit for
any --threads. Within a chunk the kernels are the ones a whole batch uses (numba, fused passes).
"""

import numpy as np

CHUNK_IMAGES = 32


def chunk_count(n):
    """How many chunks a pass of n images is cut into (chunk sizes differ by at most one image)."""
    return max(1, -(-n // CHUNK_IMAGES))


def forward_chunked(forward, x, num_classes):
    """Logits (N, num_classes) of forward(x[lo:hi]) -> (hi - lo, num_classes) over chunks of x (N, C, H, W),
    C-contiguous; the chunks run on the kernels' worker threads. Up to SMALL_BATCH images: forward(x) as it is
    (the numpy twins; this process may not have imported numba)."""
    from cnncli.engine import layers

    n = x.shape[0]
    if n <= layers.SMALL_BATCH:
        return forward(x)
    out = np.empty((n, num_classes), dtype=x.dtype)

    def chunk(lo, hi):
        layers._per_thread.slots = getattr(layers._per_thread, "kept", None) or {}
        layers._per_thread.kept = layers._per_thread.slots
        try:
            out[lo:hi] = forward(x[lo:hi])
        finally:
            layers._per_thread.slots = None

    layers._numba().run_whole(chunk, n, chunk_count(n))
    return out
