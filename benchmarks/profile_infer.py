"""Per-layer profile of cnncli batch inference (Model.predict_proba): ms per layer and pass.

    python benchmarks/profile_infer.py [--net m1] [--threads N] [--passes 10] [--batch B]

NET is a key of nets.NETS; the batch defaults to the inference batch of benchmarks/run.py (256 for m1, 32 above
28 px). Wraps every layer's forward so that whatever the model fuses (conv + ReLU + pool run as one call) is timed
as one row; a pass runs each layer once per chunk of images (engine.inference), and a row sums a pass's calls.
Prints the median wall and CPU (process time, all threads) ms per batch for each layer after one warm-up pass,
and images per CPU second. Per-layer rows are meaningful with --threads 1 only (with more, the chunks' calls
overlap in time and process time counts every thread); --threads 1's CPU column is the steadiest figure on a
busy machine.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnncli.config  # noqa: E402,F401  (as the cnncli command: before numpy work starts)
from cnncli.engine import kernels  # noqa: E402
from cnncli.engine.model import Model  # noqa: E402
from nets import NETS, data  # noqa: E402


def _timed(rows, name, fn):
    def call(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        rows.setdefault(name, []).append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
        return out
    return call


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="m1", choices=sorted(NETS))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON line: whole-pass wall and CPU ms (ab_infer.py)")
    args = ap.parse_args()
    kernels.set_threads(args.threads)
    spec, shape, classes, _, _ = NETS[args.net]
    bs = args.batch or (256 if shape[1] <= 28 else 32)
    model = Model(spec, shape, classes, seed=0)
    x, _, source = data(args.net, bs)
    model.predict_proba(x, batch_size=bs)  # warm-up: loads the compiled kernels
    rows = {}
    for i, layer in enumerate(model.layers):
        layer.forward = _timed(rows, f"{i:2d} {layer.token}", layer.forward)
    whole = _timed(rows, "   whole pass", model.predict_proba)
    for _ in range(args.passes):
        whole(x, batch_size=bs)
    for name, v in rows.items():  # a pass runs a layer once per chunk of images, or once (dense layers)
        per_pass = len(v) // args.passes
        rows[name] = [tuple(sum(c[k] for c in v[p * per_pass:(p + 1) * per_pass]) for k in (0, 1))
                      for p in range(args.passes)]
    total_cpu = statistics.median(c for _, c in rows["   whole pass"])
    total = statistics.median(w for w, _ in rows["   whole pass"])
    if args.json:
        print(json.dumps({"net": args.net, "batch": bs, "threads": args.threads, "wall_ms": total, "cpu_ms": total_cpu,
                          "load": os.getloadavg()[0]}))
        return
    lines = [f"{args.net}: {spec} on {'x'.join(map(str, shape))} ({source}), batch {bs}, {args.threads} threads, "
             f"median of {args.passes} passes; load average {os.getloadavg()[0]:.2f}",
             f"{'layer (fused calls as one row)':<32} {'wall ms':>8} {'CPU ms':>8} {'CPU share':>9}"]
    lines += [_row(name, v, total_cpu) for name, v in rows.items()]
    lines.append(f"throughput {bs / total * 1e3:,.0f} img/s wall, {bs / total_cpu * 1e3:,.0f} img/s per CPU second")
    print("\n".join(lines))


def _row(name, samples, total_cpu):
    wall, cpu = (statistics.median(s[k] for s in samples) for k in (0, 1))
    return f"{name:<32} {wall:8.2f} {cpu:8.2f} {100 * cpu / total_cpu:8.1f}%"

if __name__ == "__main__":
    main()
