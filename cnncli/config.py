"""The one place where the kernels' JIT flags, chunking and the process's thread settings are spelled.

Importing this module sets up the process before numba or a BLAS library loads:
- a writable numba cache directory (the package directory may be read-only; NUMBA_CACHE_DIR wins),
- single-threaded BLAS whatever the environment says, because the kernels run their GEMMs inside cnncli's own
  thread pool (one chunk of images per thread; `--threads` is the user's control), and two pools busy-waiting
  against each other on a small machine stretch every call to several ms,
- no NUMBA_NUM_THREADS that numba would refuse (cnncli never uses numba's own thread pool), and no
  NUMBA_DISABLE_JIT (the kernels need compiled code).
"""

import os
import sys
from pathlib import Path

# JIT flags for every kernel. fastmath stays off (SUM_JIT below allows reassociation for long sums only). Its
# "contract" part (fused multiply-add) would keep results reproducible too (the same on every run and for any
# thread count, only different from non-FMA code), but no kernel has been measured to gain from it yet (the fused
# inference kernels were measured with it: no gain, and without it they give the unfused kernels' results bit for
# bit).
JIT = {"cache": True, "nogil": True, "fastmath": False}

# Long sums over one map (batch norm's statistics and gradient sums, global average pooling): the same, plus
# reassociation, which lets LLVM keep vector accumulators (2-4x faster than a scalar chain on the photo preset's
# maps, measured). The order it picks is fixed by the compiled code, so a map's sum is the same on every run, for
# any thread count and any split of the batch; it may differ between CPUs with other vector widths.
SUM_JIT = {**JIT, "fastmath": {"reassoc"}}

# How many chunks a batch is split into (at least) where chunks' partial results are added together: the split
# depends on this count and the shapes, never on the thread count, so training is bit-identical whatever
# --threads says. 8 chunks keep 2-8 threads busy.
CHUNKS = 8

def _user_cache_dir() -> Path:
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cnncli" / "numba"

# Forced, not defaulted: the kernels call BLAS (numpy's and, from compiled code, scipy's) inside cnncli's own
# worker threads, so a user's OPENBLAS_NUM_THREADS=8 made every GEMM start BLAS threads of its own inside each
# worker (a tester's training run: 54 s instead of 4.4 s, two extra busy threads). Child processes (decode
# workers, Dask workers started here) inherit the setting, which is right for them too. `--threads` is the
# user's control.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


def _positive_int(text: str) -> bool:
    try:
        return int(text) > 0  # parsed the way numba parses it
    except ValueError:
        return False


def prepare_environment() -> None:
    """Set the threading variables (BLAS: one thread, always) and the numba cache directory (unless the user has
    set NUMBA_CACHE_DIR)."""
    for var in BLAS_THREAD_VARS:
        os.environ[var] = "1"
    # numba reads NUMBA_NUM_THREADS when it is imported: 0 or -1 make its import fail (ValueError, exit 70) and a
    # non-number prints a warning with a traceback. It only sizes numba's own thread pool, which cnncli never
    # starts, so a value numba cannot use is dropped instead of failing the run.
    if not _positive_int(os.environ.get("NUMBA_NUM_THREADS", "1")):
        del os.environ["NUMBA_NUM_THREADS"]
    # numba's debugging switch runs kernels as plain Python: the training regions' atomic chunk counter
    # (kernels/claim.py) exists only in compiled code, and a pure-Python epoch would take hours anyway.
    os.environ.pop("NUMBA_DISABLE_JIT", None)
    if "NUMBA_CACHE_DIR" not in os.environ:
        candidates = [_user_cache_dir(), Path(os.environ.get("TMPDIR", "/tmp")) / f"cnncli-numba-{os.getuid()}"]
        for candidate in candidates:
            try:
                candidate.mkdir(parents=True, exist_ok=True)
                probe = candidate / f".probe-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError:
                continue
            os.environ["NUMBA_CACHE_DIR"] = str(candidate)
            break

prepare_environment()
