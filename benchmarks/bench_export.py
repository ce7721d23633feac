"""cnncli's exported ONNX models on onnxruntime: agreement with cnncli, and speed next to cnncli's own.

    python benchmarks/bench_export.py [--rounds 5] [--seconds 2]

Needs onnx and onnxruntime (`pip install '.[test]'`). Images: the 100 bundled Fashion-MNIST test PNGs in
data/test (28x28 gray). Weights: seeded random (speed does not depend on them; agreement is checked on every
image's full probability vector).

1. Agreement: for each spec the tests cover, the largest |p_onnxruntime - p_cnncli| over all 100 images and
   both classes, for the float32 NCHW graph and the --with-preprocess uint8 graph.
2. Speed, one engine per fresh process (`--side`), interleaved rounds with the order rotating, medians:
   batch 256 over the 100 images tiled to 2,048 (images/s of the median pass after one warm-up pass), and
   one image at a time (median ms per call over --seconds of calls, as a one-file predict classifies it:
   cnncli takes its numpy path there). Both engines get 2 threads: cnncli its default pool, onnxruntime
   intra_op_num_threads = 2. The 1-minute load average is printed with each table; trust ratios, not
   absolute figures, on a shared machine.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPECS = ["tiny", "m1", "default", "conv8k5s2p2-tanh-pool3s2p1-conv6k3x2s2x1p1x0-sigmoid-fc32-drop0.3-fc",
         "conv >> relu >> pool >> conv >> pool >> fc >> conv >> fc", "fc16-tanh-drop-fc", "pool2x3s1-conv4k1-fc"]


def images():
    from cnncli.data.images import decode

    files = sorted((ROOT / "data" / "test").rglob("*.png"))
    return np.stack([decode(f, 28, 1) for f in files])


def classifier(spec):
    from cnncli.engine.model import Model
    from cnncli.store import modelfile

    return modelfile.Classifier(Model(spec, (1, 28, 28), 2, seed=7), ["coat", "pullover"], "gray", [0.29], [0.35])


def session(clf, with_preprocess=False):
    import onnxruntime as ort

    from cnncli.store import onnx_export

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(onnx_export.to_bytes(clf, with_preprocess), opts, providers=["CPUExecutionProvider"])


def agreement():
    x = images()
    print(f"| spec | max abs diff, float32 input | max abs diff, --with-preprocess | images |")
    print("|---|---|---|---|")
    for spec in SPECS:
        clf = classifier(spec)
        want = clf.proba(x)
        plain = session(clf).run(None, {"input": clf.to_float(x)})[0]
        pre = session(clf, True).run(None, {"image": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0]
        print(f"| `{spec}` | {np.abs(plain - want).max():.1e} | {np.abs(pre - want).max():.1e} | {len(x)} |")


def side(engine, spec, batch, seconds):
    """One measurement in this process; prints images/s (batch > 1) or ms per image (batch 1)."""
    clf = classifier(spec)
    x = clf.to_float(images())
    if batch > 1:
        x = np.concatenate([x] * 21)[:2048]
    if engine == "ort":
        sess = session(clf)
        run = lambda b: sess.run(None, {"input": b})[0]  # noqa: E731
    else:
        run = lambda b: clf.model.predict_proba(b, batch_size=batch)  # noqa: E731
    if batch == 1:
        one = x[:1]
        run(one)
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            run(one)
            times.append(time.perf_counter() - t)
        print(1000 * statistics.median(times))
        return
    batches = [x[i:i + batch] for i in range(0, len(x), batch)]
    for b in batches:
        run(b)
    passes, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(passes) < 2:
        t = time.perf_counter()
        for b in batches:
            run(b)
        passes.append(time.perf_counter() - t)
    print(len(x) / statistics.median(passes))


def speed(rounds, seconds):
    rows = [("m1", 256), ("default", 256), ("m1", 1), ("default", 1)]
    results = {(s, b, e): [] for s, b in rows for e in ("cnncli", "ort")}
    loads = []
    for r in range(rounds):
        for s, b in rows:
            order = ("cnncli", "ort") if r % 2 == 0 else ("ort", "cnncli")
            for e in order:
                loads.append(os.getloadavg()[0])
                out = subprocess.run([sys.executable, __file__, "--side", e, "--spec", s, "--batch", str(b),
                                      "--seconds", str(seconds)], capture_output=True, check=True, text=True)
                results[(s, b, e)].append(float(out.stdout.split()[-1]))
    print(f"\n{rounds} rounds; load average {min(loads):.1f}-{max(loads):.1f}\n")
    print("| network | measure | cnncli | onnxruntime (exported) | onnxruntime / cnncli |")
    print("|---|---|---|---|---|")
    for s, b in rows:
        c, o = (statistics.median(results[(s, b, e)]) for e in ("cnncli", "ort"))
        if b > 1:
            print(f"| {s} | batch {b}, img/s | {c:,.0f} | {o:,.0f} | {o / c:.2f}x the throughput |")
        else:
            print(f"| {s} | one image, ms per call | {c:.3f} | {o:.3f} | {c / o:.2f}x faster |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--side", choices=("cnncli", "ort"))
    ap.add_argument("--spec", default="m1")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    if args.side:
        side(args.side, args.spec, args.batch, args.seconds)
        return
    agreement()
    speed(args.rounds, args.seconds)


if __name__ == "__main__":
    main()
