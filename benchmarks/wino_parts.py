"""CPU time of the stages of the fused Winograd inference pass (convolution + ReLU + 2 x 2 pooling), per pass.

    python benchmarks/wino_parts.py [--reps 30]

For the Winograd layers of the benchmark nets (M1's second convolution: 13 x 13 x 16 -> 32 filters, batch 256;
the default preset's second and third at 64 px: 32 x 32 x 32 and 16 x 16 x 64 -> 64 filters, batch 32), one
thread, random data: the input transform, the 16 GEMMs and the pooled output transform, each timed on one
Winograd chunk of images as the pass cuts it (in the thread's own scratch planes, whose stride avoids cache-set
aliasing: timings into a plain (16, C * T) array can be several times slower) and scaled to the whole batch, and the whole fused call for comparison (its difference from the
stages' sum is the per-chunk overhead). CPU (process) time, median of --reps calls; the load average is printed.
"""

import argparse
import os
import statistics
import time

import cnncli.config  # noqa: F401  (as the cnncli command: before numpy work starts)
import numpy as np

from cnncli.engine import kernels
from cnncli.engine.kernels import fused, winograd

LAYERS = [("m1 conv32k3 on 13x13x16", 256, 16, 13, 32, 0), ("default64 conv64k3p1 on 32x32x32", 32, 32, 32, 64, 1),
          ("default64 conv64k3p1 on 16x16x64", 32, 64, 16, 64, 1)]


def cpu_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        c = time.process_time()
        fn()
        times.append((time.process_time() - c) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    kernels.set_threads(1)
    rng = np.random.default_rng(0)
    print(f"CPU ms per batch, 1 thread, median of {a.reps}; load average {os.getloadavg()[0]:.2f}")
    for name, n, c, size, f, pad in LAYERS:
        x = rng.standard_normal((n, c, size, size)).astype(np.float32)
        w = rng.standard_normal((f, c, 3, 3)).astype(np.float32)
        b = rng.standard_normal(f).astype(np.float32)
        th = (size + 2 * pad - 2) // 2
        out = np.empty((n, f, th, th), np.float32)
        U = np.empty((16, f, c), np.float32)
        winograd._wino_weights(w, U)
        per = max(1, n // max(1, min(n, -(-n * 16 * c * th * th * 4 // winograd._WINO_CHUNK_BYTES))))  # as the pass
        T = per * th * th
        V, V3 = winograd._planes(c, T, x.dtype, "V")
        M, M3 = winograd._planes(f, T, x.dtype, "M")
        scale = n / per
        rows = {
            "input transform": lambda: winograd._wino_input(x, pad, pad, th, th, V, 0, per),
            "16 GEMMs": lambda: np.matmul(U, V3, out=M3),
            "pooled output transform": lambda: fused._wino_pool_output(M, b, th, th, out, 0, per),
        }
        print(f"{name}, batch {n} ({per} images per Winograd chunk, {th} tiles per row)")
        for label, fn in rows.items():
            print(f"  {label:<28} {cpu_ms(fn, a.reps) * scale:8.2f}")
        whole = cpu_ms(lambda: kernels.conv2d_relu_pool2(x, w, b, (1, 1), (pad, pad), out), a.reps)
        print(f"  {'whole fused call':<28} {whole:8.2f}")


if __name__ == "__main__":
    main()
