"""Figures behind README's "Evaluating" and "Checking data" sections. Each part runs in a few minutes on 2 cores.

    python scripts/decisions_demo.py check [--data data/]        near-duplicate scores; planted duplicates found

`check`: on the bundled Fashion-MNIST sample, the near-duplicate score (mean |difference| of standardised 12 px
thumbnails) of copies made five ways, against every pair of different images; then plants an exact copy across
splits, a resized copy, a re-encoded JPEG and a cross-class copy in a copy of DATA, and runs `cnncli check`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnncli.data import fingerprints  # noqa: E402
from cnncli.data.images import decode  # noqa: E402


def _cnncli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, env=env, text=True)


def _copies(src, tmp):
    """Five altered copies of one image file: (kind, path)."""
    out = []
    with Image.open(src) as im:
        big = im.resize((im.width * 3 + 1, im.height * 3 + 1), Image.BILINEAR)
        for kind, img, name, kw in (("enlarged 3x (bilinear)", big, "a.png", {}),
                                    ("JPEG quality 60", im.convert("L"), "b.jpg", {"quality": 60}),
                                    ("shrunk to 20 px", im.resize((20, 20), Image.BILINEAR), "c.png", {}),
                                    ("enlarged 3x, JPEG quality 40", big.convert("RGB"), "d.jpg", {"quality": 40}),
                                    ("enlarged 2x (Lanczos)", im.resize((im.width * 2, im.height * 2), Image.LANCZOS),
                                     "e.png", {})):
            img.save(tmp / name, **kw)
            out.append((kind, tmp / name))
    return out


def check(args):
    paths = sorted(p for p in Path(args.data).rglob("*.png"))
    thumbs = np.stack([decode(p, 32, 1)[0] for p in paths])
    z = fingerprints._standardise(thumbs)
    d = np.abs(z[:, None, :] - z[None, :, :]).mean(-1)
    iu = np.triu_indices(len(paths), 1)
    dd = d[iu]
    print(f"{len(paths)} images, {dd.size} pairs of different images: smallest scores {np.sort(dd)[:3].round(3)}, "
          f"{int((dd <= fingerprints.MAX_DIFF).sum())} at or under {fingerprints.MAX_DIFF}")
    tmp = Path(tempfile.mkdtemp())
    scores: dict = {}
    for i, p in enumerate(paths[:100]):
        for kind, q in _copies(p, tmp):
            scores.setdefault(kind, []).append(float(np.abs(fingerprints._standardise(decode(q, 32, 1))[0] - z[i]).mean()))
    for kind, v in scores.items():
        print(f"copies {kind:<30} max score {max(v):.3f} ({sum(x <= fingerprints.MAX_DIFF for x in v)}/{len(v)} found)")
    data = tmp / "planted"
    shutil.copytree(args.data, data)
    train = sorted((data / "train").iterdir())
    a, b = sorted(train[0].glob("*.png"))[:2]
    shutil.copy(a, data / "test" / train[0].name / "exact_copy.png")
    with Image.open(b) as im:
        im.resize((90, 90), Image.BILINEAR).save(data / "test" / train[0].name / "resized.png")
        im.save(data / "train" / train[0].name / "reencoded.jpg", quality=50)
    shutil.copy(sorted(train[1].glob("*.png"))[0], train[0] / "other_class.png")
    res = _cnncli("check", str(data), "--format", "json")
    rep = json.loads(res.stdout)
    planted = {"exact_copy.png", "resized.png", "reencoded.jpg", "other_class.png"}
    found = {Path(f["path"]).name for g in rep["exact_duplicates"] + rep["near_duplicates"] for f in g["files"]}
    print(f"cnncli check exit {res.returncode}: planted duplicates found {len(planted & found)}/{len(planted)}; "
          f"{len(rep['exact_duplicates'])} exact and {len(rep['near_duplicates'])} near groups, "
          f"{rep['leaks']} across splits, {rep['conflicts']} across classes")
    shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    c = sub.add_parser("check")
    c.add_argument("--data", default=str(ROOT / "data"))
    args = ap.parse_args()
    {"check": check}[args.part](args)


if __name__ == "__main__":
    main()
