"""Throughput of `cnncli predict` on this machine, plain and through Dask, plus the micro-measurements behind
README's 10-machine extrapolation ("Batch runs").

    python benchmarks/cluster_throughput.py [--png 20000] [--jpeg 2000] [--rounds 3] [--data DIR]
                                            [--configs plain,local:1,local:2] [--skip-micro]

Data (made once in --data, default a temporary folder; kept and reused when --data is given):
- N small PNGs: 28x28 gray, seeded noise (the Fashion-MNIST size), and an untrained model of the default
  architecture for 1x28x28 inputs (the weights do not change the work done);
- M photo-sized JPEGs: 1600x1200, quality 85, each a random crop of one of the colour sample photos shipped
  in scikit-image's wheel (astronaut, coffee, chelsea, rocket, ...), resized, mirrored at random and given
  seeded sensor-like noise (without scikit-image: seeded gradients and noise); model: default architecture,
  3x64x64 inputs.

Runs: `python -m cnncli predict FOLDER -m MODEL --format tsv > file` for each configuration (plain, then
`--scheduler local:1` and `local:2`), in interleaved rounds (plain, local:1, local:2, plain, ...), so a change in
the machine's load hits every configuration alike. Wall time of the whole process (start-up, model, cluster start,
decode, classify, write) per run; reports images/s from the median wall time, the range over rounds, the
overhead against plain, and the 1-minute load average around every run.

Micro-measurements (skip with --skip-micro):
- the Dask scheduler's task rate: trivial tasks/s through client.map on a LocalCluster of 2 worker processes;
- the client's output stream: rows/s that predict's decision and tsv writer (the client's work per row in a
  cluster run) produce into /dev/null;
- file read bandwidth: MB/s and files/s reading every file of each data set once (page cache warm: the files
  were just written or read; a cold shared file system is the unknown the extrapolation states).
Finally the 10-machine extrapolation, with its arithmetic, from these numbers.
"""

import argparse
import os
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

PHOTO = (1600, 1200)
SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
           "retina.jpg", "ihc.png")


def _load():
    return os.getloadavg()[0]


# ---------------------------------------------------------------- data


def make_pngs(folder, n, seed=0):
    """n 28x28 gray PNGs of seeded noise in folder (skipped when it already holds n); returns the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) != n:
        rng = np.random.default_rng(seed)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / f"img_{i:06d}.png")
    model = folder.parent / f"{folder.name}.safetensors"
    modelfile.save(model, modelfile.Classifier(Model("default", (1, 28, 28), 10, seed=0),
                                               [f"c{k}" for k in range(10)], "gray", [0.5], [0.25]))
    return model


def _sample_photos():
    """The colour sample photos in scikit-image's wheel as RGB uint8 arrays; [] without scikit-image."""
    try:
        import skimage.data
    except ImportError:
        return []
    root = Path(skimage.data.__file__).parent
    out = []
    for name in SAMPLES:
        try:
            with Image.open(root / name) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError:
            continue
    return out


def _photo(rng, sources, noise):
    """One 1600x1200 RGB uint8 picture: a random crop of a sample photo (or a gradient), resized, noise added."""
    w, h = PHOTO
    if sources:
        src = sources[rng.integers(len(sources))]
        sh, sw = src.shape[:2]
        ch = int(sh * rng.uniform(0.6, 1.0))
        cw = min(sw, int(ch * w / h))
        y, x = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
        img = Image.fromarray(src[y:y + ch, x:x + cw]).resize(PHOTO, Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        base = np.asarray(img, dtype=np.int16)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * rng.uniform(0.05, 0.15) + yy * rng.uniform(0.05, 0.15) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], -1).astype(np.int16)
    oy, ox = rng.integers(0, noise.shape[0] - h + 1), rng.integers(0, noise.shape[1] - w + 1)
    return np.clip(base + noise[oy:oy + h, ox:ox + w], 0, 255).astype(np.uint8)


def make_jpegs(folder, n, seed=0):
    """n photo-sized JPEGs (quality 85) in folder (skipped when it already holds n); returns the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) != n:
        rng = np.random.default_rng(seed)
        sources = _sample_photos()
        noise = rng.normal(0, 6, (PHOTO[1] + 64, PHOTO[0] + 64, 3)).astype(np.int16)  # one field, shifted per image
        for i in range(n):
            Image.fromarray(_photo(rng, sources, noise), "RGB").save(folder / f"photo_{i:05d}.jpg", quality=85)
        print(f"made {n} JPEGs from {len(sources) or 'no'} sample photos", file=sys.stderr)
    model = folder.parent / f"{folder.name}.safetensors"
    modelfile.save(model, modelfile.Classifier(Model("default", (3, 64, 64), 2, seed=0), ["a", "b"], "rgb",
                                               [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
    return model


# ---------------------------------------------------------------- end-to-end runs


def run_predict(folder, model, extra, n, out_file):
    """One `cnncli predict` run; returns (wall seconds, load before, load after, the summary line)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("CNNCLI_SCHEDULER", None)
    before = _load()
    t0 = time.perf_counter()
    with open(out_file, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "cnncli", "predict", str(folder), "-m", str(model), "--format",
                               "tsv", *extra], env=env, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(out_file, "rb") as f:
        rows = sum(1 for _ in f) - 1
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or rows != n:
        raise SystemExit(f"predict {' '.join(extra)} on {folder}: exit {proc.returncode}, {rows} rows of {n}: "
                         + " | ".join(err[-3:]))
    return wall, before, _load(), err[-1] if err else ""


def throughput(name, folder, model, n, configs, rounds, tmp):
    """Interleaved rounds over configs; returns {config: [wall, ...]} and prints one line per run."""
    walls = {c: [] for c in configs}
    loads = []
    for r in range(rounds):
        for c in configs:
            extra = [] if c == "plain" else ["--scheduler", c]
            wall, before, after, summary = run_predict(folder, model, extra, n, tmp / "out.tsv")
            walls[c].append(wall)
            loads += [before, after]
            print(f"  {name} round {r + 1} {c}: {wall:.2f} s ({n / wall:,.0f} img/s), load {before:.1f}->"
                  f"{after:.1f}; {summary}", flush=True)
    plain = statistics.median(walls["plain"]) if "plain" in walls else None
    print(f"{name}: {n:,} files; load average {min(loads):.1f}-{max(loads):.1f} over these runs")
    print("| configuration | median wall | img/s (median) | img/s range | time vs plain |")
    print("|---|---|---|---|---|")
    for c, w in walls.items():
        med = statistics.median(w)
        ratio = f"{med / plain:.2f}x ({(med / plain - 1) * 100:+.0f}%)" if plain else "-"
        print(f"| {c} | {med:.1f} s | {n / med:,.0f} | {n / max(w):,.0f}-{n / min(w):,.0f} | {ratio} |")
    return {c: n / statistics.median(w) for c, w in walls.items()}


# ---------------------------------------------------------------- micro-measurements


def _noop(x):
    return x


def task_rate(n=3000, repeats=3):
    """Trivial tasks through client.map on a LocalCluster of 2 single-thread worker processes: (median tasks/s of
    wall time, median tasks per CPU second of this process, which runs the scheduler and the client)."""
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    rates = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        client.gather(client.map(_noop, range(100), pure=False))  # warm: connections, function pickled
        for _ in range(repeats):
            load = _load()
            t0, c0 = time.perf_counter(), time.process_time()
            client.gather(client.map(_noop, range(n), pure=False))
            rates.append((n / (time.perf_counter() - t0), n / (time.process_time() - c0)))
            print(f"  scheduler: {n} trivial tasks at {rates[-1][0]:,.0f} tasks/s wall, {rates[-1][1]:,.0f} per CPU "
                  f"second of scheduler + client (load {load:.1f})", flush=True)
    return statistics.median(r[0] for r in rates), statistics.median(r[1] for r in rates)


def output_rate(n=200_000, classes=10):
    """Rows/s of predict's client-side work per row (Decider.decide + Writer.result, tsv) into /dev/null."""
    from cnncli.commands.predict import Decider, Writer

    names = [f"c{k}" for k in range(classes)]
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(classes), 1000).astype(np.float32)
    ood = rng.normal(-5, 1, 1000).astype(np.float32)
    paths = [f"/data/incoming/2026-12-01/camera-{i % 7}/img_{i:08d}.png" for i in range(1000)]
    decider = Decider(names)
    with open(os.devnull, "w") as null:
        writer = Writer("tsv", names, 1, False, null)
        load = _load()
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            k = i % 1000
            label, prob, others = decider.decide(p[k])
            writer.result(paths[k], label, prob, others, p[k], ood[k])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"  output: {n:,} rows in {wall:.2f} s wall, {cpu:.2f} s CPU: {n / wall:,.0f} rows/s wall, "
          f"{n / cpu:,.0f} rows/s per CPU second (load {load:.1f})", flush=True)
    return n / cpu


def read_bandwidth(folder):
    """(MB/s, files/s, mean bytes per file) reading every file in folder once."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    load = _load()
    t0 = time.perf_counter()
    total = 0
    for p in files:
        with open(p, "rb") as f:
            total += len(f.read())
    wall = time.perf_counter() - t0
    print(f"  read: {len(files):,} files, {total / 1e6:,.1f} MB in {wall:.2f} s: {total / 1e6 / wall:,.0f} MB/s, "
          f"{len(files) / wall:,.0f} files/s (page cache warm; load {load:.1f})", flush=True)
    return total / 1e6 / wall, len(files) / wall, total / len(files)


# ---------------------------------------------------------------- extrapolation


def extrapolate(name, rate, tasks_per_s, rows_per_s, bytes_per_file, machines=10, batch=256):
    """Print the paper extrapolation for `machines` machines that each score at `rate` img/s."""
    need = machines * rate
    print(f"{name}: {machines} machines x {rate:,.0f} img/s = {need:,.0f} img/s wanted")
    print(f"  scheduler: {need:,.0f} img/s / {batch} images per task = {need / batch:,.1f} tasks/s "
          f"= {need / batch / tasks_per_s:.1%} of the measured {tasks_per_s:,.0f} tasks/s; batches of at least "
          f"{need / tasks_per_s:,.1f} images keep it under its limit, {need / (0.1 * tasks_per_s):,.0f} under 10% of it")
    print(f"  client output: {need:,.0f} rows/s against {rows_per_s:,.0f} rows/s per CPU second "
          f"({need / rows_per_s:.0%} of one core)")
    mb = need * bytes_per_file / 1e6
    print(f"  storage: {need:,.0f} img/s x {bytes_per_file / 1e3:,.1f} kB = {mb:,.1f} MB/s from shared storage "
          f"({mb / 117:.0%} of 1 GbE at 117 MB/s, {mb / 1170:.0%} of 10 GbE)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--png", type=int, default=20000)
    ap.add_argument("--jpeg", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None, help="keep the generated data here (reused next time)")
    ap.add_argument("--configs", default="plain,local:1,local:2")
    ap.add_argument("--skip-micro", action="store_true")
    args = ap.parse_args()
    configs = args.configs.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data or Path(scratch)
        tmp = Path(scratch)
        sets = []
        if args.png:
            sets.append(("PNG 28x28", root / "png", make_pngs(root / "png", args.png), args.png))
        if args.jpeg:
            sets.append(("JPEG 1600x1200", root / "jpeg", make_jpegs(root / "jpeg", args.jpeg), args.jpeg))
        rates = {name: throughput(name, folder, model, n, configs, args.rounds, tmp)
                 for name, folder, model, n in sets}
        if args.skip_micro:
            return
        reads = {name: read_bandwidth(folder) for name, folder, _, _ in sets}
        rows = output_rate()
        tasks, tasks_cpu = task_rate()
        print(f"micro: scheduler {tasks:,.0f} tasks/s wall ({tasks_cpu:,.0f} per CPU second); output {rows:,.0f} rows/s per CPU second; "
              + "; ".join(f"{k}: {v[0]:,.0f} MB/s, {v[1]:,.0f} files/s, {v[2] / 1e3:,.1f} kB/file"
                          for k, v in reads.items()))
        for name, _, _, _ in sets:
            if "plain" in rates[name]:
                extrapolate(name, rates[name]["plain"], tasks, rows, reads[name][2])
                extrapolate(name + " (scheduler at its CPU-bound rate)", rates[name]["plain"], tasks_cpu, rows,
                            reads[name][2])
    print(f"load average now: {os.getloadavg()} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
