"""Peak memory (max RSS) of the real `cnncli train`, `eval` and `predict` commands on photo-sized inputs.

    python benchmarks/memory.py [--sizes 64,128,224] [--images 240] [--threads N] [--keep DIR]

For each size S: writes `--images` JPEG photos (two classes of smooth random colour images, 320x240 px) into
a labeled folder, then runs, each in its own process and measured with wait4's ru_maxrss:
  cnncli train DIR --size S --epochs 1 (default preset, batch 64)
  cnncli eval DIR
  cnncli predict DIR (default batch size)
and prints one table row per size with the peak MB of each command and its wall time.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_photos(root, n, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = ("cats", "dogs")[i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # upsampled: smooth, photo-like content
        img = Image.fromarray(small).resize((320, 240), Image.BILINEAR)
        img.save(root / cls / f"{i:05d}.jpg", quality=90)


def peak(cmd, env):
    """(peak RSS in MB, wall seconds) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"memory.py: {' '.join(cmd[2:4])} failed (exit {proc.returncode}): {err.strip()[-300:]}")
    return usage.ru_maxrss / 1024, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,128,224")
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--keep", help="write the photos and models here and keep them (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cnncli-mem-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    py = [sys.executable, "-m", "cnncli"]
    try:
        photos = work / "photos"
        if not photos.exists():
            make_photos(photos, args.images)
        print(f"{args.images} photos, default preset, {args.threads} threads; load average {os.getloadavg()[0]:.2f}")
        print("| size | train peak MB (s) | eval peak MB (s) | predict peak MB (s) |")
        print("|---|---|---|---|")
        for size in map(int, args.sizes.split(",")):
            model = work / f"model{size}.safetensors"
            cells = []
            for cmd in ([*py, "train", str(photos), "--size", str(size), "--epochs", "1", "-o", str(model),
                         "--overwrite", "--threads", str(args.threads), "--quiet"],
                        [*py, "eval", str(photos), "-m", str(model)],
                        [*py, "predict", str(photos), "-m", str(model), "--format", "tsv"]):
                mb, wall = peak(cmd, env)
                cells.append(f"{mb:,.0f} ({wall:.1f})")
            print(f"| {size}×{size}×3 | " + " | ".join(cells) + " |", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
