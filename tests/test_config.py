"""The process set-up in cnncli.config: a numba cache that works without a writable home or package folder,
single-threaded BLAS."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import os, numpy as np
import cnncli
from cnncli.engine import kernels
x = np.ones((1, 1, 4, 4), np.float32)
out = np.empty((1, 1, 2, 2), np.float32)
kernels.conv2d_forward(x, np.ones((1, 1, 3, 3), np.float32), np.zeros(1, np.float32), (1, 1), (0, 0), out)
print(os.environ["NUMBA_CACHE_DIR"], os.environ["OPENBLAS_NUM_THREADS"], out.ravel().tolist())
"""


def _probe(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "OPENBLAS_NUM_THREADS")}
    base["PYTHONPATH"] = str(REPO)
    base.update(env)
    res = subprocess.run([sys.executable, "-c", PROBE], env=base, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return res.stdout.split(maxsplit=2)


def test_cache_falls_back_to_a_temp_dir_when_home_cannot_be_written(tmp_path):
    # /proc/self cannot hold new folders even for root: neither the home cache nor XDG_CACHE_HOME is writable.
    cache, blas, values = _probe(tmp_path, HOME="/proc/self", XDG_CACHE_HOME="/proc/self/cache", TMPDIR=str(tmp_path))
    assert Path(cache).parent == tmp_path and Path(cache).is_dir()
    assert blas == "1" and values.strip() == "[9.0, 9.0, 9.0, 9.0]"


def test_the_users_cache_dir_wins_but_blas_stays_single_threaded(tmp_path):
    # BLAS runs inside cnncli's own worker threads: a user's thread count there only slowed every GEMM down
    mine = tmp_path / "mine"
    cache, blas, _ = _probe(tmp_path, NUMBA_CACHE_DIR=str(mine), OPENBLAS_NUM_THREADS="2")
    assert cache == str(mine) and blas == "1"
