"""Scratch buffers owned by the calling thread, reused from call to call, so no chunk allocates its work arrays."""

import threading

import numpy as np

_local = threading.local()
_ENTRIES = 24


def thread_buffer(shape, dtype, purpose):
    """An uninitialised C-contiguous array of this shape and dtype, the calling thread's own for `purpose` (buffers
    in use at the same time need different purposes). Bounded: a change of batch shape may add entries, and past
    _ENTRIES the thread's cache starts over."""
    cache = getattr(_local, "bufs", None)
    if cache is None or len(cache) > _ENTRIES:
        cache = _local.bufs = {}
    key = (purpose, tuple(shape), np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = np.empty(shape, dtype)
    return buf
