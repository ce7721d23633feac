"""--resize crop|squash|pad: the decoder's three rules, stored in the weight file and repeated by eval and
predict; the default is crop, squash for colour photo folders (test_photo_defaults.py); old files mean crop."""

import json

import numpy as np
import pytest
from PIL import Image
from conftest import make_image_folder
from robust_helpers import run_main

from cnncli.data.images import decode
from cnncli.store import modelfile, weights

QUARTERS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # left to right


def _wide(path, w=32, h=16):
    """A 2:1 RGB image made of four vertical bands, one colour each."""
    a = np.zeros((h, w, 3), np.uint8)
    for q, colour in enumerate(QUARTERS):
        a[:, q * w // 4:(q + 1) * w // 4] = colour
    Image.fromarray(a).save(path)
    return path


def _band(pixel):
    """Index of the QUARTERS colour nearest to a (3,) pixel (bilinear resizing blurs the band edges)."""
    return int(np.argmin([np.abs(pixel.astype(int) - c).sum() for c in QUARTERS]))


def test_the_three_rules_keep_what_they_say(tmp_path):
    img = _wide(tmp_path / "wide.png")
    crop, squash, pad = (decode(img, 8, 3, rule) for rule in ("crop", "squash", "pad"))
    # crop: the centre square holds only the two middle bands
    assert [_band(crop[:, 4, x]) for x in (0, 7)] == [1, 2]
    # squash: all four bands, the outer ones at the edges
    assert [_band(squash[:, 4, x]) for x in (0, 7)] == [0, 3]
    # pad: the whole image in the middle 8 x 4 rows, black bars above and below
    assert (pad[:, :2] == 0).all() and (pad[:, 6:] == 0).all()
    assert [_band(pad[:, 3, x]) for x in (0, 7)] == [0, 3]
    with pytest.raises(ValueError):
        decode(img, 8, 3, "stretch")


def _probabilities(text):
    return {json.loads(line)["path"]: json.loads(line)["probabilities"] for line in text.splitlines()}


def test_train_stores_the_rule_and_predict_and_eval_repeat_it(tmp_path, capsys):
    data = tmp_path / "d"
    for k, name in enumerate(("a", "b")):
        (data / name).mkdir(parents=True)
        for i in range(6):
            _wide(data / name / f"{i}.png", w=32 + 8 * k, h=16 + i)
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, "--resize", "pad", "--size", "8", "--arch", "tiny",
                             "--epochs", "1", "--batch-size", "4", "-q"], capsys)
    assert code == 0, err
    assert weights.load(out)[1]["preprocess"]["resize"] == "longer-side-then-letterbox"
    clf = modelfile.load(out)
    assert clf.resize == "pad"
    img = data / "a" / "0.png"
    code, text, err = run_main(["predict", img, "-m", out, "--format", "jsonl", "--all-probs"], capsys)
    assert code == 0, err
    got = np.array(list(_probabilities(text)[str(img)].values()))
    want = clf.proba(decode(img, 8, 3, "pad")[None])[0]
    cropped = clf.proba(decode(img, 8, 3, "crop")[None])[0]
    assert np.allclose(got, want, atol=2e-6) and not np.allclose(got, cropped, atol=2e-6)
    code, report, err = run_main(["eval", data, "-m", out, "--format", "json", "--split", "all"], capsys)
    assert code == 0, err
    expect = [decode(data / n / f"{i}.png", 8, 3, "pad") for n in ("a", "b") for i in range(6)]
    accuracy = float((clf.proba(np.stack(expect)).argmax(1) == np.repeat([0, 1], 6)).mean())
    assert json.loads(report)["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("size, mode, given, stored", [
    (64, "RGB", None, "whole-image-squashed"),  # colour photos of 64 px or more: squash (commands/train_auto.py)
    (32, "RGB", None, "shorter-side-then-center-crop"),  # smaller colour images: crop, as before
    (64, "L", None, "shorter-side-then-center-crop"),  # and gray data
    (64, "RGB", "crop", "shorter-side-then-center-crop"),  # an explicit --resize wins
])
def test_the_default_rule_is_crop_except_for_colour_photos(tmp_path, capsys, size, mode, given, stored):
    data = make_image_folder(tmp_path / "d", n_per_class=4, size=size, mode=mode)
    out = tmp_path / "m.safetensors"
    extra = ["--resize", given] if given else []
    color = ["--color", "gray"] if mode == "L" else []
    code, _, err = run_main(["train", data, "-o", out, "--size", str(size), "--arch", "tiny", "--epochs", "1",
                             "--val-split", "0", *color, *extra, "-q"], capsys)
    assert code == 0, err
    assert weights.load(out)[1]["preprocess"]["resize"] == stored


def test_a_weight_file_without_a_resize_rule_means_crop(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=4, size=12)
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, "--arch", "tiny", "--epochs", "1", "-q"], capsys)
    assert code == 0, err
    tensors, meta = weights.load(out)
    meta = {k: v for k, v in meta.items() if k not in ("metadata_sha256", "tensor_sha256", "format",
                                                       "format_version")}
    del meta["preprocess"]["resize"]
    old = tmp_path / "old.safetensors"
    weights.save(old, tensors, meta)
    assert modelfile.load(old).resize == "crop"
    img = next(data.rglob("*.png"))
    code, text, err = run_main(["predict", img, "-m", old, "--format", "jsonl", "--all-probs"], capsys)
    assert code == 0, err
    code, same, err = run_main(["predict", img, "-m", out, "--format", "jsonl", "--all-probs"], capsys)
    assert _probabilities(text) == _probabilities(same)
