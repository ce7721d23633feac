"""The nightly-run demo of README ("Batch runs"): `predict --ledger` on N small PNGs, then on 10 new ones.

    python benchmarks/nightly_ledger.py [--n 2000] [--repeats 3]

Per repeat, in a fresh temp folder: N 28x28 gray PNGs and an untrained model of the default architecture;
run 1 scores everything into a new ledger, 10 PNGs are added, run 2 (--new-only) scores only those; then
a third run is killed with SIGKILL after half its rows and a fourth completes the ledger. Prints the median
wall time of each run over the repeats, the rows each printed, the ledger's row count, and the load average.
"""

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnncli.engine.model import Model  # noqa: E402
from cnncli.store import modelfile  # noqa: E402


def _images(folder, n, start, rng):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / f"img_{i:06d}.png")


def _cnncli(args, kill_after=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    rows = 0
    for _ in proc.stdout:
        rows += 1
        if kill_after is not None and rows >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.communicate()
    return time.perf_counter() - t0, rows - 1  # minus the header


def one(n):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        _images(tmp / "in", n, 0, rng)
        model = tmp / "m.safetensors"
        modelfile.save(model, modelfile.Classifier(Model("default", (1, 28, 28), 10, seed=0),
                                                   [f"c{k}" for k in range(10)], "gray", [0.5], [0.25]))
        ledger, killed = tmp / "l.sqlite", tmp / "k.sqlite"
        base = ["predict", tmp / "in", "-m", model, "--new-only"]
        first = _cnncli(base + ["--ledger", ledger])
        _images(tmp / "in", 10, n, rng)
        second = _cnncli(base + ["--ledger", ledger])
        _cnncli(base + ["--ledger", killed], kill_after=n // 2)
        after_kill = _cnncli(base + ["--ledger", killed])
        with sqlite3.connect(killed) as db:
            stored = db.execute("SELECT count(*), count(DISTINCT content_sha256) FROM results").fetchone()
        return first, second, after_kill, stored


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    runs = [one(args.n) for _ in range(args.repeats)]
    for k, what in enumerate(["run 1 (empty ledger)", "run 2 (10 new files)", "rerun after kill -9 at half"]):
        secs = statistics.median(r[k][0] for r in runs)
        print(f"{what}: {secs:.2f} s median, rows printed {[r[k][1] for r in runs]}")
    print(f"ledger after kill + rerun: rows, distinct contents = {[r[3] for r in runs]} (want {args.n + 10})")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
