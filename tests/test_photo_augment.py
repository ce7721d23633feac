"""--augment none|light|photo (seeded, bit-reproducible; bare --augment still means light; none by default,
photo for small colour photo folders: commands/train_auto.py) and predict/eval --tta, through the real command."""

import json

import numpy as np
import pytest
from conftest import make_image_folder
from robust_helpers import run_main

from cnncli.data.augment import flip_batch, photo_batch
from cnncli.data.images import decode
from cnncli.engine.layers import softmax
from cnncli.store import modelfile, weights


def _train(capsys, data, out, *extra):
    code, _, err = run_main(["train", data, "-o", out, "--arch", "tiny", "--epochs", "2", "--batch-size", "4",
                             "-q", *extra], capsys)
    assert code == 0, err
    return weights.load(out)


def test_photo_augmentation_is_seeded_and_changes_the_images():
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    a, b = photo_batch(x, np.random.default_rng(1)), photo_batch(x, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == x.shape and np.array_equal(a, b)
    assert not np.array_equal(a, photo_batch(x, np.random.default_rng(2)))
    assert np.abs(a.astype(int) - x).mean() > 5  # it really changes them
    flat = np.full((2, 3, 8, 8), 100, np.uint8)  # a uniform gray image stays gray (any crop, turn, colour)
    out = photo_batch(flat, np.random.default_rng(3))
    assert (out == out[:, :, :1, :1]).all() and (out[:, 0] == out[:, 1]).all()


def test_flip_augmentation_mirrors_about_half_the_images_and_nothing_else():
    x = np.random.default_rng(0).integers(0, 256, (64, 3, 8, 8), dtype=np.uint8)
    out = flip_batch(x, np.random.default_rng(1))
    mirrored = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert (mirrored ^ kept).all() and 16 < mirrored.sum() < 48
    assert np.array_equal(out, flip_batch(x, np.random.default_rng(1)))


def test_same_seed_gives_identical_weights_with_photo_augmentation(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=8, size=16, mode="RGB")
    a, meta = _train(capsys, data, tmp_path / "a.safetensors", "--augment", "photo")
    b, _ = _train(capsys, data, tmp_path / "b.safetensors", "--augment", "photo")
    plain, _ = _train(capsys, data, tmp_path / "c.safetensors", "--augment", "none")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], plain[k]) for k in a)
    assert meta["train"]["augment"] == "photo"


@pytest.mark.parametrize("args, size, mode, stored", [
    (["--augment"], 16, "L", "light"),  # the old plain flag keeps working and means the old augmentation
    (["--augment", "--seed", "1"], 16, "L", "light"),  # also when another option follows it
    ([], 64, "RGB", "photo"),  # on for a small folder of colour photos (commands/train_auto.py)
    ([], 32, "RGB", "none"),  # off by default for smaller colour images
    ([], 16, "L", "none"),  # and small gray data
])
def test_augment_modes_and_default(tmp_path, capsys, args, size, mode, stored):
    data = make_image_folder(tmp_path / "d", n_per_class=4, size=size, mode=mode)
    _, meta = _train(capsys, data, tmp_path / "m.safetensors", "--size", str(size), "--val-split", "0", *args)
    assert meta["train"]["augment"] == stored


def test_tta_averages_each_image_with_its_mirror_in_predict_and_eval(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=6, size=12)
    out = tmp_path / "m.safetensors"
    _train(capsys, data, out)
    clf = modelfile.load(out)
    files = sorted(data.rglob("*.png"))
    x = np.stack([decode(p, clf.size, clf.channels) for p in files])
    z = (clf.model.forward(clf.to_float(x)) + clf.model.forward(clf.to_float(x[..., ::-1].copy()))) / 2
    want = softmax(z)
    assert not np.allclose(want, clf.proba(x), atol=1e-4)  # the mirror changes something here
    code, text, err = run_main(["predict", *files, "-m", out, "--tta", "--format", "jsonl", "--all-probs"], capsys)
    assert code == 0, err
    got = np.array([list(json.loads(line)["probabilities"].values()) for line in text.splitlines()])
    assert np.allclose(got, want, atol=2e-6)
    code, report, err = run_main(["eval", data, "-m", out, "--tta", "--split", "all", "--format", "json"], capsys)
    assert code == 0, err
    labels = np.array([clf.classes.index(p.parent.name) for p in files])
    assert json.loads(report)["accuracy"] == pytest.approx(float((want.argmax(1) == labels).mean()))
