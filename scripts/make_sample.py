"""Regenerate the bundled sample data/ from Fashion-MNIST: two classes, pullover and coat.

    python scripts/make_sample.py [--src DIR] [--out data] [--train 200] [--test 50]

Takes the FIRST `--train` images of each class from the Fashion-MNIST training file and the first `--test`
of each class from its test file, so the result is the same on every run. Files are named by their index in
the IDX file: data/train/coat/00019.png. Existing PNGs in data/train and data/test are replaced.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist_folders import CLASSES, DEFAULT_SRC, load_part, write_folders  # noqa: E402

SAMPLE_CLASSES = ("pullover", "coat")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(DEFAULT_SRC), help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    ap.add_argument("--train", type=int, default=200, help="training images per class")
    ap.add_argument("--test", type=int, default=50, help="test images per class")
    args = ap.parse_args(argv)
    wanted = [CLASSES.index(c) for c in SAMPLE_CLASSES]
    for part, n in (("train", args.train), ("test", args.test)):
        x, y = load_part(args.src, part)
        idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in wanted]))
        if (args.out / part).exists():
            shutil.rmtree(args.out / part)
        written = write_folders(args.out, part, x, y, idx, workers=1)
        print(f"{args.out / part}: {written} images ({', '.join(SAMPLE_CLASSES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
