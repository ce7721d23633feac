"""How often one training step hands the GIL over (futex calls under strace), Python calls and wall time per step.

    python benchmarks/step_handoffs.py [--net m1] [--threads 2] [--steps 200] [--calls]
    strace -f -c -e trace=futex python benchmarks/step_handoffs.py --steps 200     # futex calls (divide by steps)

Every call of a compiled (numba) kernel or a numpy GEMM releases the GIL and takes it back; with two worker threads
each such return may have to wait for the other thread's Python code and wake it (a futex call, tens of
microseconds on a small VM). This script runs --steps SGD steps of the net (as benchmarks/side.py does: 5 warm-up
steps first, a pool of 32 batches) and prints the median wall ms per step and the load average. --calls also
counts, with sys.setprofile and threading.setprofile over 20 further steps, the Python function calls per step
in all threads (compiled calls themselves are invisible to the profiler). Run it under `strace -f -c -e trace=futex`
for the futex count, which machine load does not inflate the way it inflates times.
"""

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnncli.config  # noqa: E402,F401  (before numpy, as the cnncli command)
from cnncli.engine import kernels  # noqa: E402
from cnncli.engine.model import Model  # noqa: E402
from cnncli.engine.optim import SGD  # noqa: E402
from nets import NETS, data  # noqa: E402


def _count_calls(step, steps):
    """Python function calls per step, in all threads, over `steps` calls of step()."""
    calls = [0]

    def prof(frame, event, arg):
        if event == "call":
            calls[0] += 1  # a racy += between threads can lose a count: a lower bound

    threading.setprofile(prof)
    sys.setprofile(prof)
    try:
        for i in range(steps):
            step(i)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return calls[0] / steps


def main():
    ap = argparse.ArgumentParser(description="GIL hand-offs and wall time per training step")
    ap.add_argument("--net", default="m1", choices=sorted(NETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--calls", action="store_true", help="also count Python calls per step")
    a = ap.parse_args()
    kernels.set_threads(a.threads)
    spec, shape, classes, bs, _ = NETS[a.net]
    x, y, source = data(a.net, 32 * bs)
    model, opt = Model(spec, shape, classes, seed=0), SGD(momentum=0.9)
    lr = 0.05 if shape[1] <= 28 else 0.01

    def step(i):
        j = (i % 32) * bs
        model.loss_and_grads(x[j:j + bs], y[j:j + bs])
        opt.step(model.named(), model.named("grads"), lr)

    for i in range(5):
        step(i)
    load = os.getloadavg()[0]
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    print(f"{a.net} ({source}), batch {bs}, {a.threads} threads, {a.steps} steps: median {ms:.2f} ms per step "
          f"({bs / ms * 1000:,.0f} img/s); load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    if a.calls:
        print(f"Python function calls per step (all threads): {_count_calls(step, 20):.0f}")


if __name__ == "__main__":
    main()
