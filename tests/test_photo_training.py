"""Issue 11 on photos: stable first steps by default and collapse warnings, through the real command."""

import csv
import math

import numpy as np
from conftest import make_image_folder
from robust_helpers import run_main

from cnncli.engine.model import Model
from cnncli.engine.training import warmup_steps


def _history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_default_training_on_colour_photos_starts_near_chance(tmp_path, capsys):
    # 64 px RGB with the default network: random output weights and no Adam warm-up gave a first-epoch loss
    # many times chance here; the small output layer and the warm-up keep it below 2 x ln(K).
    data = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), n_per_class=12, size=64, mode="RGB", ext=".jpg")
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, "--size", "64", "--epochs", "1", "--batch-size", "8", "-q"],
                            capsys)
    assert code == 0, err
    first = float(_history(tmp_path / "m.history.csv")[0]["train_loss"])
    assert first < 2 * math.log(3), first


def test_a_fresh_default_model_gives_small_first_logits_at_128_px():
    x = np.random.default_rng(0).standard_normal((4, 3, 128, 128)).astype(np.float32)
    logits = Model("default", (3, 128, 128), 4, seed=0).forward(x)
    assert 0 < np.abs(logits).max() < 0.2  # small, yet not all equal (seeds still differ)


def test_adam_warms_up_for_an_epoch_within_bounds():
    assert warmup_steps("adam", 750, 4500) == 200  # Fashion-MNIST: capped at 200 steps
    assert warmup_steps("adam", 3, 100) == 10  # tiny folders: at least ten steps
    assert warmup_steps("adam", 3, 9) == 2  # never more than a quarter of a short run
    assert warmup_steps("sgd", 750, 4500) == 200
