"""Benchmark `cnncli predict` / `cnncli eval` against an equivalent PyTorch + Pillow script.

    python benchmarks/bench_predict.py --data FM_PNG_ROOT [--torch-python PYTHON] [--runs 5]

PYTHON defaults to $CNNCLI_BENCH_TORCH_PYTHON; the PyTorch script runs without any variable cnncli sets.

FM_PNG_ROOT is Fashion-MNIST as PNG folders (FM_PNG_ROOT/test/<class>/*.png, from
scripts/fashion_mnist_folders.py). PYTHON is an interpreter with torch, pillow and safetensors installed
(a separate venv; cnncli itself never imports torch). Both sides use the same M1 network
(conv16k3-relu-pool2-conv32k3-relu-pool2-fc64-relu-fc10) with the same weights, read from one weight file.

Measured, each as the median of --runs runs, the cnncli and PyTorch commands run interleaved:
1. one image, whole process (start, load model, decode, classify, print), warm numba cache;
2. one image with a cold numba cache (NUMBA_CACHE_DIR set to a new empty folder);
3. batch predict over the 10,000 test PNGs (decoding included; PyTorch at batch 256);
4. `cnncli eval` over the same 10,000 test images, end to end.
Wall time is what counts; user+sys CPU seconds are printed too, since a shared machine inflates wall time.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import envs

TORCH_SCRIPT = r'''
import sys
import numpy as np
import torch
from torch import nn
from PIL import Image
from safetensors.torch import load_file

model_path, batch, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if len(paths) == 1 and paths[0].endswith(".txt"):
    paths = open(paths[0]).read().split("\n")[:-1]
torch.set_num_threads(2)
net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))
sd = load_file(model_path)
layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
keys = sorted({k.rsplit(".", 1)[0] for k in sd}, key=lambda k: int(k.split(".")[1]))
with torch.no_grad():
    for m, k in zip(layers, keys):
        m.weight.copy_(sd[k + ".weight"])
        m.bias.copy_(sd[k + ".bias"])
net.eval()
out = sys.stdout
with torch.inference_mode():
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        x = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.uint8) for p in chunk])
        t = torch.from_numpy(x).unsqueeze(1).float().div_(255).sub_(0.286).div_(0.353)
        prob = torch.softmax(net(t), dim=1)
        conf, idx = prob.max(1)
        out.write("".join(f"{p}\t{int(k)}\t{float(c):.6f}\n" for p, k, c in zip(chunk, idx, conf)))
        out.flush()
'''


def timed(cmd, env=None):
    """(wall seconds, user+sys CPU seconds of the child) for one run; raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(map(str, cmd[:6]))} ...\n{res.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def interleaved(cmds, runs, env=None):
    """{name: [(wall, cpu), ...]} running each command once per round, round after round.

    The "torch" command runs in the environment minus every variable cnncli sets (as run.py does)."""
    out = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            out[name].append(timed(cmd, envs()[1] if name == "torch" else env))
    return out


def med(samples, i=0):
    return statistics.median(s[i] for s in samples)


def make_model(path, classes):
    """Save an M1 classifier for 28x28 gray images (random weights: speed does not depend on them)."""
    from cnncli.store import modelfile
    from cnncli.engine.model import Model

    clf = modelfile.Classifier(Model("m1", (1, 28, 28), len(classes), seed=0), classes, "gray", [0.286], [0.353])
    modelfile.save(path, clf)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="Fashion-MNIST PNG root (with test/<class>/)")
    ap.add_argument("--torch-python", default=os.environ.get("CNNCLI_BENCH_TORCH_PYTHON"),
                    help="Python with torch (default $CNNCLI_BENCH_TORCH_PYTHON; the PyTorch side is skipped without one)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch-runs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: startup,cold,batch,eval")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    model = work / "m1.safetensors"
    test = Path(args.data) / "test"
    make_model(model, sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")))
    torch_script = work / "torch_predict.py"
    torch_script.write_text(TORCH_SCRIPT)
    from cnncli.data.folders import list_images

    files = [str(p) for p in list_images(test)]
    listing = work / "files.txt"
    listing.write_text("".join(f + "\n" for f in files))
    one = files[0]
    py = sys.executable
    results = {"load_average": os.getloadavg(), "images": len(files)}
    cn_one = [py, "-m", "cnncli", "predict", one, "-m", str(model)]
    print(f"load average before: {os.getloadavg()}", flush=True)
    timed(cn_one)  # warm the numba cache

    if "startup" not in skip:
        cmds = {"cnncli": cn_one}
        if args.torch_python:
            cmds["torch"] = [args.torch_python, str(torch_script), str(model), "1", one]
        r = interleaved(cmds, args.runs)
        results["one_image"] = {k: {"wall_median": med(v), "cpu_median": med(v, 1), "walls": [s[0] for s in v]}
                                for k, v in r.items()}
        print("one image:", json.dumps(results["one_image"]), flush=True)
    if "cold" not in skip:
        colds = []
        for _ in range(max(1, args.runs // 2)):
            env = {**os.environ, "NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="numba-cold-", dir=work)}
            colds.append(timed(cn_one, env))
        results["cold_cache"] = {"wall_median": med(colds), "walls": [c[0] for c in colds]}
        print("cold numba cache:", json.dumps(results["cold_cache"]), flush=True)
    if "batch" not in skip:
        cmds = {"cnncli": [py, "-m", "cnncli", "predict", str(test), "-m", str(model)]}
        if args.torch_python:
            cmds["torch"] = [args.torch_python, str(torch_script), str(model), "256", str(listing)]
        r = interleaved(cmds, args.batch_runs)
        results["batch"] = {k: {"wall_median": med(v), "cpu_median": med(v, 1),
                                "images_per_s": len(files) / med(v), "walls": [s[0] for s in v]}
                            for k, v in r.items()}
        print("batch:", json.dumps(results["batch"]), flush=True)
    if "eval" not in skip:
        r = interleaved({"eval": [py, "-m", "cnncli", "eval", str(test), "-m", str(model)]}, args.batch_runs)
        results["eval"] = {"wall_median": med(r["eval"]), "cpu_median": med(r["eval"], 1),
                           "walls": [s[0] for s in r["eval"]]}
        print("eval:", json.dumps(results["eval"]), flush=True)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
