"""How much a second thread buys cnncli, against what a second core could buy: one process with 1 thread, one
process with 2 threads, and two 1-thread processes running at the same time (their images/s added).

    python benchmarks/thread_scaling.py [--rows train:m1,infer:m1] [--rounds 3] [--seconds 3] [--cnncli PATH]

Two processes share nothing but the cores, so their sum is what the machine gives two independent workers; the
2-thread process falls short of it by what its threads cost each other (hand-offs of the GIL between compiled
calls, waiting for the slowest chunk, serial parts). Each measurement is a fresh process of benchmarks/side.py;
the three set-ups take turns within a round. Run it on an idle machine: the 1-minute load average is printed.
Reported: medians over the rounds (and ranges) of images/s, and the 2-thread process against 1 thread and
against the two processes.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cmd(python, task, net, threads, seconds):
    return [python, str(HERE / "side.py"), "cnncli", task, net, "--threads", str(threads), "--seconds", str(seconds)]


def _rate(stdout):
    return json.loads(stdout.strip().splitlines()[-1])["img_s"]


def _run(cmds, env):
    """Start every command at once; images/s summed over them."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    total = 0.0
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"thread_scaling.py: {' '.join(cmds[0][2:])} failed: {(err.strip().splitlines() or ['?'])[-1]}")
        total += _rate(out)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="train:m1,infer:m1", help="comma list of task:net (nets of benchmarks/nets.py)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cnncli", default=str(HERE.parent), help="checkout to import cnncli from (default: this one)")
    a = ap.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([a.cnncli] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    py = sys.executable
    for row in a.rows.split(","):
        task, net = row.split(":")
        runs = {"1 thread": [], "2 threads": [], "2 processes x 1 thread": []}
        loads = []
        for _ in range(a.rounds):
            loads.append(os.getloadavg()[0])
            runs["1 thread"].append(_run([_cmd(py, task, net, 1, a.seconds)], env))
            runs["2 threads"].append(_run([_cmd(py, task, net, 2, a.seconds)], env))
            runs["2 processes x 1 thread"].append(_run([_cmd(py, task, net, 1, a.seconds)] * 2, env))
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"{task} {net} (load average {min(loads):.2f}-{max(loads):.2f}, {a.rounds} rounds)")
        for k, v in runs.items():
            print(f"  {k:24s} {med[k]:9,.0f} img/s  ({min(v):,.0f}-{max(v):,.0f})")
        print(f"  2 threads / 1 thread: {med['2 threads'] / med['1 thread']:.2f}x; "
              f"2 threads / 2 processes: {med['2 threads'] / med['2 processes x 1 thread']:.2f}")


if __name__ == "__main__":
    main()
