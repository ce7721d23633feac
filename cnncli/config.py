"""The one place where the kernels' JIT flags, chunking and the process's thread settings are spelled.

Importing this module sets up the process before numba or a BLAS library loads:
- a writable numba cache directory (the package directory may be read-only; NUMBA_CACHE_DIR wins),
- single-threaded BLAS, because the kernels run their GEMMs inside cnncli's own thread pool (one chunk of
  images per thread), and two pools busy-waiting against each other on a small machine stretch every call
  to several ms.
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

def prepare_environment() -> None:
    """Set cache and threading environment variables unless the user has set them already."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
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
