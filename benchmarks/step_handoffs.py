"""How often one training step hands the GIL over (futex calls under strace), Python calls and wall time per step.

    python benchmarks/step_handoffs.py [--net m1] [--threads 2] [--steps 200] [--calls]
    strace -f -c -e trace=futex python benchmarks/step_handoffs.py --steps 200     # futex calls (divide by steps)

Every call of a compiled (numba) kernel or a numpy GEMM releases the GIL and takes it back; with two worker threads
each such return may have to wait for the other thread's Python code and wake it (a futex call, tens of
microseconds on a small VM). This script runs --steps SGD steps of the net (as benchmarks/side.py does: 5 warm-up
steps first, a pool of 32 batches) and prints the median wall ms per step and the load average. --calls also
counts, over 20 further steps, the calls from Python into compiled kernels per step (each one a possible GIL
hand-off; a count that load does not change) and the Python function calls per step, in all threads. Run it under `strace -f -c -e trace=futex`
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
    """(compiled calls, Python function calls) per step, in all threads, over `steps` calls of step().

    Compiled calls: calls from Python into a numba kernel (each releases the GIL and takes it back). numba reports
    them to a profiler as calls of the kernel's Python code; calls between compiled kernels are not seen."""
    from numba.core.registry import CPUDispatcher

    kernel_code = {(val.py_func.__code__.co_filename, val.py_func.__name__) for name, mod in list(sys.modules.items()) if name.startswith("cnncli")
                   for val in list(vars(mod).values()) if isinstance(val, CPUDispatcher)}
    counts = [0, 0]

    def prof(frame, event, arg):
        if event == "call":
            counts[(frame.f_code.co_filename, frame.f_code.co_name) not in kernel_code] += 1  # racy between threads: lower bounds

    threading.setprofile(prof)
    sys.setprofile(prof)
    threads = kernels.get_threads()
    kernels.set_threads(1)  # a new worker pool, so that its threads start under the profiler too
    kernels.set_threads(threads)
    try:
        for i in range(steps):
            step(i)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return counts[0] / steps, counts[1] / steps


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
        compiled, python = _count_calls(step, 20)
        print(f"per step: {compiled:.0f} calls from Python into compiled kernels, {python:.0f} Python function calls"
              " (all threads)")


if __name__ == "__main__":
    main()
