"""Convert Fashion-MNIST (IDX files) into labeled PNG folders: OUT/train/<class>/ and OUT/test/<class>/.

    python scripts/fashion_mnist_folders.py OUT [--src DIR] [--workers 2]

DIR holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz (plain or .gz). File names are the image's index in its IDX file (train/coat/00019.png),
so the output is deterministic. Fashion-MNIST: Zalando Research, MIT licence.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# Where Debian's dataset-fashion-mnist package puts the IDX files (`apt-get install dataset-fashion-mnist`).
DEFAULT_SRC = "/usr/share/datasets/fashion-mnist"
CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
PARTS = {"train": "train", "test": "t10k"}


def _open(path: Path):
    for p in (path, path.with_name(path.name + ".gz")):
        if p.exists():
            return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    gz = path.with_name(path.name + ".gz")
    raise SystemExit(f"error: {gz}: no such file")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (ubyte data) as a numpy array with the shape from its header."""
    with _open(path) as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"error: {path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_part(src: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of 'train' or 'test'."""
    stem = PARTS[part]
    x = read_idx(src / f"{stem}-images-idx3-ubyte")
    y = read_idx(src / f"{stem}-labels-idx1-ubyte")
    if len(x) != len(y):
        raise SystemExit(f"error: {src}: {part} images and labels differ in count")
    return x, y


def _write(job: tuple[str, np.ndarray, np.ndarray, np.ndarray]) -> int:
    folder, idx, x, y = job
    for i, img, lbl in zip(idx, x, y):
        Image.fromarray(img, "L").save(Path(folder) / CLASSES[lbl] / f"{i:05d}.png", compress_level=6)
    return len(idx)


def write_folders(out: Path, part: str, x: np.ndarray, y: np.ndarray, idx: np.ndarray, workers: int) -> int:
    """Write the images x[idx] as OUT/part/<class>/<index>.png; returns the number written."""
    for c in sorted(set(y[idx].tolist())):
        (out / part / CLASSES[c]).mkdir(parents=True, exist_ok=True)
    step = 2000
    jobs = [(str(out / part), idx[i : i + step], x[idx[i : i + step]], y[idx[i : i + step]])
            for i in range(0, len(idx), step)]
    if workers <= 1:
        return sum(map(_write, jobs))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(_write, jobs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output folder (created)")
    ap.add_argument("--src", type=Path, default=Path(DEFAULT_SRC), help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    for part in PARTS:
        x, y = load_part(args.src, part)
        n = write_folders(args.out, part, x, y, np.arange(len(y)), args.workers)
        print(f"{args.out / part}: {n} images in {len(set(y.tolist()))} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
