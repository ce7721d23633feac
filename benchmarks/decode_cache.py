"""What the decode cache saves: the real `cnncli train` on photo folders, with a cold cache, a warm cache (the
second run on the same folder) and --no-cache.

    python benchmarks/decode_cache.py [--rounds 3] [--size 128] [--keep DIR]

Two folders, each of two classes: 240 JPEG photos of 320x240 px (as benchmarks/memory.py writes them) and 24
JPEGs of 4000x3000 px (12 megapixels, smooth colour content). For each folder, every round runs in turn, each
in its own process with the cache in a fresh temp folder:
  cold:     cnncli train DIR --arch tiny --epochs 1 --size S   (decodes everything, fills the cache)
  warm:     the same command again                             (every image from the cache)
  no-cache: the same command with --no-cache
and prints the medians of the child's CPU seconds (user + system, from wait4: steadier than wall time on a
shared machine) and of its wall seconds, with the load average. `--arch tiny --epochs 1` keeps the training
part small, so the difference between the rows is decoding.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from memory import make_photos  # noqa: E402


def make_big(root, n, seed=1):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = ("cats", "dogs")[i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((4000, 3000), Image.BILINEAR).save(root / cls / f"{i:03d}.jpg", quality=90)


def run(cmd, env):
    """(CPU seconds, wall seconds, stderr) of one child process; exits on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"decode_cache.py: {' '.join(cmd)} failed: {err.strip()[-300:]}")
    return usage.ru_utime + usage.ru_stime, wall, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--keep", help="write the photo folders here and keep them (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cnncli-cache-bench-"))
    folders = {"240 photos 320x240": work / "photos", "24 JPEGs 4000x3000": work / "big"}
    if not folders["240 photos 320x240"].exists():
        make_photos(folders["240 photos 320x240"], 240)
    if not folders["24 JPEGs 4000x3000"].exists():
        make_big(folders["24 JPEGs 4000x3000"], 24)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    print(f"--size {args.size}, {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print("| folder | cold cache CPU s (wall) | warm cache CPU s (wall) | --no-cache CPU s (wall) | warm run's line |")
    print("|---|---|---|---|---|")
    try:
        for name, data in folders.items():
            times = {"cold": [], "warm": [], "off": []}
            line = ""
            for _ in range(args.rounds):
                cache = Path(tempfile.mkdtemp(prefix="cnncli-cache-", dir=work))
                env["CNNCLI_CACHE_DIR"] = str(cache)
                cmd = [sys.executable, "-m", "cnncli", "train", str(data), "--arch", "tiny", "--epochs", "1",
                       "--size", str(args.size), "-o", str(work / "m.safetensors"), "--overwrite"]
                for kind, extra in (("cold", []), ("warm", []), ("off", ["--no-cache"])):
                    cpu, wall, err = run(cmd + extra, env)
                    times[kind].append((cpu, wall))
                    if kind == "warm":
                        found = re.search(r"decoded \d+, \d+ from cache", err)
                        line = found[0] if found else "?"
                shutil.rmtree(cache, ignore_errors=True)
            cells = [f"{statistics.median(c for c, _ in t):.2f} ({statistics.median(w for _, w in t):.1f})"
                     for t in times.values()]
            print(f"| {name} | " + " | ".join(cells) + f" | `{line}` |", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
