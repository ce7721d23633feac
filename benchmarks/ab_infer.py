"""Before/after CPU time of cnncli batch inference: two checkouts measured in alternating fresh processes.

    python benchmarks/ab_infer.py --before OLD_CHECKOUT [--after .] [--nets m1,default64] [--rounds 5] [--threads 1]

Each round runs `benchmarks/profile_infer.py --threads N --json` once per checkout (the order alternates from
round to round), with PYTHONPATH pointing at that checkout, and records the median CPU (process) ms of a whole
inference pass. CPU time of one thread is far steadier than wall time on a shared machine; the 1-minute load
average is printed with each figure. Prints the medians over the rounds, their ranges and the speed-up. With
--threads 2 the CPU figure is both threads' (what a second thread costs: compare with --threads 1) and the wall
figure is printed too (meaningful on an idle machine only).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def one(checkout, net, passes, threads):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    r = subprocess.run([sys.executable, os.path.join(HERE, "profile_infer.py"), "--net", net, "--threads", str(threads),
                        "--passes", str(passes), "--json"], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="checkout (repository root) of the old code")
    ap.add_argument("--after", default=os.path.dirname(HERE), help="checkout of the new code (default: this one)")
    ap.add_argument("--nets", default="m1,default64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    for net in a.nets.split(","):
        res = {"before": [], "after": []}
        loads = []
        for r in range(a.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for side in order:
                loads.append(os.getloadavg()[0])
                res[side].append(one(getattr(a, side), net, a.passes, a.threads))
        med = {s: statistics.median(v["cpu_ms"] for v in res[s]) for s in res}
        wall = {s: statistics.median(v["wall_ms"] for v in res[s]) for s in res}
        rng = {s: (min(v["cpu_ms"] for v in res[s]), max(v["cpu_ms"] for v in res[s])) for s in res}
        bs = res["after"][0]["batch"]
        print(f"{net} (batch {bs}, {a.threads} thread(s), {a.rounds} rounds, load average {min(loads):.1f}-{max(loads):.1f}): "
              f"CPU ms per pass before {med['before']:.2f} ({rng['before'][0]:.2f}-{rng['before'][1]:.2f}), "
              f"after {med['after']:.2f} ({rng['after'][0]:.2f}-{rng['after'][1]:.2f}); "
              f"{bs / med['before'] * 1e3:,.0f} -> {bs / med['after'] * 1e3:,.0f} img per CPU second, "
              f"{med['before'] / med['after']:.2f}x; wall ms per pass {wall['before']:.2f} -> {wall['after']:.2f}")


if __name__ == "__main__":
    main()
