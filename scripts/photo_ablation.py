"""Which difference between cnncli and the PyTorch yardstick costs accuracy on the photo set? One switch at a time.

    python scripts/photo_ablation.py PHOTOS --seeds 0 1 2 [SWITCHES]

Runs cnncli's engine (the same decoder, model, Adam and training loop as `cnncli train`) in this process. With
no switches it repeats `torch_photo_baseline.py`'s recipe: the `default` preset, whole image squashed to
64 px, pixels / 255 without mean/std normalisation, PyTorch's default initialisation (weights
kaiming_uniform(a=sqrt(5)), i.e. uniform +-1/sqrt(fan_in), biases the same), Adam 1e-3 at a constant rate
with no warm-up, batch 64, random horizontal flips, 50 epochs on all training images, last epoch scored on
test/. Each switch puts back one of cnncli's own choices:

    --init cnncli          He-uniform weights, zero biases, output layer scaled by 0.01 (Model's own init)
    --norm stats           per-channel mean/std of the training set (what `cnncli train` stores)
    --warmup               Adam warm-up (engine.training.warmup_steps)
    --schedule cosine      cosine decay to 5 % of --lr
    --augment MODE         flip (default) | none | light | photo
    --resize RULE          squash (default) | crop | pad
    --lr, --epochs, --val-split (with a split, the best validation epoch is kept, as `cnncli train` does)

One JSON line per seed on stdout (test accuracy, first- and last-epoch training loss, CPU and wall seconds of training) and a mean
line; the machine's load average is printed with each run, since CPU time is inflated by a busy machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cnncli.config  # noqa: E402,F401  (first: single-threaded BLAS before numpy loads, as in `cnncli train`)
import numpy as np  # noqa: E402

from cnncli.data import folders  # noqa: E402
from cnncli.data.augment import augment_function  # noqa: E402
from cnncli.data.images import channel_stats, normalize  # noqa: E402
from cnncli.engine.layers import Conv, Dense  # noqa: E402
from cnncli.engine.model import Model  # noqa: E402
from cnncli.engine.training import TrainConfig, evaluate, fit  # noqa: E402


def torch_init(model: Model, seed: int) -> None:
    """PyTorch's default Conv2d / Linear initialisation: weight and bias uniform in +-1/sqrt(fan_in)."""
    rng = np.random.default_rng([seed, 99])
    for layer in model.layers:
        if isinstance(layer, (Conv, Dense)):
            w = layer.params["weight"]
            bound = 1.0 / math.sqrt(int(np.prod(w.shape[1:])))
            layer.params["weight"] = rng.uniform(-bound, bound, w.shape).astype(np.float32)
            layer.params["bias"] = rng.uniform(-bound, bound, layer.params["bias"].shape).astype(np.float32)


def run(args: argparse.Namespace, seed: int) -> dict:
    ds = folders.scan_dataset(args.data)
    train_items, val_items = ds.train, []
    if args.val_split > 0:
        train_items, val_items = folders.stratified_split(ds.train, args.val_split, seed)
    load = lambda items: folders.load_images(items, size=args.size, color="rgb", classes=ds.classes,  # noqa: E731
                                             resize=args.resize)
    train, test = load(train_items), load(ds.test)
    val = load(val_items) if val_items else None
    mean, std = channel_stats(train.x) if args.norm == "stats" else ([0.0] * 3, [1.0] * 3)
    to_float = lambda a: normalize(a, mean, std)  # noqa: E731
    model = Model(args.arch, (3, args.size, args.size), len(ds.classes), seed=seed)
    if args.init == "torch":
        torch_init(model, seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer="adam", seed=seed,
                      schedule=args.schedule, augment=args.augment)
    losses = []
    cpu, wall = time.process_time(), time.monotonic()
    state, _ = fit(model, train.x, train.y, cfg, to_float, val.x if val else None, val.y if val else None,
                   augment=augment_function(args.augment), warmup=args.warmup,
                   on_epoch=lambda st, _opt: losses.append(st.history[-1]["train_loss"]))
    test_acc = evaluate(model, test.x, test.y, to_float)[1]
    return {"seed": seed, "test": round(test_acc, 4), "best_epoch": state.best_epoch,
            "first_loss": round(losses[0], 3), "last_loss": round(losses[-1], 4),
            "cpu_s": round(time.process_time() - cpu), "wall_s": round(time.monotonic() - wall), "load": round(os.getloadavg()[0], 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--init", choices=("torch", "cnncli"), default="torch")
    ap.add_argument("--norm", choices=("none", "stats"), default="none")
    ap.add_argument("--warmup", action="store_true")
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--augment", choices=("flip", "none", "light", "photo"), default="flip")
    ap.add_argument("--resize", choices=("squash", "crop", "pad"), default="squash")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--val-split", type=float, default=0.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="default")
    args = ap.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "seeds")}
    accs = []
    for seed in args.seeds:
        r = run(args, seed)
        accs.append(r["test"])
        print(json.dumps({**settings, **r}), flush=True)
    print(json.dumps({**settings, "seeds": args.seeds, "mean_test": round(float(np.mean(accs)), 4)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
