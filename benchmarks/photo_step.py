"""What the photo preset costs against default: CPU ms per training step and per inference batch, 1 thread.

    python benchmarks/photo_step.py [--size 64] [--batch 32] [--rounds 5] [--micro N] [--cnncli-path DIR]

Seeded random RGB images (the arithmetic, and so the time, does not depend on the values). The two presets
run in interleaved rounds (A, B, A, B, ...) after a warm-up, so a change in machine load hits both alike;
each figure is the median over the rounds of process CPU time (time.process_time). Prints the load average.
--micro N trains in passes of at most N images (as a batch over the memory budget does); --cnncli-path
measures another checkout (an older one, for before/after figures).
"""

import argparse
import os
import statistics
import sys
import time

if "--cnncli-path" in sys.argv[:-1]:  # before cnncli is imported: the checkout to measure
    sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--cnncli-path") + 1]))

import cnncli.config  # noqa: E402,F401  (as the cnncli command: before numpy work starts)
import numpy as np  # noqa: E402
from cnncli.engine import kernels  # noqa: E402
from cnncli.engine.model import Model  # noqa: E402
from cnncli.engine.optim import Adam  # noqa: E402

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
    ap.add_argument("--micro", type=int, help="train in passes of at most this many images")
    ap.add_argument("--cnncli-path", help="the cnncli checkout to measure (default: the one on the path)")
    args = ap.parse_args()
    kernels.set_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    y = rng.integers(0, 4, args.batch)
    nets = {p: (Model(p, (3, args.size, args.size), 4, seed=0), Adam()) for p in PRESETS}

    def train_step(p):
        model, opt = nets[p]
        model.loss_and_grads(x, y, micro_batch=args.micro)
        opt.step(model.named(), model.named("grads"), 1e-4)

    times = {(p, job): [] for p in PRESETS for job in ("train", "infer")}
    for r in range(args.rounds + 1):
        for p in PRESETS:
            step = _cpu_ms(lambda: train_step(p))
            infer = _cpu_ms(lambda: nets[p][0].forward(x))
            if r:  # round 0 compiles and warms up
                times[(p, "train")].append(step)
                times[(p, "infer")].append(infer)
    print(f"{args.size} px RGB, batch {args.batch}" + (f" in passes of at most {args.micro}" if args.micro else "")
          + f", 1 thread, median CPU ms of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}; "
          f"cnncli from {os.path.dirname(os.path.dirname(os.path.abspath(cnncli.config.__file__)))}")
    print(f"{'preset':<10} {'params':>9} {'train step':>11} {'inference':>10}")
    for p in PRESETS:
        print(f"{p:<10} {nets[p][0].num_params():>9,} {statistics.median(times[(p, 'train')]):>11.1f} "
              f"{statistics.median(times[(p, 'infer')]):>10.1f}")


if __name__ == "__main__":
    main()
