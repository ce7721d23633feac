"""Train cnncli on a photo set (from make_photo_set.py) and report first-epoch loss, accuracy, time and memory.

    python scripts/photo_bench.py PHOTOS [--size 64 128 224] [--seeds 0 1 2] [--epochs N] [-- EXTRA TRAIN OPTIONS]

For each size and seed it runs `python -m cnncli train PHOTOS --size S --seed K -o TMP/model.safetensors
EXTRA...` in a fresh process (`--size auto`: no --size, train's own choice) and prints one tab-separated line: size, seed, first-epoch training loss (and the
chance level ln K), best validation accuracy, test accuracy, epochs run, wall seconds and the child's peak
resident memory in MB (ru_maxrss), then train's info lines that state an automatic choice (size,
architecture, photo-folder defaults) and its warnings. `--first-epoch-only` stops each run after its first epoch (it sends SIGINT
once the history file has one row), for the first-epoch loss alone at large sizes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# train's info lines that state an automatic choice (printed with the run, so a table row says what ran)
AUTOMATIC = ("auto ", "architecture:")


def history_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_one(data: Path, size: int, seed: int, extra: list[str], first_only: bool, tmp: Path) -> dict:
    out = tmp / f"m{size}_{seed}.safetensors"
    hist = tmp / f"m{size}_{seed}.history.csv"
    for p in (out, hist):
        p.unlink(missing_ok=True)
    sized = [] if size == "auto" else ["--size", str(size)]
    cmd = [sys.executable, "-m", "cnncli", "train", str(data), *sized, "--seed", str(seed),
           "-o", str(out), "--overwrite", *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while first_only and proc.poll() is None:
        if len(history_rows(hist)) >= 1:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    seconds = time.monotonic() - t0
    rows = history_rows(hist)
    summary, meta = {}, {}
    if out.exists():
        from cnncli.store import weights

        meta = weights.load(out)[1]
        summary = meta.get("train", {})
    return {"size": size, "seed": seed, "first_loss": float(rows[0]["train_loss"]) if rows else math.nan,
            "best_val": max((float(r["val_accuracy"]) for r in rows if r.get("val_accuracy")), default=math.nan),
            "test": summary.get("test_accuracy"), "epochs": len(rows), "seconds": round(seconds, 1),
            "exit": proc.returncode, "warnings": [ln for ln in stderr.splitlines() if "warning" in ln.lower()],
            "input": meta.get("input", {}).get("height", size), "arch": meta.get("arch"),
            "automatic": [ln for ln in stderr.splitlines() if ln.startswith(AUTOMATIC)]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--size", nargs="+", default=["64"],
                    help="input sizes; 'auto' passes no --size (train's automatic size)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--first-epoch-only", action="store_true")
    ap.add_argument("--json", action="store_true", help="one JSON object per run instead of a table row")
    args = ap.parse_args(argv)
    classes = [d for d in (args.data / "train").iterdir() if d.is_dir()]
    chance = math.log(len(classes))
    print("size\tseed\tfirst_loss\tchance\tbest_val\ttest\tepochs\tseconds\tpeak_MB\texit", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.size:
            size = size if size == "auto" else int(size)
            for seed in args.seeds:
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                r = run_one(args.data, size, seed, extra, args.first_epoch_only, Path(tmp))
                # ru_maxrss of children is the largest child so far: exact when runs grow in size, else a bound.
                r["peak_MB"] = round(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)
                if args.json:
                    print(json.dumps(r), flush=True)
                    continue
                test = "-" if r["test"] is None else f"{r['test']:.4f}"
                print(f"{size}\t{seed}\t{r['first_loss']:.3f}\t{chance:.3f}\t{r['best_val']:.4f}\t{test}\t"
                      f"{r['epochs']}\t{r['seconds']}\t{r['peak_MB']}\t{r['exit']}", flush=True)
                print(f"  input {r['input']} px, {r['arch']}", flush=True)
                for w in r["automatic"] + r["warnings"]:
                    print(f"  {w}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
