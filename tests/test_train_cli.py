"""`cnncli train` and `cnncli info` as a user runs them: real photo folders, the files written, the summary."""

import csv
import io
import json

import numpy as np
from PIL import Image
from conftest import class_pattern, make_image_folder
from robust_helpers import FAST, run_main

from cnncli.store import weights


def _variants(k, size=24):
    """One class's pattern as the many kinds of file people keep, as (file name, writer) pairs."""
    base = (class_pattern(k, size) * 255).astype(np.uint8)
    rgb = np.stack([base, base // 2, 255 - base], axis=-1)
    rgba = np.dstack([rgb, np.full((size, size), 255, np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees, as phones write it

    def save(img, **kw):
        return lambda path: img.save(path, **kw)

    return [
        ("plain.png", save(Image.fromarray(base))),
        ("photo one.JPG", save(Image.fromarray(rgb), quality=95)),
        ("anim.gif", lambda p: Image.fromarray(base).save(p, save_all=True, append_images=[Image.fromarray(255 - base)])),
        ("lossless.webp", save(Image.fromarray(rgb), lossless=True)),
        ("scan.TIFF", save(Image.fromarray(rgb))),
        ("alpha.png", save(Image.fromarray(rgba, "RGBA"))),
        ("palette.png", save(Image.fromarray(rgb).convert("P"))),
        ("deep.png", save(Image.fromarray(base.astype(np.uint16) * 257))),  # 16-bit gray
        ("print.jpg", save(Image.fromarray(rgb).convert("CMYK"))),
        ("rotated.jpg", save(Image.fromarray(rgb), exif=exif)),
        ("naïve café.png", save(Image.fromarray(base))),
    ]


def test_train_on_a_folder_of_mixed_real_world_files(tmp_path, capsys):
    data = tmp_path / "photos"
    for k, name in enumerate(("cat", "dog")):
        folder = data / name
        (folder / "nested" / "deeper").mkdir(parents=True)
        for i in range(3):
            for fname, write in _variants(k):
                target = folder / ("nested" if i else "") / f"{i}-{fname}"
                write(target)
        (folder / "notes.txt").write_text("not an image")
        (folder / ".DS_Store").write_bytes(b"\0\1junk")
        (folder / "nested" / "deeper" / "README").write_text("junk")
    good = data / "dog" / "0-photo one.JPG"
    truncated = data / "dog" / "cut short.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "model.safetensors"

    code, stdout, stderr = run_main(["train", data, "-o", out, *FAST, "--epochs", "2", "--plot", tmp_path / "c.png"],
                                    capsys)

    assert code == 0, stderr
    assert stdout == ""
    assert str(truncated) in stderr and "truncated" in stderr  # the bad file, by name and reason
    assert "notes.txt" not in stderr and "DS_Store" not in stderr and "README" not in stderr  # junk: quiet
    assert "skipped files: 1" in stderr and "images per class: cat" in stderr
    bad = (tmp_path / "model.bad-files.tsv").read_text().splitlines()
    assert len(bad) == 1 and bad[0].startswith(str(truncated) + "\t")
    n_images = 2 * 3 * len(_variants(0))
    _, meta = weights.load(out)
    assert meta["classes"] == ["cat", "dog"] and meta["input"]["color"] == "rgb"
    assert meta["train"]["images"] + len(json.loads((tmp_path / "model.split.json").read_text())["val"]) == n_images
    assert Image.open(tmp_path / "c.png").size[0] > 100


def test_files_beside_the_weights_and_info(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=12, size=12, split=True)
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *FAST, "--epochs", "3", "--class-weights", "auto"], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines[:3]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]  # one line per epoch
    assert "\x1b" not in err  # not a terminal: no escape codes
    rows = list(csv.DictReader(io.StringIO((tmp_path / "m.history.csv").read_text())))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(0 <= float(r["val_accuracy"]) <= 1 and float(r["train_loss"]) > 0 for r in rows)
    assert not (tmp_path / "m.ckpt.safetensors").exists()  # the checkpoint is gone once the run has finished
    assert "test accuracy:" in err  # data/test was scored after training

    code, text, err = run_main(["info", out], capsys)
    assert code == 0, err
    assert "conv8k3" in text and "classes (2): cat, dog" in text
    code, text, _ = run_main(["info", out, "--json"], capsys)
    doc = json.loads(text)
    assert doc["arch"] == "conv8k3-relu-pool2-fc" and doc["classes"] == ["cat", "dog"]
    assert [layer["output_shape"] for layer in doc["layers"]] == [[8, 10, 10], [8, 10, 10], [8, 5, 5], [2, 1, 1]]
    assert doc["params"] == sum(layer["params"] for layer in doc["layers"]) == 8 * 9 + 8 + 2 * 200 + 2


def test_quiet_and_auto_epochs(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=6, size=8)
    code, out, err = run_main(["train", data, "-o", tmp_path / "m.safetensors", *FAST, "-q"], capsys)
    assert code == 0 and out == "" and err == ""
    _, meta = weights.load(tmp_path / "m.safetensors")
    # 10 training images, batch 8: two steps an epoch, so the 50-epoch cap is the budget; early stopping (on by
    # default, patience max(3, 50/5) = 10) may end the run sooner (tests/test_early_stopping.py)
    train = meta["train"]
    assert train["epochs_planned"] == 50 and train["patience"] == 10
    assert train["epochs"] == 50 or (train["stop_reason"] == "early-stopped"
                                     and train["epochs"] == train["best_epoch"] + 10)


def test_max_time_stops_early_and_still_writes_the_best_weights(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=10, size=8)
    code, _, err = run_main(["train", data, "-o", tmp_path / "m.safetensors", *FAST, "--epochs", "500",
                             "--max-time", "0.5"], capsys)
    assert code == 0, err
    _, meta = weights.load(tmp_path / "m.safetensors")
    assert meta["train"]["stop_reason"] == "time-limit" and meta["train"]["epochs"] < 500


def test_an_arch_that_does_not_fit_fails_before_any_image_is_decoded(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=4, size=28)
    code, out, err = run_main(["train", data, "-o", tmp_path / "m.safetensors", "--arch", "conv8k3-pool2-conv8k15"],
                              capsys)
    assert code == 2 and out == ""
    assert "layer 3 conv8k15: a 15x15 filter does not fit a 13x13 input" in err
    assert "reading" not in err and not (tmp_path / "m.safetensors").exists()


def test_ctrl_c_in_any_command_says_interrupted_and_exits_130(tmp_path, capsys, monkeypatch):
    """typer turns KeyboardInterrupt into a bare exit status; the one-line reason must still be printed."""
    from cnncli.commands import predict as predict_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_run, "run", interrupted)
    code, out, err = run_main(["predict", tmp_path / "x.png", "-m", tmp_path / "m.safetensors"], capsys)
    assert code == 130 and out == "" and err.strip() == "cnncli: interrupted"
