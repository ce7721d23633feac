"""Fair side-by-side throughput: cnncli against PyTorch (training, inference) and onnxruntime (inference).

    python benchmarks/run.py --torch-python PYTHON [--rounds 3] [--seconds 3] [--rows ROWS] [--json FILE]

PYTHON is an interpreter with torch (and onnx, onnxruntime for the inference reference) installed, or set
CNNCLI_BENCH_TORCH_PYTHON. Without one, only cnncli's side runs. ROWS is a comma list of task:net pairs
(default: all rows of the table in README.md, section "Performance").

Every measurement is a fresh process running benchmarks/side.py, so no two engines ever share a process or a
thread pool. The sides take turns within each round, and the order rotates from round to round, so a burst
of load from elsewhere hits every side alike. The PyTorch and onnxruntime processes get the environment minus
every variable cnncli would set (thread counts, numba settings); cnncli's process gets the environment as is.
Reported per side: the median images/s over the rounds and the range; ratios are cnncli's median over the
other side's median. The 1-minute load average is recorded before every process.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = ["train:m1", "train:default28", "train:default64", "train:default128", "infer:m1", "infer:default64"]
OURS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")


def envs(cnncli_path=HERE.parent):
    """(cnncli's environment, the reference engines' environment); cnncli_path is the checkout cnncli runs from."""
    ref = {k: v for k, v in os.environ.items()
           if k not in OURS and not k.startswith(("NUMBA_", "CNNCLI_")) and k != "PYTHONPATH"}
    mine = dict(os.environ)
    mine["PYTHONPATH"] = os.pathsep.join([str(cnncli_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return mine, ref


def one(python, side, task, net, args, env):
    cmd = [python, str(HERE / "side.py"), side, task, net, "--threads", str(args.threads),
           "--seconds", str(args.seconds)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1:] or ["(no message)"]
        sys.exit(f"run.py: {side} {task} {net} failed (exit {res.returncode}): {tail[0]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt(v):
    return f"{v:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-python", default=os.environ.get("CNNCLI_BENCH_TORCH_PYTHON"),
                    help="interpreter with torch, onnx, onnxruntime (default: $CNNCLI_BENCH_TORCH_PYTHON)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for cnncli's side (default: this one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per process")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--cnncli-path", default=str(HERE.parent),
                    help="the cnncli checkout to measure (default: this one; older, flat layouts work too)")
    ap.add_argument("--json", help="also write every measurement to this file")
    args = ap.parse_args()
    mine, ref = envs(args.cnncli_path)
    if not args.torch_python:
        print("run.py: no --torch-python (or CNNCLI_BENCH_TORCH_PYTHON): measuring cnncli only", file=sys.stderr)
    print(f"{args.threads} threads per side, {args.rounds} interleaved rounds, {args.seconds:g} s per process; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    print("| row | cnncli img/s | PyTorch img/s | cnncli / PyTorch | onnxruntime img/s | cnncli / ort | load |")
    print("|---|---|---|---|---|---|---|")
    records = []
    for row in args.rows.split(","):
        task, net = row.split(":")
        sides = [("cnncli", args.python, mine)]
        if args.torch_python:
            sides.append(("torch", args.torch_python, ref))
            if task == "infer":
                sides.append(("ort", args.torch_python, ref))
        rates = {s[0]: [] for s in sides}
        loads = []
        for r in range(args.rounds):
            for side, python, env in sides[r % len(sides):] + sides[:r % len(sides)]:
                rec = one(python, side, task, net, args, env)
                records.append(rec)
                rates[side].append(rec["img_s"])
                loads.append(rec["load_before"])
        med = {k: statistics.median(v) for k, v in rates.items()}
        cells = [f"{fmt(med['cnncli'])} ({fmt(min(rates['cnncli']))}–{fmt(max(rates['cnncli']))})"]
        for ref_side in ("torch", "ort"):
            if ref_side in med:
                cells += [f"{fmt(med[ref_side])} ({fmt(min(rates[ref_side]))}–{fmt(max(rates[ref_side]))})",
                          f"{med['cnncli'] / med[ref_side]:.2f}"]
            else:
                cells += ["–", "–"]
        print(f"| {task} {net} (batch {rec['batch']}, {rec['data']}) | " + " | ".join(cells)
              + f" | {min(loads):.1f}–{max(loads):.1f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
