"""Time cnncli's decoder on big JPEGs with and without JPEG draft (DCT-scaled) decoding, and compare the pixels.

    python scripts/decode_bench.py JPEG... [--size 64 128 224] [--rounds 5]

For each size prints the median CPU milliseconds (this process, time.process_time: the decoder runs on one
thread, so a loaded machine inflates it far less than wall time) and wall milliseconds per image of
`cnncli.data.images.decode(path, size, 3)` with draft decoding (today's decoder) and with draft turned off (a
full-resolution decode, as before), in interleaved rounds, and the mean and maximum absolute difference between
the two results in 0-255 levels, with the load average. make_photo_set.py writes 12-megapixel test JPEGs into
PHOTOS-big/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from cnncli.data import images


def timed(paths, size):
    """(CPU ms, wall ms) per image of one pass over paths, and the decoded images."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = [images.decode(p, size, 3) for p in paths]
    return (time.process_time() - c0) * 1000 / len(paths), (time.perf_counter() - t0) * 1000 / len(paths), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--size", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    draft = images._draft
    print(f"{len(args.paths)} images, {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    print("size\tdraft_cpu_ms\tfull_cpu_ms\tdraft_wall_ms\tfull_wall_ms\tmean_abs_diff\tmax_abs_diff")
    try:
        for size in args.size:
            runs = {"draft": [], "full": []}
            for _ in range(args.rounds):  # interleaved: both see the same load
                for kind in runs:
                    images._draft = draft if kind == "draft" else (lambda im, size: None)
                    *ms, out = timed(args.paths, size)
                    runs[kind].append((*ms, out))
            (dc, fc), (dw, fw) = ([statistics.median(r[i] for r in runs[k]) for k in runs] for i in (0, 1))
            fast, full = runs["draft"][-1][2], runs["full"][-1][2]
            diff = np.abs(np.stack(fast).astype(np.int16) - np.stack(full).astype(np.int16))
            print(f"{size}\t{dc:.1f}\t{fc:.1f}\t{dw:.1f}\t{fw:.1f}\t{diff.mean():.2f}\t{diff.max()}", flush=True)
    finally:
        images._draft = draft
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
