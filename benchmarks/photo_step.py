"""What the photo preset costs against default: CPU ms per training step and per inference batch, 1 thread.

    python benchmarks/photo_step.py [--size 64] [--batch 32] [--rounds 5]

Seeded random RGB images (the arithmetic, and so the time, does not depend on the values). The two presets
run in interleaved rounds (A, B, A, B, ...) after a warm-up, so a change in machine load hits both alike;
each figure is the median over the rounds of process CPU time (time.process_time). Prints the load average.
"""

import argparse
import os
import statistics
import time

import numpy as np

import cnncli.config  # noqa: F401  (as the cnncli command: before numpy work starts)
from cnncli.engine import kernels
from cnncli.engine.model import Model
from cnncli.engine.optim import Adam

PRESETS = ("default", "photo")


def _cpu_ms(fn):
    c0 = time.process_time()
    fn()
    return (time.process_time() - c0) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    kernels.set_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    y = rng.integers(0, 4, args.batch)
    nets = {p: (Model(p, (3, args.size, args.size), 4, seed=0), Adam()) for p in PRESETS}

    def train_step(p):
        model, opt = nets[p]
        model.loss_and_grads(x, y)
        opt.step(model.named(), model.named("grads"), 1e-4)

    times = {(p, job): [] for p in PRESETS for job in ("train", "infer")}
    for r in range(args.rounds + 1):
        for p in PRESETS:
            step = _cpu_ms(lambda: train_step(p))
            infer = _cpu_ms(lambda: nets[p][0].forward(x))
            if r:  # round 0 compiles and warms up
                times[(p, "train")].append(step)
                times[(p, "infer")].append(infer)
    print(f"{args.size} px RGB, batch {args.batch}, 1 thread, median CPU ms of {args.rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'preset':<10} {'params':>9} {'train step':>11} {'inference':>10}")
    for p in PRESETS:
        print(f"{p:<10} {nets[p][0].num_params():>9,} {statistics.median(times[(p, 'train')]):>11.1f} "
              f"{statistics.median(times[(p, 'infer')]):>10.1f}")


if __name__ == "__main__":
    main()
