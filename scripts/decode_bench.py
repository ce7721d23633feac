"""Time cnncli's decoder on big JPEGs with and without JPEG draft (DCT-scaled) decoding, and compare the pixels.

    python scripts/decode_bench.py JPEG... [--size 64 128 224] [--rounds 5]

For each size prints the median milliseconds per image of `cnncli.data.images.decode(path, size, 3)` with
draft decoding (today's decoder) and with draft turned off (a full-resolution decode, as before), and the mean
and maximum absolute difference between the two results in 0-255 levels. make_photo_set.py writes 12-megapixel
test JPEGs into PHOTOS-big/.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cnncli.data import images


def timed(paths, size, rounds):
    per_image, out = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = [images.decode(p, size, 3) for p in paths]
        per_image.append((time.perf_counter() - t0) / len(paths))
    return statistics.median(per_image) * 1000, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--size", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    draft = images._draft
    print("size\tdraft_ms\tfull_ms\tmean_abs_diff\tmax_abs_diff")
    for size in args.size:
        images._draft = draft
        fast_ms, fast = timed(args.paths, size, args.rounds)
        images._draft = lambda im, size: None
        full_ms, full = timed(args.paths, size, args.rounds)
        images._draft = draft
        diff = np.abs(np.stack(fast).astype(np.int16) - np.stack(full).astype(np.int16))
        print(f"{size}\t{fast_ms:.1f}\t{full_ms:.1f}\t{diff.mean():.2f}\t{diff.max()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
