"""End-to-end training throughput (images/s) of cnncli's numba engine against the same network in PyTorch.

Usage:  python benchmarks/bench_train.py [--model m1|default28|default64] [--threads 2] [--batch 64] [--rounds 7]

Needs PyTorch as the reference (pip install torch==2.13.0, ideally in a separate virtual environment).
One training step = forward, softmax cross-entropy, backward, SGD with momentum 0.9 (lr 0.01) on in-memory
float32 batches of random images and labels (the data does not change the arithmetic). Rounds interleave
numba and torch; each round runs `--steps` steps per side and the median round gives images/s.
"""

import argparse
import time

import numpy as np

from _common import import_torch, load_average

import cnncli.engine.kernels as kernels
from cnncli.engine.model import Model, parse_spec
from cnncli.engine.layers import Activation, Conv, Dense, Dropout, MaxPool
from cnncli.engine.optim import SGD

MODELS = {
    # name: (spec, input (C, H, W), classes)
    "m1": ("m1", (1, 28, 28), 10),
    "default28": ("default", (1, 28, 28), 10),
    "default64": ("default", (3, 64, 64), 10),
}


def torch_twin(torch, model):
    """The same layer stack in PyTorch, with the cnncli model's initial weights."""
    nn = torch.nn
    mods, flat = [], False
    for layer in model.layers:
        if isinstance(layer, Conv):
            m = nn.Conv2d(layer.params["weight"].shape[1], layer.filters, layer.kernel, layer.stride, layer.padding)
        elif isinstance(layer, Dense):
            if not flat:
                mods.append(nn.Flatten())
                flat = True
            m = nn.Linear(layer.params["weight"].shape[1], layer.units)
        elif isinstance(layer, MaxPool):
            m = nn.MaxPool2d(layer.size, layer.stride, layer.padding)
        elif isinstance(layer, Activation):
            m = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[layer.kind]()
        elif isinstance(layer, Dropout):
            m = nn.Dropout(layer.rate)
        else:
            raise TypeError(layer)
        if layer.params:
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(layer.params["weight"]))
                m.bias.copy_(torch.from_numpy(layer.params["bias"]))
        mods.append(m)
    return nn.Sequential(*mods)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="m1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="training steps per side per round")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is reported")
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    torch = import_torch(args.threads)
    kernels.set_threads(args.threads)
    spec, shape, classes = MODELS[args.model]
    rng = np.random.default_rng(0)
    # A pool of distinct batches, cycled, so neither side trains on one batch only.
    pool = 8
    xs = rng.standard_normal((pool, args.batch, *shape)).astype(np.float32)
    ys = rng.integers(0, classes, (pool, args.batch))

    model = Model(spec, shape, classes, seed=0)
    opt = SGD(momentum=0.9)
    net = torch_twin(torch, model)
    net.train()
    topt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    txs = [torch.from_numpy(x.copy()) for x in xs]
    tys = [torch.from_numpy(y.astype(np.int64)) for y in ys]

    def numba_steps(k, start):
        for s in range(start, start + k):
            i = s % pool
            model.loss_and_grads(xs[i], ys[i])
            opt.step(model.named(), model.named("grads"), args.lr)

    def torch_steps(k, start):
        for s in range(start, start + k):
            i = s % pool
            topt.zero_grad(set_to_none=True)
            loss = loss_fn(net(txs[i]), tys[i])
            loss.backward()
            topt.step()

    numba_steps(3, 0)
    torch_steps(3, 0)
    rates = {"numba": [], "torch": []}
    for r in range(args.rounds):
        for name, fn in (("numba", numba_steps), ("torch", torch_steps)):
            time.sleep(0.01)
            t0 = time.perf_counter()
            fn(args.steps, r * args.steps)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    spec_text = "-".join(layer.token for layer in parse_spec(spec))
    print(f"model {args.model}: {spec_text} on {shape[0]}x{shape[1]}x{shape[2]}, {classes} classes, batch {args.batch}, "
          f"SGD momentum 0.9, {args.threads} threads; {args.rounds} rounds x {args.steps} steps; "
          f"load average {load_average():.2f}")
    for name in ("numba", "torch"):
        lo, hi = min(rates[name]), max(rates[name])
        print(f"  {name:<6} {med[name]:8.0f} img/s  (rounds {lo:.0f} .. {hi:.0f})")
    ratio = med["numba"] / med["torch"]
    print(f"  numba / torch throughput: {ratio:.2f}  (target >= 1.00: {'ok' if ratio >= 1.0 else 'MISSED'})")


if __name__ == "__main__":
    main()
