"""Conv + ReLU in one pass against conv, then a ReLU pass: CPU ms per call, both in one process, interleaved.

    python benchmarks/conv_relu_fusion.py [--threads 1] [--calls 25]

For the convolutions of the benchmark networks (one shape per forward path: direct for 1-3 input channels,
Winograd for the many-channel 3 x 3 layers), calls conv2d_forward(relu=True) and conv2d_forward followed by
activation_forward("relu") alternately, --calls times each, and prints the minimum and median CPU (process)
time per call of each. Alternating calls in one process is what keeps the comparison fair on a busy machine:
both variants meet the same load within milliseconds of each other.
"""

import argparse
import os
import statistics
import time

import cnncli.config  # noqa: F401  (as the cnncli command: before numpy loads)
import numpy as np
from cnncli.engine import kernels

# (label, N, C, F, H): batch, input channels, filters, square input side; 3 x 3 filters, padding 1.
SHAPES = [
    ("default28 conv1 (Winograd)", 64, 32, 64, 14),
    ("default28 conv2 (Winograd)", 64, 64, 64, 7),
    ("default64 conv1 (Winograd)", 32, 32, 64, 32),
    ("default28 conv0 (direct)", 64, 1, 32, 28),
    ("default64 conv0 (direct)", 32, 3, 32, 64),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=25)
    args = ap.parse_args()
    kernels.set_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.threads} thread(s), {args.calls} alternating calls each; load average {os.getloadavg()[0]:.2f}")
    print(f"{'layer':<28} {'fused min / median':>20} {'conv + ReLU pass min / median':>31}")
    for label, n, c, f, h in SHAPES:
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        w = rng.standard_normal((f, c, 3, 3), dtype=np.float32) * 0.1
        b = np.zeros(f, np.float32)
        out, y = np.empty((n, f, h, h), np.float32), np.empty((n, f, h, h), np.float32)

        def fused():
            kernels.conv2d_forward(x, w, b, (1, 1), (1, 1), out, relu=True)

        def two_passes():
            kernels.conv2d_forward(x, w, b, (1, 1), (1, 1), out)
            kernels.activation_forward("relu", out, y)

        times = {fused: [], two_passes: []}
        fused(), two_passes()  # warm-up (and compile on a cold cache)
        for _ in range(args.calls):
            for fn in times:
                t0 = time.process_time()
                fn()
                times[fn].append((time.process_time() - t0) * 1e3)
        a, t = times[fused], times[two_passes]
        med_a, med_t = statistics.median(a), statistics.median(t)
        print(f"{label:<28} {min(a):9.2f} / {med_a:6.2f} ms {min(t):17.2f} / {med_t:6.2f} ms")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
