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


@njit(**JIT)
def _add_rows(parts, out):
    """out = parts[0] + parts[1] + ... for parts (K, M), added in row order (as numpy's += one row at a time)."""
    out[:] = parts[0]
    for k in range(1, parts.shape[0]):
        p = parts[k]
        for i in range(out.shape[0]):
            out[i] += p[i]


def _sum_parts(dw_parts, db_parts):
    """The chunks' partial sums added in chunk order (the same order for any thread count): two compiled calls."""
    dw = np.empty(dw_parts.shape[1:], dw_parts.dtype)
    db = np.empty(db_parts.shape[1:], db_parts.dtype)
    _add_rows(dw_parts.reshape(len(dw_parts), -1), dw.reshape(-1))
    _add_rows(db_parts.reshape(len(db_parts), -1), db.reshape(-1))
    return dw, db
