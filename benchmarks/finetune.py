"""Fine-tuning against training from scratch on a small new batch of images: `train --init` as a monthly retrain.

    python benchmarks/finetune.py [--data data] [--new 25] [--seeds 3] [--threads 1]

The bundled sample's training images (data/train/<class>/) are split by file name into an "old" part and a
small "new" part (--new images per class, the last ones); data/test/ is the test set of every run. Per seed:

  old            cnncli train OLD -o old.safetensors               (the model in use)
  scratch        cnncli train NEW                                  (only the new images, random start)
  init           cnncli train NEW --init old.safetensors
  freeze         cnncli train NEW --init old.safetensors --freeze 2
  all, scratch   cnncli train ALL                                  (old and new images: a full retrain)
  all, init      cnncli train ALL --init old.safetensors           (README's monthly retrain)

each with the default options otherwise (--seed varies). NEW holds the new images as NEW/train/<class>/, ALL
the old and the new ones, each with data/test/ as test/ (links), so a validation split held out of their
training images picks the epoch. Prints per
variant the median test accuracy over the seeds, its range, epochs run, CPU seconds (user + system of the
process) and the 1-minute load average.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnncli.store import weights  # noqa: E402


def _link_tree(files_by_class, root):
    for cls, files in files_by_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.symlink(f.resolve(), root / cls / f.name)


def _train(args, threads, cache):
    env = dict(os.environ, PYTHONPATH=str(REPO), CNNCLI_CACHE_DIR=str(cache))  # never the user's cache
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnncli", "train", *map(str, args), "--overwrite", "-q",
                    "--threads", str(threads)], check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = Path(args[args.index("-o") + 1])
    train = weights.load(out)[1]["train"]
    return {"test": train["test_accuracy"], "epochs": train["epochs"], "load": load, "wall": wall,
            "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--new", type=int, default=25, help="new training images per class")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    data = Path(args.data)
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    files = {c: sorted((data / "train" / c).iterdir()) for c in classes}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _link_tree({c: f[:-args.new] for c, f in files.items()}, tmp / "old" / "train")
        _link_tree({c: sorted((data / "test" / c).iterdir()) for c in classes}, tmp / "old" / "test")
        _link_tree({c: f[-args.new:] for c, f in files.items()}, tmp / "new" / "train")
        _link_tree({c: sorted((data / "test" / c).iterdir()) for c in classes}, tmp / "new" / "test")
        _link_tree(files, tmp / "all" / "train")
        _link_tree({c: sorted((data / "test" / c).iterdir()) for c in classes}, tmp / "all" / "test")
        for seed in range(args.seeds):
            s = ["--seed", str(seed)]
            old = tmp / f"old{seed}.safetensors"
            runs = {"old (all but the new images)": [tmp / "old", "-o", old, *s],
                    "scratch (new images only)": [tmp / "new", "-o", tmp / "scratch.safetensors", *s],
                    "--init old": [tmp / "new", "-o", tmp / "tuned.safetensors", "--init", old, *s],
                    "--init old --freeze 2": [tmp / "new", "-o", tmp / "frozen.safetensors", "--init", old,
                                              "--freeze", "2", *s],
                    "all images, scratch": [tmp / "all", "-o", tmp / "all.safetensors", *s],
                    "all images, --init old": [tmp / "all", "-o", tmp / "all-tuned.safetensors", "--init", old, *s]}
            for name, argv in runs.items():
                res = _train(argv, args.threads, tmp / "cache")
                results.setdefault(name, []).append(res)
                print(json.dumps({"seed": seed, "variant": name, **res}), flush=True)
    n_old = sum(len(f) for f in files.values()) - args.new * len(classes)
    print(f"\n{len(classes)} classes; old: {n_old} training images; new: {args.new} per class; "
          f"test: {data / 'test'}; {args.seeds} seeds")
    print(f"{'variant':<30} {'test acc (median, range)':>26} {'epochs':>7} {'CPU s':>6} {'load':>5}")
    for name, runs in results.items():
        acc = [r["test"] for r in runs]
        print(f"{name:<30} {statistics.median(acc):>10.3f} ({min(acc):.3f}-{max(acc):.3f})  "
              f"{statistics.median(r['epochs'] for r in runs):>7g} {statistics.median(r['cpu'] for r in runs):>6.1f} "
              f"{statistics.median(r['load'] for r in runs):>5.2f}")


if __name__ == "__main__":
    main()
