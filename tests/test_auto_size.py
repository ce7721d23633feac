"""Auto size for photo folders (commands/train_budget.auto_size, README "Images"): up to 64 px it is the
median shorter side as always; above, the largest multiple of 32 up to the median (at most 224) whose
estimated training time and decoded size stay within the limits, said in one info line."""

import re

import numpy as np
import pytest
from PIL import Image

from cnncli.commands import train_auto, train_budget
from cnncli.store import modelfile
from robust_helpers import run_main


def _photos(root, n, size):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a", "b")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    return root


def test_a_photo_folder_gets_a_size_above_64_and_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_auto, "SMALL_FOLDER", 8)  # 8 images count as large: a small one gets 64 px
    data = _photos(tmp_path / "photos", 8, (200, 150))  # median shorter side 150: 128 is the largest step
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, "--arch", "tiny", "--epochs", "1", "--val-split", "0"],
                            capsys)
    assert code == 0, err
    assert modelfile.load(out).size == 128
    lines = [ln for ln in err.splitlines() if "auto size" in ln]
    assert lines == ["auto size 128 px for a photo folder: the median shorter side is 150 px; --size sets it"]
    assert "input 128x128" in err


def test_photos_above_the_largest_automatic_size_are_not_said_to_have_that_median(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_auto, "SMALL_FOLDER", 8)
    data = _photos(tmp_path / "photos", 8, (400, 300))  # median shorter side 300, above the 224 px cap
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, "--arch", "tiny", "--epochs", "1", "--val-split", "0"],
                            capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "auto size" in ln]
    assert lines == ["auto size 224 px for a photo folder: 224 px is the largest automatic size; --size sets it"]


def test_small_images_keep_their_median_and_no_line(tmp_path, capsys):
    data = _photos(tmp_path / "photos", 6, (50, 40))
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, "--arch", "tiny", "--epochs", "1"], capsys)
    assert code == 0, err
    assert modelfile.load(out).size == 40 and "auto size" not in err


@pytest.mark.parametrize("median,n_train,epochs,expected", [
    (64, 10, 50, 64), (150, 10, 50, 128), (1000, 10, 50, 224), (1000, 192, 50, 160), (1000, 5000, 50, 64),
    (300, 40, 3, 224)])
def test_the_choice_follows_the_estimated_time(median, n_train, epochs, expected):
    size, why = train_budget.auto_size(median, "default", 4, n_train, n_train, epochs)
    assert size == expected
    assert (why is None) == (median <= 64)
    if why and expected + 32 <= min(median, 224):  # a larger step was possible: time stopped it
        assert re.search(r"would need about \d+ min", why), why


def test_the_decoded_images_must_fit_too():
    size, why = train_budget.auto_size(300, "tiny", 2, 100, 20_000, 3)
    assert size == 128 and "would take more than 1024 MiB" in why  # 20,000 x 3 x 160 x 160 bytes > 1 GiB
