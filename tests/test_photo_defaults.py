"""Automatic defaults for colour photo folders (commands/train_auto.py, README "Training" and "Real photos"):
64 px, squash, photo augmentation and no hold-out for a small folder of colour images of 64 px or more, each said in
an info line and recorded in the weight file; typed options win; gray data trains bit for bit as before."""

import json

import numpy as np
import pytest
from PIL import Image

from cnncli.commands import train_auto
from cnncli.store import weights
from robust_helpers import run_main

FAST = ["--arch", "tiny", "--size", "16", "--epochs", "2", "--batch-size", "4"]
OLD_DEFAULTS = ["--resize", "crop", "--augment", "none", "--val-split", "0.2"]


def _folder(root, mode="RGB", shape=(96, 72), n=6, gray_pixels=False):
    """root/<a|b>/i.jpg: n images per class of `shape` (width, height), class a bright on the left, b on the
    right, saved in Pillow `mode`; gray_pixels: RGB files whose three channels are equal."""
    rng = np.random.default_rng(0)
    w, h = shape
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.normal(80, 20, (h, w, 3))
            a[:, k * w // 2:(k + 1) * w // 2] += 100
            if mode == "RGB" and not gray_pixels:
                a[..., k] += 40  # a class tint: colour pixels
            if gray_pixels:
                a[..., 1:] = a[..., :1]
            img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
            img.convert(mode).save(root / name / f"{i}.png")
    return root


def _train(capsys, data, out, *args):
    code, _, err = run_main(["train", data, "-o", out, *FAST, *args], capsys)
    assert code == 0, err
    return weights.load(out), err


def test_a_small_colour_photo_folder_gets_squash_photo_augmentation_and_no_hold_out(tmp_path, capsys):
    data = _folder(tmp_path / "photos")
    out = tmp_path / "m.safetensors"
    (_, meta), err = _train(capsys, data, out)
    assert meta["preprocess"]["resize"] == "whole-image-squashed"
    assert meta["train"]["augment"] == "photo"
    assert meta["train"]["automatic"] == ["--resize squash", "--augment photo", "--val-split 0"]
    assert meta["train"]["images"] == 12 and meta["train"]["stop_reason"] == "completed"  # all 12 trained, no stop
    assert not (tmp_path / "m.split.json").exists()
    auto = [ln for ln in err.splitlines() if ln.startswith("auto ") and not ln.startswith("auto size")]
    assert len(auto) == 3 and all(ln.endswith("sets it") for ln in auto), err
    assert "median shorter side 72 px" in auto[0] and "12 training images, under 1,000" in auto[1]
    code, text, err = run_main(["info", out], capsys)
    assert code == 0 and "chosen automatically: --resize squash, --augment photo, --val-split 0" in text
    code, text, _ = run_main(["info", out, "--json"], capsys)
    assert json.loads(text)["train"]["automatic"] == ["--resize squash", "--augment photo", "--val-split 0"]


@pytest.mark.parametrize("typed, stored, automatic", [
    (["--resize", "crop"], ("shorter-side-then-center-crop", "photo"), ["--augment photo", "--val-split 0"]),
    (["--augment", "none", "--val-split", "0.25"], ("whole-image-squashed", "none"), ["--resize squash"]),
    (["--augment"], ("whole-image-squashed", "light"), ["--resize squash", "--val-split 0"]),  # bare: typed
])
def test_typed_options_win(tmp_path, capsys, typed, stored, automatic):
    data = _folder(tmp_path / "photos")
    (_, meta), err = _train(capsys, data, tmp_path / "m.safetensors", *typed)
    assert (meta["preprocess"]["resize"], meta["train"]["augment"]) == stored
    assert meta["train"]["automatic"] == automatic
    assert (tmp_path / "m.split.json").exists() == ("--val-split" in typed)
    code, text, _ = run_main(["info", tmp_path / "m.safetensors"], capsys)  # two choices, two classes: no names
    assert code == 0 and f"chosen automatically: {', '.join(automatic)}\n" in text


def test_a_small_colour_photo_folder_gets_64_px_and_a_large_one_the_size_rule(tmp_path, capsys, monkeypatch):
    data = _folder(tmp_path / "photos", shape=(200, 150))  # median 150: the size rule would give 128 px
    fast = ["--arch", "tiny", "--epochs", "1", "--batch-size", "4"]
    code, _, err = run_main(["train", data, "-o", tmp_path / "s.safetensors", *fast], capsys)
    assert code == 0, err
    meta = weights.load(tmp_path / "s.safetensors")[1]
    assert meta["input"]["height"] == 64 and meta["train"]["automatic"][0] == "--size 64"
    assert "auto size 64 px for a small colour photo folder (12 training images, under 1,000)" in err
    monkeypatch.setattr(train_auto, "SMALL_FOLDER", 12)
    code, _, err = run_main(["train", data, "-o", tmp_path / "l.safetensors", *fast], capsys)
    assert code == 0, err
    meta = weights.load(tmp_path / "l.safetensors")[1]
    assert meta["input"]["height"] == 128 and meta["train"]["automatic"] == ["--resize squash"]


def test_a_large_colour_folder_gets_squash_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_auto, "SMALL_FOLDER", 12)  # 12 images are not under it
    data = _folder(tmp_path / "photos")
    (_, meta), err = _train(capsys, data, tmp_path / "m.safetensors")
    assert meta["train"]["automatic"] == ["--resize squash"] and meta["train"]["augment"] == "none"
    assert (tmp_path / "m.split.json").exists()


@pytest.mark.parametrize("mode, shape, gray_pixels", [
    ("L", (96, 72), False),  # gray photos
    ("RGB", (96, 72), True),  # colour headers, gray pixels: decoded again without the choices
    ("RGB", (60, 48), False),  # colour, but under 64 px
])
def test_other_folders_train_bit_for_bit_as_with_the_old_defaults(tmp_path, capsys, mode, shape, gray_pixels):
    data = _folder(tmp_path / "d", mode=mode, shape=shape, gray_pixels=gray_pixels)
    (now, meta), err = _train(capsys, data, tmp_path / "now.safetensors")
    (old, _), _ = _train(capsys, data, tmp_path / "old.safetensors", *OLD_DEFAULTS)
    assert "automatic" not in meta["train"] and meta["preprocess"]["resize"] == "shorter-side-then-center-crop"
    assert now.keys() == old.keys() and all(np.array_equal(now[k], old[k]) for k in now)
    assert ("decoded gray: automatic colour photo choices dropped" in err) == gray_pixels


def test_a_resumed_run_keeps_the_automatic_choices(tmp_path, capsys, monkeypatch):
    from train_helpers import interrupt_after_reads

    data = _folder(tmp_path / "photos")
    out = tmp_path / "m.safetensors"
    with interrupt_after_reads(monkeypatch, 1):
        assert run_main(["train", data, "-o", out, *FAST], capsys)[0] == 130
    code, _, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 0, err
    meta = weights.load(out)[1]
    assert meta["train"]["automatic"] == ["--resize squash", "--augment photo", "--val-split 0"]
    assert meta["preprocess"]["resize"] == "whole-image-squashed" and meta["train"]["augment"] == "photo"
