"""Per-layer forward and backward times of cnncli's numba kernels against PyTorch on the same shapes.

Usage:  python benchmarks/bench_layers.py [--threads 2] [--rounds 15] [--calls 5] [--only m1|default28|default64]

Needs PyTorch as the reference (pip install torch==2.13.0, ideally in a separate virtual environment).
Both sides run with the same number of threads; the rounds interleave numba and torch so that load from
other processes hits both. Times are medians of per-round means, in milliseconds.
"""

import argparse

import numpy as np

from _common import import_torch, interleaved, load_average

import cnncli.engine.kernels as kernels
from cnncli.engine.layers import Activation, Conv, MaxPool

# (group, label, layer spec, batch, input (C, H, W), need_dx in training, target ratio numba/torch)
CONV_CASES = [
    ("m1", "conv16k3", (16, 3, 0), 64, (1, 28, 28), False),
    ("m1", "conv32k3", (32, 3, 0), 64, (16, 13, 13), True),
    ("default28", "conv32k3p1", (32, 3, 1), 64, (1, 28, 28), False),
    ("default28", "conv64k3p1", (64, 3, 1), 64, (32, 14, 14), True),
    ("default28", "conv64k3p1", (64, 3, 1), 64, (64, 7, 7), True),
    ("default64", "conv32k3p1", (32, 3, 1), 32, (3, 64, 64), False),
    ("default64", "conv64k3p1", (64, 3, 1), 32, (32, 32, 32), True),
    ("default64", "conv64k3p1", (64, 3, 1), 32, (64, 16, 16), True),
]
# (group, label, kind, batch, input (C, H, W))
POINTWISE_CASES = [
    ("m1", "relu", "relu", 64, (16, 26, 26)),
    ("m1", "pool2", "pool", 64, (16, 26, 26)),
    ("m1", "relu", "relu", 64, (32, 11, 11)),
    ("m1", "pool2", "pool", 64, (32, 11, 11)),
    ("default28", "relu", "relu", 64, (32, 28, 28)),
    ("default28", "pool2", "pool", 64, (32, 28, 28)),
    ("default64", "relu", "relu", 32, (32, 64, 64)),
    ("default64", "pool2", "pool", 32, (32, 64, 64)),
]


def conv_target(channels):
    return 1.0 if channels <= 3 else 2.5


def bench_conv(torch, case, rounds, calls, rng):
    F = torch.nn.functional
    _, _, (filters, k, pad), n, (c, h, w), need_dx = case
    layer = Conv(filters, (k, k), (1, 1), (pad, pad))
    layer.init((c, h, w), rng)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)

    xt = torch.from_numpy(x.copy()).requires_grad_(need_dx)
    wt = torch.from_numpy(layer.params["weight"].copy()).requires_grad_(True)
    bt = torch.from_numpy(layer.params["bias"].copy()).requires_grad_(True)
    dyt = torch.from_numpy(dy.copy())
    yt = F.conv2d(xt, wt, bt, padding=pad)
    inputs = [xt, wt, bt] if need_dx else [wt, bt]
    # Sanity: both sides compute the same thing.
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-3, atol=1e-3)

    fwd = interleaved({"numba": lambda: layer.forward(x, training=True),
                       "torch": lambda: F.conv2d(xt, wt, bt, padding=pad)}, rounds, calls)
    layer.forward(x, training=True)
    bwd = interleaved({"numba": lambda: layer.backward(dy, need_dx=need_dx),
                       "torch": lambda: torch.autograd.grad(yt, inputs, dyt, retain_graph=True)}, rounds, calls)
    return fwd, bwd


def bench_pointwise(torch, case, rounds, calls, rng):
    F = torch.nn.functional
    _, _, kind, n, (c, h, w) = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    layer = Activation("relu") if kind == "relu" else MaxPool((2, 2))
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    op = F.relu if kind == "relu" else (lambda t: F.max_pool2d(t, 2))
    yt = op(xt)
    dyt = torch.from_numpy(dy.copy())
    np.testing.assert_array_equal(yt.detach().numpy(), y)
    # Training mode on both sides: torch's pooling keeps its indices, cnncli's keeps argmax.
    fwd = interleaved({"numba": lambda: layer.forward(x, training=True), "torch": lambda: op(xt)}, rounds, calls)
    layer.forward(x, training=True)
    bwd = interleaved({"numba": lambda: layer.backward(dy),
                       "torch": lambda: torch.autograd.grad(yt, [xt], dyt, retain_graph=True)}, rounds, calls)
    return fwd, bwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds; the median is reported")
    ap.add_argument("--calls", type=int, default=5, help="back-to-back calls per round")
    ap.add_argument("--only", choices=["m1", "default28", "default64"], help="one group of layers")
    args = ap.parse_args()
    torch = import_torch(args.threads)
    kernels.set_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, {args.rounds} rounds x {args.calls} calls, load average {load_average():.2f} at start")
    print("groups: m1 = M1 at batch 64 on 28x28x1; default28 / default64 = the default preset at batch 64 on "
          "28x28x1 / batch 32 on 64x64x3")
    header = (f"{'group':<10} {'layer':<11} {'input NxCxHxW':<16} {'pass':<4} {'numba ms':>9} {'torch ms':>9} "
              f"{'ratio':>6} {'target':>7}  ")
    print(header)
    print("-" * len(header))
    missed = 0
    rows = [(c, bench_conv, conv_target(c[4][0])) for c in CONV_CASES]
    rows += [(c, bench_pointwise, 1.0) for c in POINTWISE_CASES]
    for case, fn, target in rows:
        if args.only and case[0] != args.only:
            continue
        n, chw = case[3], case[4]
        fwd, bwd = fn(torch, case, args.rounds, args.calls, rng)
        shape = f"{n}x{chw[0]}x{chw[1]}x{chw[2]}"
        for name, res in (("fwd", fwd), ("bwd", bwd)):
            ratio = res["numba"] / res["torch"]
            ok = ratio <= target
            missed += not ok
            print(f"{case[0]:<10} {case[1]:<11} {shape:<16} {name:<4} {res['numba'] * 1e3:9.3f} "
                  f"{res['torch'] * 1e3:9.3f} {ratio:6.2f} {'<=' + format(target, '.1f'):>7}  {'ok' if ok else 'MISSED'}",
                  flush=True)
    print(f"load average {load_average():.2f} at the end; {missed} target(s) missed")
    print("bwd: weight and bias gradients, plus the input gradient except for a network's first layer "
          "(as in training)")


if __name__ == "__main__":
    main()
