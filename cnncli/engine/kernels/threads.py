"""The kernels' worker threads: one small pool, and `_run`, which splits a range of work items into chunks."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cnncli.config import CHUNKS

_pool = None
_serial = threading.local()  # .on: this thread runs one chunk of a run_whole pass; its kernel calls stay serial
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


def _workers():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="cnncli-kernel")
    return _pool


def _run(fn, total, *args, n_chunks=CHUNKS):
    """Call fn(*args, lo, hi) over chunks of range(total); chunks run on the worker threads.

    The calling thread works too and the pool has threads - 1 workers, so exactly `threads` threads are busy
    (a pool of `threads` workers plus the caller oversubscribed the cores). Chunks are handed out one at a time
    to whichever thread is free; which thread runs a chunk never changes what the chunk computes.
    """
    chunks = [b for b in _bounds(total, max(1, min(total, n_chunks))) if b[1] > b[0]]
    helpers = min(_threads, len(chunks)) - 1
    if helpers <= 0 or getattr(_serial, "on", False):
        for lo, hi in chunks:
            fn(*args, lo, hi)
        return
    pending = iter(chunks)
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                chunk = next(pending, None)
            if chunk is None:
                return
            fn(*args, *chunk)

    futures = [_workers().submit(work) for _ in range(helpers)]
    try:
        work()
    finally:
        for f in futures:
            f.result()


def in_whole_chunk() -> bool:
    """True on a thread that runs one chunk of a run_whole pass: its kernels run serially, and should do so in as
    few compiled calls as they can (each call hands the GIL over, which the other threads wait on)."""
    return getattr(_serial, "on", False)


def run_whole(fn, total, n_chunks):
    """Call fn(lo, hi) over n_chunks chunks of range(total) on the worker threads, each chunk wholly on one thread:
    kernels that fn calls run their own chunks serially on that thread (no nested hand-offs, one fork/join).

    For inference passes that take a chunk of images through every layer (cnncli.engine.inference)."""
    def whole(lo, hi):
        _serial.on = True
        try:
            fn(lo, hi)
        finally:
            _serial.on = False

    _run(whole, total, n_chunks=n_chunks)


def run_claimed(fn, n_chunks, *args):
    """Call fn(*args, counter) once on each of min(threads, n_chunks) threads; counter is a fresh int64 array
    holding 0, from which fn's compiled loop claims chunk indices atomically (claim._fetch_add) until they
    reach n_chunks. So a region costs one hand-off per thread instead of one per chunk, and a thread that gets
    more of the CPU takes more chunks; a chunk's results never depend on the thread that runs it."""
    counter = np.zeros(1, np.int64)
    n = min(_threads, n_chunks)
    if n <= 1 or getattr(_serial, "on", False):
        fn(*args, counter)
        return
    futures = [_workers().submit(fn, *args, counter) for _ in range(n - 1)]
    try:
        fn(*args, counter)
    finally:
        for f in futures:
            f.result()
