"""`cnncli predict` and `cnncli eval` under faults: bad images, bad weight files, odd file names, constant
images, bad options, and a weight file replaced by a concurrent `train --overwrite`."""

import csv
import io
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from robust_helpers import FAST, cnncli_child, run_main, tree_hashes
from test_robustness_cli import WEIGHT_FAULTS, _valid_model
from test_robustness_train import BAD_IMAGES, ODD_NAMES, _png


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small labeled folder (with test/ part) and a model trained on it."""
    root = tmp_path_factory.mktemp("pe")
    data = make_image_folder(root / "data", n_per_class=8, size=8, split=True, n_test=3)
    model = root / "m.safetensors"
    # capsys is function-scoped, so this module-wide model comes from a child process
    proc = cnncli_child(["train", data, "-o", model, *FAST, "--epochs", "2"], root)
    out, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        pytest.fail(err.decode())
    return data, model


def _proba_lines(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------- bad images


def _bad_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (make, _) in BAD_IMAGES.items():
        (folder / name).write_bytes(make())
    frames = [Image.fromarray(np.full((12, 12), v, np.uint8)) for v in (30, 220)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    return folder


def test_predict_reports_every_bad_image_and_classifies_the_rest(trained, tmp_path, capsys):
    _, model = trained
    folder = _bad_folder(tmp_path / "in")
    before = tree_hashes(folder)
    code, out, err = run_main(["predict", str(folder), "-m", str(model), "--format", "jsonl"], capsys)
    assert code == 1, err  # some inputs could not be read
    assert tree_hashes(folder) == before
    rows = {os.path.basename(r["path"]): r for r in _proba_lines(out)}
    assert sorted(rows) == sorted([*BAD_IMAGES, "anim.gif"])  # one row per input, in every case
    assert "label" in rows["anim.gif"] and "error" not in rows["anim.gif"]  # frame 0 used
    for name, (_, reason) in BAD_IMAGES.items():
        assert reason in rows[name]["error"], (name, rows[name])
        assert any(name in ln and reason in ln for ln in err.splitlines()), (name, err)
    assert "Traceback" not in err


def test_eval_skips_bad_images_with_a_warning_and_never_modifies_them(trained, tmp_path, capsys):
    data, model = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for cls in ("cat", "dog"):
        _bad_folder(copy / "test" / cls)
    before = tree_hashes(copy)
    code, out, err = run_main(["eval", str(copy), "-m", str(model), "--format", "json"], capsys)
    assert code == 0, err
    assert tree_hashes(copy) == before
    report = json.loads(out)
    assert json.dumps(report)  # parseable, one document
    for name, (_, reason) in BAD_IMAGES.items():
        assert any(f"{name}: " in ln and reason in ln for ln in err.splitlines()), (name, err)


# ---------------------------------------------------------------- weight files


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize("fault", sorted(WEIGHT_FAULTS))
def test_predict_and_eval_refuse_bad_weight_files(trained, tmp_path, capsys, command, fault):
    data, _ = trained
    good = _valid_model(tmp_path / "good.safetensors")
    make, reason = WEIGHT_FAULTS[fault]
    path = tmp_path / "model.safetensors"
    path.write_bytes(make(tmp_path, good))
    img = next((data / "test" / "cat").iterdir())
    argv = ["predict", str(img)] if command == "predict" else ["eval", str(data)]
    code, out, err = run_main([*argv, "-m", str(path)], capsys)
    assert code == 65, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0], err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_missing_weight_file_is_exit_66(trained, tmp_path, capsys, command):
    data, _ = trained
    img = next((data / "test" / "cat").iterdir())
    argv = ["predict", str(img)] if command == "predict" else ["eval", str(data)]
    code, out, err = run_main([*argv, "-m", str(tmp_path / "nope.safetensors")], capsys)
    assert code == 66 and out == "", err
    assert "nope.safetensors" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- odd names, every format

_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _unescape(text):
    """Inverse of the documented one-line escaping: \\\\ \\t \\n \\r, and \\xNN for bytes that are not UTF-8."""
    def sub(m):
        tok = m.group(1)
        if tok in _ESCAPES:
            return _ESCAPES[tok]
        byte = int(tok[1:], 16)
        return chr(0xDC00 + byte) if byte >= 0x80 else chr(byte)  # a control character, or a non-UTF-8 byte
    return re.sub(r"\\(x[0-9a-f]{2}|[\\tnr])", sub, text)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "table"])
def test_odd_file_names_survive_every_predict_format(trained, tmp_path, fmt):
    _, model = trained
    folder = tmp_path / "in"
    folder.mkdir()
    names = [*ODD_NAMES, b"back\\slash.png"]
    for name in names:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(_png(np.full((8, 8), 90, np.uint8)))
    proc = cnncli_child(["predict", folder, "-m", model, "--format", fmt], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    text = out.decode("utf-8")  # valid UTF-8 even though a file name is not
    expected = sorted(os.path.join(os.fsencode(folder), n) for n in names)
    if fmt == "jsonl":
        got = [os.fsencode(_unescape(json.loads(ln)["path"])) for ln in text.splitlines()]
    elif fmt == "tsv":
        got = [os.fsencode(_unescape(ln.split("\t")[0])) for ln in text.splitlines()[1:]]
    elif fmt == "csv":
        got = [os.fsencode(_unescape(row[0])) for row in list(csv.reader(io.StringIO(text)))[1:]]
    else:
        # table rows: the result column ("0.55 dog, 0.45 cat", padded), two or more spaces, then the path
        got = [os.fsencode(_unescape(re.split(r"  +", ln, maxsplit=1)[1])) for ln in text.splitlines()]
    assert sorted(got) == expected, text


# ---------------------------------------------------------------- numbers


def test_constant_images_give_finite_probabilities_summing_to_one(tmp_path, capsys):
    """Trained on constant images (channel std 0) and shown constant images: still proper probabilities."""
    data = tmp_path / "data"
    for cls, value in (("black", 0), ("white", 255)):
        (data / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), value).save(data / cls / f"{i}.png")
    model = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", str(data), "-o", str(model), *FAST, "--epochs", "2"], capsys)
    assert code == 0, err
    probe = tmp_path / "probe"
    probe.mkdir()
    for value in (0, 1, 128, 255):
        Image.new("L", (8, 8), value).save(probe / f"c{value}.png")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(probe / "black_rgb.png")
    code, out, err = run_main(["predict", str(probe), "-m", str(model), "--format", "jsonl", "--all-probs"], capsys)
    assert code == 0, err
    rows = _proba_lines(out)
    assert len(rows) == 5
    for r in rows:
        p = np.array(list(r["probabilities"].values()))
        assert np.isfinite(p).all() and (p >= 0).all() and abs(p.sum() - 1) < 1e-5, r


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("argv", [
    ["predict"],
    ["predict", "IMG", "--top-k", "0"],
    ["predict", "IMG", "--threshold", "nan"],
    ["predict", "IMG", "--threshold", "2"],
    ["predict", "IMG", "--format", "xml"],
    ["predict", "IMG", "--uncertain", "0.7:0.2"],
    ["predict", "IMG", "--bogus"],
    ["eval"],
    ["eval", "DATA", "--errors", "-1"],
    ["eval", "DATA", "--threshold", "inf"],
    ["eval", "DATA", "--bogus"],
], ids=lambda a: " ".join(a))
def test_bad_predict_and_eval_command_lines_exit_2_with_nothing_on_stdout(trained, capsys, argv):
    data, model = trained
    img = str(next((data / "test" / "cat").iterdir()))
    argv = [{"IMG": img, "DATA": str(data)}.get(a, a) for a in argv]
    if len(argv) > 1:
        argv += ["-m", str(model)]
    code, out, err = run_main(argv, capsys)
    assert code == 2, err
    assert out == ""
    assert "usage" in err.lower() and "Traceback" not in err


# ---------------------------------------------------------------- a model replaced while predicting


def test_predict_during_train_overwrite_sees_the_old_or_the_new_model(trained, tmp_path, capsys):
    data, original = trained
    model = tmp_path / "m.safetensors"
    model.write_bytes(original.read_bytes())
    img = str(next((data / "test" / "dog").iterdir()))

    def probs():
        code, out, err = run_main(["predict", img, "-m", str(model), "--format", "jsonl", "--all-probs"], capsys)
        assert code == 0, err  # never a torn or half-written file
        return tuple(_proba_lines(out)[0]["probabilities"].values())

    old = probs()
    proc = cnncli_child(["train", data, "-o", model, *FAST, "--epochs", "3", "--seed", "11", "--overwrite"], tmp_path)
    seen = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        seen.append(probs())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    new = probs()
    assert new != old  # the file really was replaced by a different model
    assert len(seen) >= 3
    assert set(seen) <= {old, new}
