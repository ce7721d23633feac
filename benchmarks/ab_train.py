"""Training (or inference) throughput of this checkout against an older one, each round a fresh process per side,
alternating.

    python benchmarks/ab_train.py --before OLD_CHECKOUT [--task train|infer] [--net m1] [--threads 2] [--rounds 5]

Each side is `benchmarks/side.py cnncli TASK NET` run with that checkout's cnncli first on the path (this
checkout's side.py for both, so the method is the same); the order within a round alternates. Prints every
round's images/s and the 1-minute load average before it, then each side's median and the ratio of medians.
On a shared machine compare the ratio, not the absolute figures.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _side(checkout, task, net, threads, seconds):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    out = subprocess.run([sys.executable, os.path.join(HERE, "side.py"), "cnncli", task, net, "--threads",
                          str(threads), "--seconds", str(seconds)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description="training img/s, an older checkout against this one, alternating")
    ap.add_argument("--before", required=True, help="the older checkout (a folder holding its cnncli package)")
    ap.add_argument("--task", choices=["train", "infer"], default="train")
    ap.add_argument("--net", default="m1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    sides = {"before": a.before, "after": os.path.dirname(HERE)}
    rates = {name: [] for name in sides}
    for r in range(a.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            rec = _side(sides[name], a.task, a.net, a.threads, a.seconds)
            rates[name].append(rec["img_s"])
            print(f"round {r + 1} {name:6s} {rec['img_s']:8,.0f} img/s  load {rec['load_before']:.2f}", flush=True)
    med = {name: statistics.median(v) for name, v in rates.items()}
    for name, v in rates.items():
        print(f"{name:6s} median {med[name]:,.0f} img/s (range {min(v):,.0f}-{max(v):,.0f})")
    print(f"after / before: {med['after'] / med['before']:.2f}x ({a.task} {a.net}, {a.threads} threads, {a.rounds} rounds)")


if __name__ == "__main__":
    main()
