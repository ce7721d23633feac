"""Shared helpers for the benchmarks: environment set-up, the PyTorch import, interleaved timing.

cnncli.config is imported before numpy and torch so single-threaded BLAS and the numba cache are set up
the way `cnncli` itself runs. PyTorch is a reference only: it is never a cnncli dependency.
"""

import os
import statistics
import sys
import time

import cnncli.config  # noqa: F401  (sets OPENBLAS_NUM_THREADS etc. before numpy loads)

INSTALL_HINT = ("PyTorch is the reference these benchmarks compare against; install it into a separate "
                "virtual environment: pip install torch==2.13.0")


def import_torch(threads):
    """torch, limited to `threads` intra-op threads; exits with an install hint when it is missing."""
    try:
        import torch
    except ImportError:
        sys.exit(INSTALL_HINT)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    return torch


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def time_calls(fn, calls):
    """Seconds per call of fn() over `calls` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(contenders, rounds, calls, warmup=2, pause=0.01):
    """{name: median seconds per call}: each round times every contender in turn, `calls` calls each.

    Interleaving keeps the ratio honest on a shared machine (a burst of load hits both sides), and the
    short pause lets the previous contender's worker threads go to sleep before the next one starts.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            time.sleep(pause)
            samples[name].append(time_calls(fn, calls))
    return {name: statistics.median(v) for name, v in samples.items()}
