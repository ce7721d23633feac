"""One-image `cnncli predict`, whole process, A/B between this checkout and another commit (start-up cost).

    python benchmarks/bench_startup.py [--against REV] [--rounds 20] [--json FILE]

Both sides run `python -m cnncli predict IMG.png -m M1.safetensors` in a fresh process (start, imports, load
model, decode, classify, print), the same way benchmarks/bench_predict.py times its one-image row: a 28x28 gray
PNG, the M1 network with random weights (speed does not depend on them). REV (default: none, only this
checkout runs) is exported with `git archive` into a temporary folder; each side runs with PYTHONPATH set to
its own tree, from a temporary working folder (`python -m` would put the current folder first on the path).
Bytecode is cached (PYTHONPYCACHEPREFIX in the temporary folder, one warm-up run per side), as
an installed package has it; without that every run would also compile cnncli's sources.

The sides alternate within each round and the order flips from round to round (ABBA), so load from elsewhere
hits both alike. Reported per side: median and range of wall seconds, median user and system CPU seconds of
the child, and the 1-minute load average before and after. A third row times
`python -c "import numpy, PIL.Image"`, the floor no predict can go under.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def timed(cmd, env, cwd):
    """(wall s, user CPU s, system CPU s) of one child process run in cwd; raises SystemExit on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(map(str, cmd))}\n{res.stderr.decode()[-2000:]}")
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def export_tree(rev, dest):
    """git archive REV of this repository, unpacked into dest (a folder holding cnncli/)."""
    archive = dest.with_suffix(".tar")
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def side_env(tree, work):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(tree)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="REV", help="commit to compare with (e.g. main, HEAD~3)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from PIL import Image
    from bench_predict import make_model

    model, img = work / "m1.safetensors", work / "img.png"
    make_model(model, [f"c{i}" for i in range(10)])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(img)
    predict = ["-m", "cnncli", "predict", str(img), "-m", str(model)]
    sides = {"now": [sys.executable, *predict]}
    envs = {"now": side_env(ROOT, work)}
    if args.against:
        sides["base"] = sides["now"]
        envs["base"] = side_env(export_tree(args.against, work / "base"), work)
    sides["numpy+PIL import"] = [sys.executable, "-c", "import numpy, PIL.Image"]
    envs["numpy+PIL import"] = side_env(work, work)
    for name in sides:  # warm-up: writes the bytecode cache
        timed(sides[name], envs[name], work)
    load = {"before": os.getloadavg()}
    runs = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            runs[name].append(timed(sides[name], envs[name], work))
    load["after"] = os.getloadavg()
    out = {"rounds": args.rounds, "against": args.against, "load_average": load, "python": sys.version.split()[0]}
    for name, samples in runs.items():
        walls = [s[0] for s in samples]
        out[name] = {"wall_median": statistics.median(walls), "wall_min": min(walls), "wall_max": max(walls),
                     "user_median": statistics.median(s[1] for s in samples),
                     "sys_median": statistics.median(s[2] for s in samples)}
        o = out[name]
        print(f"{name:18s} wall median {o['wall_median']:.3f} s (range {o['wall_min']:.3f}-{o['wall_max']:.3f}), "
              f"user {o['user_median']:.3f} s, sys {o['sys_median']:.3f} s")
    print(f"load average (1, 5, 15 min): before {load['before']}, after {load['after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
