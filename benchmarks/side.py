"""One side of a side-by-side benchmark, in this fresh process: prints one JSON line.

    python side.py cnncli|torch|ort train|infer NET [--threads N] [--seconds S]

NET is a key of nets.NETS (m1, default28, default64, default128). `run.py` starts this script once per side
and round, each time in a new process, and interleaves the sides; run it alone only to debug one side.

- cnncli: imports cnncli.config before anything loads numpy, exactly as the `cnncli` command does (the record's
  numpy_before_cnncli says so), then uses the engine's Model.
- torch: PyTorch as its users run it: torch.set_num_threads(N) and nothing else of ours in the environment.
- ort (inference only): onnxruntime's default CPU session with intra_op_num_threads = N, running the PyTorch
  twin exported to ONNX in this process.
Training: SGD momentum 0.9 (lr 0.05 at 28 px, 0.01 above), the net's batch size, a pool of 32 distinct
batches cycled; 5 warm-up steps, then steps until S seconds have passed. Inference: softmax probabilities
over a fixed image set at the net's inference batch size; one warm-up pass, then passes until S seconds have
passed; the median pass counts.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _args():
    ap = argparse.ArgumentParser(description="one side of a side-by-side benchmark")
    ap.add_argument("side", choices=["cnncli", "torch", "ort"])
    ap.add_argument("task", choices=["train", "infer"])
    ap.add_argument("net")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds (after warm-up)")
    return ap.parse_args()


def _timed_steps(step, seconds, warmup=5, minimum=3):
    """(steps, seconds) of back-to-back step(i) calls after `warmup` untimed ones."""
    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    i = 0
    while i < minimum or time.perf_counter() - t0 < seconds:
        step(warmup + i)
        i += 1
    return i, time.perf_counter() - t0


def _timed_passes(run_pass, n_images, seconds, minimum=3):
    """Median images/s over whole passes after one warm-up pass."""
    run_pass()
    rates, t_all = [], time.perf_counter()
    while len(rates) < minimum or time.perf_counter() - t_all < seconds:
        t0 = time.perf_counter()
        run_pass()
        rates.append(n_images / (time.perf_counter() - t0))
    return statistics.median(rates), len(rates)


def cnncli_environment():
    """Import cnncli.config before anything loads numpy, exactly as the `cnncli` command does, and return whether
    numpy was loaded already. The order matters: OpenBLAS reads its thread count when numpy loads, so a numpy
    loaded first runs every GEMM on its own threads inside each of cnncli's kernel threads (measured 4-6x
    slower training on a busy 2-core machine)."""
    numpy_first = "numpy" in sys.modules
    import cnncli.config  # noqa: F401
    return numpy_first


def cnncli_api():
    """(kernels, model module, optim module) of the cnncli on the path: the engine/ layout or an older flat one."""
    import importlib

    cnncli_environment()
    for base in ("cnncli.engine", "cnncli"):
        try:
            return tuple(importlib.import_module(f"{base}.{m}") for m in ("kernels", "model", "optim"))
        except ImportError:
            continue
    sys.exit("side.py: cannot find cnncli's kernels, model and optim modules")


def cnncli_train(net, threads, seconds, x, y, bs, lr):
    from nets import DEFAULT, NETS

    kernels, model_mod, optim = cnncli_api()
    PRESETS, Model, SGD = model_mod.PRESETS, model_mod.Model, optim.SGD
    if PRESETS["default"] != DEFAULT:
        sys.exit("benchmarks/nets.py: DEFAULT differs from cnncli's default preset; update it")
    kernels.set_threads(threads)
    spec, shape, classes, _, _ = NETS[net]
    model, opt = Model(spec, shape, classes, seed=0), SGD(momentum=0.9)
    pool = len(x) // bs

    def step(i):
        j = (i % pool) * bs
        model.loss_and_grads(x[j:j + bs], y[j:j + bs])
        opt.step(model.named(), model.named("grads"), lr)

    return _timed_steps(step, seconds)


def torch_train(net, threads, seconds, x, y, bs, lr):
    import torch
    from nets import torch_net

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_net(torch, net)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    pool = len(x) // bs

    def step(i):
        j = (i % pool) * bs
        opt.zero_grad(set_to_none=True)
        loss_fn(model(X[j:j + bs]), Y[j:j + bs]).backward()
        opt.step()

    return _timed_steps(step, seconds)


def cnncli_infer(net, threads, seconds, x, bs):
    from nets import NETS

    kernels, model_mod, _ = cnncli_api()
    Model = model_mod.Model
    kernels.set_threads(threads)
    spec, shape, classes, _, _ = NETS[net]
    model = Model(spec, shape, classes, seed=0)
    return _timed_passes(lambda: model.predict_proba(x, batch_size=bs), len(x), seconds)


def torch_infer(net, threads, seconds, x, bs):
    import torch
    from nets import torch_net

    torch.set_num_threads(threads)
    model = torch_net(torch, net, softmax=True).eval()
    X = torch.from_numpy(x)

    def run_pass():
        with torch.inference_mode():
            for i in range(0, len(X), bs):
                model(X[i:i + bs])

    return _timed_passes(run_pass, len(x), seconds)


def ort_infer(net, threads, seconds, x, bs):
    import tempfile
    import warnings

    import onnxruntime as ort
    import torch
    from nets import NETS, torch_net

    model = torch_net(torch, net, softmax=True).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, *NETS[net][1]),), path, input_names=["x"], output_names=["p"],
                              dynamic_axes={"x": {0: "n"}, "p": {0: "n"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def run_pass():
        for i in range(0, len(x), bs):
            sess.run(None, {"x": x[i:i + bs]})

    return _timed_passes(run_pass, len(x), seconds)


def main():
    a = _args()
    # The cnncli side sets up its environment before nets.py imports numpy (see cnncli_environment).
    numpy_first = cnncli_environment() if a.side == "cnncli" else None
    from nets import NETS, data

    if a.net not in NETS:
        sys.exit(f"side.py: unknown net {a.net} (known: {', '.join(NETS)})")
    _, shape, _, train_bs, infer_bs = NETS[a.net]
    load = os.getloadavg()[0]
    if a.task == "train":
        if a.side == "ort":
            sys.exit("side.py: onnxruntime is an inference reference only")
        x, y, source = data(a.net, 32 * train_bs)
        lr = 0.05 if shape[1] <= 28 else 0.01
        fn = cnncli_train if a.side == "cnncli" else torch_train
        steps, secs = fn(a.net, a.threads, a.seconds, x, y, train_bs, lr)
        result = {"img_s": steps * train_bs / secs, "steps": steps, "batch": train_bs}
    else:
        n = {28: 10000, 64: 1024}.get(shape[1], 256)
        x, _, source = data(a.net, n, part="test")
        fn = {"cnncli": cnncli_infer, "torch": torch_infer, "ort": ort_infer}[a.side]
        rate, passes = fn(a.net, a.threads, a.seconds, x, infer_bs)
        result = {"img_s": rate, "passes": passes, "batch": infer_bs, "images": n}
    print(json.dumps({"side": a.side, "task": a.task, "net": a.net, "threads": a.threads, "data": source,
                      **result, "numpy_before_cnncli": numpy_first, "load_before": load,
                      "load_after": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
