"""Regenerate the pictures in README.md from the bundled sample in data/ (Fashion-MNIST coats vs pullovers).

    python scripts/make_readme_pictures.py [--out docs] [--work DIR]

Runs the real commands, as a user would: `cnncli train data/ --plot`, `cnncli eval data/ --plot
--errors-image`, and `cnncli show` on the test image the trained model finds hardest. Writes into --out:
training.png, eval.png, mistakes.png, show/filters.png, show/feature_maps.png, show/saliency.png.
The model and its side files go to --work (default: a temporary folder). Training is seeded, so the same
machine gives the same pictures.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cnncli(*args, capture=False):
    cmd = [sys.executable, "-m", "cnncli", *map(str, args)]
    print("$ cnncli " + " ".join(map(str, args)), file=sys.stderr)
    res = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE if capture else None)
    return res.stdout.decode() if capture else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    out = args.out.resolve()
    (out / "show").mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="cnncli-pictures-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.safetensors"
    data = Path("data")  # relative to ROOT (the commands run there): pictures name no machine paths
    cnncli("train", data, "-o", model, "--overwrite", "--plot", out / "training.png", "-q")
    report = json.loads(cnncli("eval", data, "-m", model, "--plot", out / "eval.png", "--errors-image",
                               out / "mistakes.png", "--errors", "12", "--overwrite", "--format", "json",
                               capture=True))
    hardest = report["errors"][0]["path"] if report.get("errors") else next((ROOT / data / "test").rglob("*.png"))
    cnncli("show", model, hardest, "-o", out / "show", "--max-maps", "8", "--overwrite")
    print(f"pictures in {out}; accuracy {report['accuracy']:.4f} on {report['n']} test images; "
          f"show used {hardest}", file=sys.stderr)


if __name__ == "__main__":
    main()
