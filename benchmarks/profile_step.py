"""Per-layer profile of one cnncli training step: ms per layer, forward and backward.

    python benchmarks/profile_step.py [--net default28] [--threads N] [--steps 10] [--stat median|min]
                                      [--cnncli-path DIR]
    python benchmarks/profile_step.py --arch photo --size 64 [--batch 32] [--threads 1] [--stat min] ...

NET is a key of nets.NETS; --arch (a preset or spec) instead profiles that network on seeded random RGB
images of --size px (4 classes, batches of --batch). Runs the steps of Model.loss_and_grads and SGD layer by
layer, as the model runs them (a conv, its ReLU and a pool2 after them are one row each way when the model
runs them as one parallel region; a conv or bn and the ReLU after it are one row when the model fuses them,
and so are a ReLU and the max pool after it in the backward pass), timing each call; prints the median (or
minimum) wall and CPU (process time, all threads) ms per row over --steps steps after 3 warm-up steps, for
the loss and the optimizer step too, and for the whole step, and the threads' voluntary context switches per
step (hand-offs between threads, a figure that load does not inflate). On a busy machine the CPU column with
--threads 1 and --stat min is the steadiest figure; wall time is what a user waits. --cnncli-path measures
another checkout (an older one runs its layers one by one, as it did).
"""

import argparse
import inspect
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if "--cnncli-path" in sys.argv[:-1]:  # before cnncli is imported: the checkout to measure
    sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--cnncli-path") + 1]))

import cnncli.config  # noqa: E402,F401  (as the cnncli command: before numpy work starts)
import numpy as np  # noqa: E402
from cnncli.engine import kernels  # noqa: E402
from cnncli.engine.layers import Activation, Conv, MaxPool, softmax_cross_entropy  # noqa: E402
from cnncli.engine.model import Model  # noqa: E402
from cnncli.engine.optim import SGD  # noqa: E402
from nets import NETS, data  # noqa: E402


def _relu(layers, i):
    return 0 <= i < len(layers) and isinstance(layers[i], Activation) and layers[i].kind == "relu"


def _bn_relu():
    """(BatchNorm,) when this checkout's bn runs the ReLU after it in its own pass (as Model.forward then does)."""
    try:
        from cnncli.engine.norm import BatchNorm
    except ImportError:
        return ()
    return (BatchNorm,) if "relu" in inspect.signature(BatchNorm.forward).parameters else ()


def _pool2(layers, i):
    return 0 <= i < len(layers) and layers[i].token == "pool2"


def profile(model, opt, x, y, steps):
    """{row name: [(wall ms, CPU ms) per step]}, with a row for the whole step."""
    layers = model.layers
    fuses = hasattr(Activation, "fused")  # checkouts before the training fusion run every layer on its own
    fusing = (Conv,) + _bn_relu()
    regions = hasattr(Conv, "forward_pooled")  # conv + ReLU + pool2 in one parallel region (and back)
    rows = {}

    def rec(name, t0, c0=None):
        rows.setdefault(name, []).append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))

    for _ in range(steps):
        step_wall, step_cpu = time.perf_counter(), time.process_time()
        h, i = x, 0
        while i < len(layers):
            t0, c0 = time.perf_counter(), time.process_time()
            if regions and isinstance(layers[i], Conv) and _relu(layers, i + 1) and _pool2(layers, i + 2):
                h = layers[i].forward_pooled(h, layers[i + 1], layers[i + 2])
                rec(f"{i:2d} {layers[i].token}+relu+pool2 fwd", t0, c0)
                i += 3
            elif fuses and isinstance(layers[i], fusing) and _relu(layers, i + 1):
                h = layers[i + 1].fused(layers[i].forward(h, True, relu=True))
                rec(f"{i:2d} {layers[i].token}+relu fwd", t0, c0)
                i += 2
            else:
                h = layers[i].forward(h, True)
                rec(f"{i:2d} {layers[i].token} fwd", t0, c0)
                i += 1
        t0, c0 = time.perf_counter(), time.process_time()
        _, d = softmax_cross_entropy(h.reshape(len(x), -1), y)
        rec("   loss", t0, c0)
        d = d.reshape(d.shape[0], -1, 1, 1)
        i = len(layers) - 1
        while i >= 0:
            t0, c0 = time.perf_counter(), time.process_time()
            if regions and _pool2(layers, i) and _relu(layers, i - 1) and i >= 2 and isinstance(layers[i - 2], Conv):
                d = layers[i - 2].backward_pooled(d, layers[i], need_dx=i > 2)
                rec(f"{i - 2:2d} pool2+relu+{layers[i - 2].token} bwd", t0, c0)
                i -= 3
            elif fuses and isinstance(layers[i], MaxPool) and _relu(layers, i - 1):
                d = layers[i].backward(d, relu=True)
                rec(f"{i - 1:2d} relu+{layers[i].token} bwd", t0, c0)
                i -= 2
            else:
                d = layers[i].backward(d, need_dx=i > 0)
                rec(f"{i:2d} {layers[i].token} bwd", t0, c0)
                i -= 1
        t0, c1 = time.perf_counter(), time.process_time()
        opt.step(model.named(), model.named("grads"), 0.01)
        rec("   sgd step", t0, c1)
        rec("   whole step", step_wall, step_cpu)
    return rows


def voluntary_switches():
    """Voluntary context switches of all this process's threads so far (Linux; None elsewhere): each one is a
    thread that blocked (a worker waiting for a chunk, a thread waiting for the GIL or for the others to end)."""
    total = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    except OSError:
        return None
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="default28", choices=sorted(NETS))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cnncli-path", help="the cnncli checkout to measure (default: the one on the path)")
    ap.add_argument("--arch", help="a preset or spec to profile on random RGB images instead of --net")
    ap.add_argument("--size", type=int, default=64, help="with --arch: image side in px")
    ap.add_argument("--batch", type=int, default=32, help="with --arch: training batch")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="per row over the steps; min is the steadier figure on a machine busy with other work")
    args = ap.parse_args()
    kernels.set_threads(args.threads)
    if args.arch:
        spec, shape, classes, bs = args.arch, (3, args.size, args.size), 4, args.batch
        rng = np.random.default_rng(0)
        x, y, source = rng.standard_normal((bs, *shape), dtype=np.float32), rng.integers(0, classes, bs), "random"
        args.net = args.arch
    else:
        spec, shape, classes, bs, _ = NETS[args.net]
        x, y, source = data(args.net, bs)
    model, opt = Model(spec, shape, classes, seed=0), SGD(momentum=0.9)
    profile(model, opt, x, y, 3)
    switches = voluntary_switches()
    rows = profile(model, opt, x, y, args.steps)
    after = voluntary_switches()
    stat = statistics.median if args.stat == "median" else min
    total = stat([w for w, _ in rows["   whole step"]])
    total_cpu = stat([c for _, c in rows["   whole step"]])
    print(f"{args.net}: {spec} on {'x'.join(map(str, shape))} ({source}), batch {bs}, {args.threads} threads, "
          f"{args.stat} of {args.steps} steps; load average {os.getloadavg()[0]:.2f}; cnncli from "
          f"{os.path.dirname(os.path.dirname(os.path.abspath(cnncli.config.__file__)))}")
    print(f"{'layer':<28} {'wall ms':>8} {'CPU ms':>8} {'CPU share':>9}")
    for name, v in rows.items():
        ms, cpu = stat([w for w, _ in v]), stat([c for _, c in v])
        print(f"{name:<28} {ms:8.2f} {cpu:8.2f} {100 * cpu / total_cpu:8.1f}%")
    print(f"throughput {bs / total * 1e3:,.0f} img/s wall, {bs / total_cpu * 1e3:,.0f} img/s per CPU second")
    if switches is not None and after is not None:
        print(f"voluntary context switches per step (all threads): {(after - switches) / args.steps:.1f}")


if __name__ == "__main__":
    main()
