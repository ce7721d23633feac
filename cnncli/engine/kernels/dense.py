"""Inference: a fully connected layer, its bias and (optionally) the ReLU after it, in one compiled call.

Inside a chunked inference pass (cnncli.engine.inference) each worker thread runs this per chunk of images: one
call, one GIL hand-off, where numpy's matmul, the bias add and a ReLU kernel were three (and numpy's 2-D matmul
kept the GIL for the whole GEMM, measured with a sampling profiler's GIL view), so the threads waited on each
other.
"""

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.checks import _expect, _input
from cnncli.engine.kernels.elementwise import _relu_if


@njit(**JIT)
def _dense_into(x2, w, b, out, relu):
    np.dot(x2, w.T, out)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for n in range(out.shape[0]):
        row = out[n]
        for u in range(row.shape[0]):
            row[u] = _relu_if(row[u] + b[u], relu, zero)


def dense_forward(x2, w, b, out, relu=False):
    """out (N, U) = x2 (N, K) @ w (U, K)^T + b (U,), then ReLU (NaN -> 0) when relu; one float dtype,
    all C-contiguous. The GEMM is BLAS (scipy's, see `blas`), so values agree with numpy's to float rounding."""
    _input("x2", x2, 2)
    _input("w", w, 2)
    if w.dtype != x2.dtype or w.shape[1] != x2.shape[1]:
        raise ValueError(f"w: {w.dtype} {w.shape} does not fit x2 {x2.dtype} {x2.shape} (same dtype, w[1] == x2[1])")
    _expect("b", b, (w.shape[0],), x2.dtype)
    _expect("out", out, (x2.shape[0], w.shape[0]), x2.dtype)
    _dense_into(x2, w, b, out, bool(relu))
