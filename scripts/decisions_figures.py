"""Figures behind README's "Evaluating" section: threshold rules, calibration, out-of-distribution scores.

    python scripts/decisions_figures.py [--src DIR] [--seeds 5] [--work DIR]

Needs the Fashion-MNIST IDX files (see scripts/fashion_mnist_folders.py; default DIR as there). Takes 6-10
minutes on 2 cores. Every model is trained and scored through the real `cnncli` commands:

1. Threshold rules. A two-class set: coats ("malignant", the positive class) vs pullovers ("benign") with
   train/ (400 per class), val/ (20 per class: a small validation set, as clinics have) and test/ (500 per
   class), drawn afresh for each seed; `cnncli train --arch m1 --epochs 8`. On val, the old rule (the
   highest threshold whose sensitivity meets the target) and the new one (`cnncli eval --pick-threshold`,
   which picks on val) each choose a threshold for targets 0.90 and 0.95; the table shows the sensitivity
   each reaches on the 500 test coats.
2. Calibration: `cnncli eval --calibrate` (fits on val, reports the test images before and after) on the
   two-class models and on 10-class Fashion-MNIST models (500 / 100 / 100 images per class, m1, 10 epochs,
   and 40 epochs on the same images, which makes the model over-confident).
3. Out-of-distribution: the 10-class model's `ood_score` (`cnncli predict --format jsonl`) and one minus the
   top probability, as AUROC separating the 1,000 test images from 50 blank frames (gray levels 0-255),
   200 uniform-noise and 200 Gaussian-noise images, and 300 digits drawn with Pillow's font.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fashion_mnist_folders import CLASSES, DEFAULT_SRC, load_part  # noqa: E402

from cnncli.report.metrics import roc_auc, roc_curve  # noqa: E402


def cnncli(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check and res.returncode != 0:
        raise SystemExit(f"cnncli {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def write(folder, images, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img, "L").save(folder / f"{names[i] if names is not None else i:05d}.png")


def two_class_set(out, x, y, xt, yt, rng):
    """coat -> malignant (positive), pullover -> benign; returns the folder."""
    for name, cls in (("malignant", CLASSES.index("coat")), ("benign", CLASSES.index("pullover"))):
        idx = rng.permutation(np.flatnonzero(y == cls))
        write(out / "train" / name, x[idx[:400]], idx[:400])
        write(out / "val" / name, x[idx[400:420]], idx[400:420])
        tidx = np.flatnonzero(yt == cls)[:500]
        write(out / "test" / name, xt[tidx], tidx)
    return out


def old_rule(y01, score, target):
    """The rule eval used before: the highest observed score whose sensitivity is >= target."""
    fpr, tpr, thr = roc_curve(y01, score)
    return float(thr[int(np.flatnonzero(tpr >= target - 1e-12)[0])])


def scores_of(model, folder):
    """(labels 0/1 with malignant = 1, P(malignant)) for folder/{benign,malignant} via cnncli predict."""
    y, s = [], []
    for label, name in ((0, "benign"), (1, "malignant")):
        rows = cnncli("predict", str(folder / name), "-m", str(model), "--format", "jsonl", "--all-probs").stdout
        for line in rows.splitlines():
            s.append(json.loads(line)["probabilities"]["malignant"])
            y.append(label)
    return np.array(y), np.array(s)


def thresholds_and_calibration(work, x, y, xt, yt, seeds):
    rows, cal = [], []
    for seed in range(seeds):
        data = two_class_set(work / f"two{seed}", x, y, xt, yt, np.random.default_rng(seed))
        model = work / f"two{seed}.safetensors"
        cnncli("train", str(data), "--arch", "m1", "--epochs", "8", "--seed", str(seed), "-o", str(model), "-q",
               "--overwrite")
        yv, sv = scores_of(model, data / "val")
        yt2, st = scores_of(model, data / "test")
        for target in (0.90, 0.95):
            told = old_rule(yv, sv, target)
            rep = json.loads(cnncli("eval", str(data), "-m", str(model), "--pick-threshold",
                                    f"sensitivity={target}", "--format", "json").stdout)
            tnew = rep["picked_threshold"]["threshold"]
            rows.append((seed, target, told, float((st[yt2 == 1] >= told).mean()), float((st[yt2 == 0] < told).mean()),
                         tnew, rep["sensitivity"], rep["specificity"]))
        rep = json.loads(cnncli("eval", str(data), "-m", str(model), "--calibrate", "--format", "json").stdout)
        cal.append(rep["calibration"])
    print("\n1. threshold rules, picked on val (20 malignant), test sensitivity / specificity on 500 + 500 images")
    print("seed target | old: threshold sens  spec | new: threshold sens  spec")
    for r in rows:
        print(f"{r[0]:>4} {r[1]:.2f}   | {r[2]:14.4f} {r[3]:.3f} {r[4]:.3f} | {r[5]:14.4f} {r[6]:.3f} {r[7]:.3f}")
    for target in (0.90, 0.95):
        old = [r[3] for r in rows if r[1] == target]
        new = [r[6] for r in rows if r[1] == target]
        print(f"target {target:.2f}: mean test sensitivity old {np.mean(old):.3f} (min {min(old):.3f}, "
              f"{sum(v >= target for v in old)}/{len(old)} seeds meet it), new {np.mean(new):.3f} "
              f"(min {min(new):.3f}, {sum(v >= target for v in new)}/{len(new)} meet it)")
    print("\n2a. calibration of the two-class models (fitted on val, scored on test)")
    for seed, c in enumerate(cal):
        s = c["scored"]
        print(f"seed {seed}: T {c['temperature']:.3f}; test ECE {s['before']['ece']:.4f} -> {s['after']['ece']:.4f}, "
              f"Brier {s['before']['brier']:.4f} -> {s['after']['brier']:.4f}")


def digits(n, rng):
    out = []
    for _ in range(n):
        im = Image.new("L", (28, 28), 0)
        font = ImageFont.load_default(size=int(rng.integers(20, 27)))
        ImageDraw.Draw(im).text((int(rng.integers(5, 10)), int(rng.integers(-3, 1))), str(int(rng.integers(0, 10))),
                                fill=255, font=font, stroke_width=1, stroke_fill=255)
        out.append(np.asarray(im))
    return np.stack(out)


def fashion_ten(work, x, y, xt, yt):
    data = work / "fm10"
    for c, name in enumerate(CLASSES):
        idx = np.flatnonzero(y == c)
        write(data / "train" / name, x[idx[:500]], idx[:500])
        write(data / "val" / name, x[idx[500:600]], idx[500:600])
        tidx = np.flatnonzero(yt == c)[:100]
        write(data / "test" / name, xt[tidx], tidx)
    model = work / "fm10.safetensors"
    cnncli("train", str(data), "--arch", "m1", "--epochs", "10", "-o", str(model), "-q", "--overwrite")
    long = work / "fm10_40.safetensors"  # trained 4x longer on the same images: over-confident
    cnncli("train", str(data), "--arch", "m1", "--epochs", "40", "-o", str(long), "-q", "--overwrite")
    print("\n2b. Fashion-MNIST, 10 classes, calibrated on val (1,000 images), scored on test (1,000)")
    for name, m in (("10 epochs", model), ("40 epochs", long)):
        path = work / f"cal_{m.name}"
        path.write_bytes(m.read_bytes())
        rep = json.loads(cnncli("eval", str(data), "-m", str(path), "--calibrate", "--format", "json").stdout)
        c = rep["calibration"]["scored"]
        print(f"{name}: test accuracy {rep['accuracy']:.3f}, T {rep['calibration']['temperature']:.3f}; test ECE "
              f"{c['before']['ece']:.4f} -> {c['after']['ece']:.4f}, Brier {c['before']['brier']:.4f} -> "
              f"{c['after']['brier']:.4f}")
    rng = np.random.default_rng(0)
    odd = {"blank frames": np.stack([np.full((28, 28), v, np.uint8) for v in np.linspace(0, 255, 50).astype(int)]),
           "uniform noise": rng.integers(0, 256, (200, 28, 28)).astype(np.uint8),
           "Gaussian noise": np.clip(rng.normal(128, 60, (200, 28, 28)), 0, 255).astype(np.uint8),
           "drawn digits": digits(300, rng)}

    def scored(folder):
        rows = [json.loads(line) for line in cnncli("predict", str(folder), "-m", str(model), "--format",
                                                    "jsonl").stdout.splitlines()]
        return np.array([r["ood_score"] for r in rows]), np.array([1 - r["probability"] for r in rows])

    e_in, m_in = scored(data / "test")
    print("\n3. out-of-distribution AUROC against the 1,000 Fashion-MNIST test images (energy ood_score / 1 - top p)")
    for name, imgs in odd.items():
        write(work / "odd" / name.replace(" ", "_"), imgs)
        e_out, m_out = scored(work / "odd" / name.replace(" ", "_"))
        y01 = np.r_[np.zeros(len(e_in), int), np.ones(len(e_out), int)]
        print(f"{name:<15} ({len(imgs)}): energy {roc_auc(y01, np.r_[e_in, e_out]):.3f}, "
              f"1 - top p {roc_auc(y01, np.r_[m_in, m_out]):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path(DEFAULT_SRC))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cnncli-decisions-"))
    x, y = load_part(args.src, "train")
    xt, yt = load_part(args.src, "test")
    thresholds_and_calibration(work, x, y, xt, yt, args.seeds)
    fashion_ten(work, x, y, xt, yt)
    print(f"\n(files in {work})")


if __name__ == "__main__":
    main()
