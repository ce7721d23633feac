"""BLAS inside compiled kernels, so that a chunk's transforms and GEMMs are one call that holds no GIL.

Why: on a 2-core machine two worker threads that each hand the GIL back and forth a dozen times per chunk
(every numba call and every numpy matmul between compiled steps releases and takes it again) spent about as much
time waking each other as computing. Measured idle, M1 inference ran 1.05x faster on 2 threads than on 1, while
two processes ran 2.0x; `strace -f` counted about 100 futex calls per pass with 2 threads and none with 1.
A kernel that calls `np.dot` itself releases the GIL once, for the whole chunk.

numba compiles `np.dot` on contiguous 2-D float arrays to a call of scipy's Cython BLAS (`scipy.linalg.cython_blas`,
which numba looks up by module name on the first call). Importing it the usual way first runs `scipy.linalg`'s
package `__init__`, about 0.24 s here, which a batch `predict` or `eval` would pay on every run for nothing;
`preload()` loads just that extension module. Its BLAS is single-threaded like numpy's (cnncli.config sets the
thread variables before either library loads).
"""

import importlib.machinery
import importlib.util
import os
import sys

_NAME = "scipy.linalg.cython_blas"


def preload() -> None:
    """Make `scipy.linalg.cython_blas` importable from sys.modules without scipy.linalg's package import.

    Anything unexpected (no scipy, another file layout) leaves sys.modules as it was: numba then imports the
    module the usual way, which is slower to start but computes the same."""
    if _NAME in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("scipy")
        if spec is None or not spec.origin:
            return
        folder = os.path.join(os.path.dirname(spec.origin), "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.isfile(path):
                break
        else:
            return
        loader = importlib.machinery.ExtensionFileLoader(_NAME, path)
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(_NAME, loader, origin=path))
        loader.exec_module(module)
    except Exception:  # noqa: BLE001 - any failure: numba's own import path still works
        return
    sys.modules.setdefault(_NAME, module)
