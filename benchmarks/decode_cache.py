"""What the decode cache saves: the real `cnncli train`, `eval` or `predict` on image folders, with an empty
cache, a filled cache (the second run on the same folder) and --no-cache.

    python benchmarks/decode_cache.py [--command train|eval|predict] [--folders photos,big,fashion]
                                      [--rounds 3] [--size 128] [--batch-size 256] [--keep DIR] [--fashion DIR]

Folders (each a labeled folder; `big` and `photos` of two classes):
  photos:  240 JPEG photos of 320x240 px (as benchmarks/memory.py writes them)
  big:     24 JPEGs of 4000x3000 px (12 megapixels, smooth colour content)
  fashion: Fashion-MNIST's 10,000 test PNGs (28x28 gray) under DIR/test/, as scripts/fashion_mnist_folders.py
           writes them (built into the work folder from Debian's dataset-fashion-mnist unless --fashion DIR;
           eval and predict only: train would decode the 60,000 training PNGs too)
For each folder, every round runs the three in turn, each in its own process with the cache in a fresh temp
folder:
  cold:     the command                    (decodes everything, fills the cache)
  warm:     the same command again         (every image from the cache)
  no-cache: the same command with --no-cache
train:   cnncli train DIR --arch tiny --epochs 1 --size S
eval:    cnncli eval DIR -m MODEL          (DIR/test/ when there is one, else every image)
predict: cnncli predict DIR -m MODEL --format tsv --batch-size B   (a run of at least B inputs decodes in 2
         worker processes, a shorter one in threads)
MODEL is an untrained network of the preset train picks by default (photo for RGB at S px, default for
Fashion-MNIST's 28 px gray): inference costs what a trained one costs. Prints the medians of the child's CPU
seconds (user + system, from wait4, including the worker processes it waited for: steadier than wall time on a
shared machine) and of its wall seconds, with the load average. `--arch tiny --epochs 1` keeps train's training
part small, so the difference between the columns is decoding.
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


FOLDERS = {"photos": "240 photos 320x240", "big": "24 JPEGs 4000x3000", "fashion": "10,000 Fashion-MNIST PNGs"}


def make_folder(kind, path, fashion_src):
    """Write folder `kind` (FOLDERS) at path unless it exists; returns the folder to give the command."""
    if kind == "fashion":
        path = Path(fashion_src) if fashion_src else path
        if not (path / "test").exists():
            subprocess.run([sys.executable, str(REPO / "scripts" / "fashion_mnist_folders.py"), str(path)],
                           check=True)
        return path
    if not path.exists():
        (make_photos if kind == "photos" else make_big)(path, 240 if kind == "photos" else 24)
    return path


def make_model(kind, path, size):
    """An untrained model file for folder `kind` with the preset train picks by default for its images."""
    sys.path.insert(0, str(REPO))
    from cnncli.engine.model import Model
    from cnncli.store import modelfile

    if kind == "fashion":
        sys.path.insert(0, str(REPO / "scripts"))
        from fashion_mnist_folders import CLASSES

        clf = modelfile.Classifier(Model("default", (1, 28, 28), 10, seed=0), classes=list(CLASSES), color="gray",
                                   mean=[0.29], std=[0.35])
    else:
        clf = modelfile.Classifier(Model("photo", (3, size, size), 2, seed=0), classes=["cats", "dogs"],
                                   color="rgb", mean=[0.5] * 3, std=[0.25] * 3)
    modelfile.save(path, clf)
    return path


def command(args, kind, data, work):
    """The command line timed for folder `kind`."""
    cli = [sys.executable, "-m", "cnncli"]
    if args.command == "train":
        return cli + ["train", str(data), "--arch", "tiny", "--epochs", "1", "--size", str(args.size),
                      "-o", str(work / "m.safetensors"), "--overwrite"]
    model = str(make_model(kind, work / f"{kind}.safetensors", args.size))
    if args.command == "eval":
        return cli + ["eval", str(data), "-m", model]
    return cli + ["predict", str(data / "test") if (data / "test").exists() else str(data), "-m", model,
                  "--format", "tsv", "--batch-size", str(args.batch_size)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--command", choices=("train", "eval", "predict"), default="train")
    ap.add_argument("--folders", default="photos,big", help="comma-separated: photos, big, fashion")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=256, help="predict's --batch-size (a full first batch "
                    "means worker processes decode)")
    ap.add_argument("--keep", help="write the folders here and keep them (default: a temp folder)")
    ap.add_argument("--fashion", help="a Fashion-MNIST folder written by scripts/fashion_mnist_folders.py")
    args = ap.parse_args()
    kinds = args.folders.split(",")
    if any(k not in FOLDERS for k in kinds) or (args.command == "train" and "fashion" in kinds):
        sys.exit("decode_cache.py: --folders takes photos, big and (not with train) fashion")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cnncli-cache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    print(f"cnncli {args.command}, --size {args.size}, --batch-size {args.batch_size} (predict), {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| folder | empty cache CPU s (wall) | filled cache CPU s (wall) | --no-cache CPU s (wall) | filled run |")
    print("|---|---|---|---|---|")
    try:
        for kind in kinds:
            data = make_folder(kind, work / kind, args.fashion)
            cmd = command(args, kind, data, work)
            times = {"cold": [], "warm": [], "off": []}
            line = ""
            for _ in range(args.rounds):
                cache = Path(tempfile.mkdtemp(prefix="cnncli-cache-", dir=work))
                env["CNNCLI_CACHE_DIR"] = str(cache)
                for kind_, extra in (("cold", []), ("warm", []), ("off", ["--no-cache"])):
                    cpu, wall, err = run(cmd + extra, env)
                    times[kind_].append((cpu, wall))
                    if kind_ == "warm":
                        found = re.search(r"decoded \d+, \d+ from cache", err)
                        entries = sum(1 for p in cache.rglob("*") if p.is_file())
                        line = f"`{found[0]}`" if found else f"{entries} entries"
                shutil.rmtree(cache, ignore_errors=True)
            cells = [f"{statistics.median(c for c, _ in t):.2f} ({statistics.median(w for _, w in t):.1f})"
                     for t in times.values()]
            print(f"| {FOLDERS[kind]} | " + " | ".join(cells) + f" | {line} |", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
