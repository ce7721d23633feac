"""README's quick start with and without early stopping: `cnncli train data/ --overwrite` (early stopping on,
the default) against the same command with `--no-early-stop` (every epoch, as before early stopping was on).

    python benchmarks/early_stopping.py [--data data] [--rounds 3] [--threads 1]

Each round runs both commands once, in fresh processes, the order alternating from round to round, into a
temp folder. Per run: epochs run of the budget, the epoch kept, validation and test accuracy (from the weight
file's training summary), CPU seconds of the process (user + system; comparable under load) and wall
seconds. Prints the median of each over the rounds and the 1-minute load average before each run.
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

VARIANTS = {"early stopping (default)": [], "--no-early-stop": ["--no-early-stop"]}


def _run(data, out, extra, threads):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnncli", "train", str(data), "-o", str(out), "--overwrite", "-q",
                    "--threads", str(threads), *extra], check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    train = weights.load(out)[1]["train"]
    return {"epochs": train["epochs"], "planned": train["epochs_planned"], "best": train["best_epoch"],
            "val": train["val_accuracy"], "test": train["test_accuracy"], "cpu": cpu, "wall": wall, "load": load}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    results = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            names = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in names:
                res = _run(args.data, Path(tmp) / f"m{r}{len(results[name])}.safetensors", VARIANTS[name],
                           args.threads)
                results[name].append(res)
                print(json.dumps({"round": r + 1, "variant": name, **res}), flush=True)
    print(f"\n{'variant':<26} {'epochs':>9} {'kept':>5} {'val acc':>8} {'test acc':>9} {'CPU s':>7} "
          f"{'wall s':>7} {'load':>5}")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:<26} {med['epochs']:>4g} of {med['planned']:<2g} {med['best']:>5g} {med['val']:>8.4f} "
              f"{med['test']:>9.4f} {med['cpu']:>7.1f} {med['wall']:>7.1f} {med['load']:>5.2f}")


if __name__ == "__main__":
    main()
