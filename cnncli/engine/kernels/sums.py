"""Sums in a fixed order, so that results are bit-identical for any thread count."""

import numpy as np
from numba import njit

from cnncli.config import JIT

_LANES = 16


@njit(**JIT)
def _sum_lanes(v, n):
    """Sum of v[:n] over 16 interleaved lanes, then the lanes in order: vectorizable and the same on every run."""
    acc = np.zeros(_LANES, dtype=v.dtype)
    blocks = n // _LANES
    for blk in range(blocks):
        q0 = blk * _LANES
        for l in range(_LANES):
            acc[l] += v[q0 + l]
    for q in range(blocks * _LANES, n):
        acc[q - blocks * _LANES] += v[q]
    s = acc[0]
    for l in range(1, _LANES):
        s += acc[l]
    return s


@njit(**JIT)
def _row_sums(m, out):
    """out[r] = the sum of row r of m (R, K), in a fixed order."""
    for r in range(m.shape[0]):
        out[r] = _sum_lanes(m[r], m.shape[1])


def _sum_parts(dw_parts, db_parts):
    """The chunks' partial sums added in chunk order (the same order for any thread count)."""
    dw, db = dw_parts[0].copy(), db_parts[0].copy()
    for k in range(1, len(dw_parts)):
        dw += dw_parts[k]
        db += db_parts[k]
    return dw, db
