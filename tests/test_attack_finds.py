"""Finds of a tester who read only README and --help, each pinned through the real command: class names
with escape codes and newlines stay one escaped line on stdout and stderr; a weight file whose class is named
like one of predict's own labels is refused."""

import subprocess
import sys

from conftest import make_image_folder
from cnncli.engine.model import Model
from cnncli.store import modelfile, weights

ESC_CLASS = "x\x1b[2Jy\nz"  # a terminal clear-screen code and a newline inside a folder name


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], capture_output=True, cwd=cwd)


def test_class_names_with_escape_codes_stay_one_escaped_line_in_check_and_train(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("coat", ESC_CLASS), n_per_class=6, size=12)
    done = _run("check", root)
    assert done.returncode in (0, 3), done.stderr
    for out in (done.stdout, done.stderr):
        assert b"\x1b" not in out and b"y\nz" not in out
    assert b"x\\x1b[2Jy\\nz" in done.stdout
    done = _run("train", root, "--arch", "tiny", "--epochs", "1", "-o", tmp_path / "m.safetensors")
    assert done.returncode == 0, done.stderr
    assert b"\x1b" not in done.stderr and b"y\nz" not in done.stderr
    line = [ln for ln in done.stderr.decode().splitlines() if ln.startswith("images per class:")]
    assert len(line) == 1 and ", x\\x1b[2Jy\\nz 5;" in line[0], done.stderr


def test_a_weight_file_with_a_class_named_like_a_predict_label_is_refused(tmp_path):
    img = make_image_folder(tmp_path / "d", n_per_class=1, size=28) / "cat" / "img_0000.png"
    for reserved in ("uncertain", "Unknown"):
        path = tmp_path / f"{reserved}.safetensors"
        clf = modelfile.Classifier(Model("tiny", (1, 28, 28), 2, seed=1), ["coat", "x"], "gray", [0.3], [0.35])
        modelfile.save(path, clf)
        tensors, meta = weights.load(path)  # forge: rename a class, keeping the file's checksums valid
        meta["classes"] = ["coat", reserved]
        weights.save(path, tensors, meta)
        for args in (("predict", "-m", path, img), ("info", path)):
            done = _run(*args)
            assert done.returncode == 65, (args, done.stderr)
            assert reserved.encode() in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_split_manifest_keeps_non_utf8_file_names_in_valid_json(tmp_path):
    import json
    import os
    import re

    from cnncli.store import manifest

    root = make_image_folder(tmp_path / "d", n_per_class=8, size=12)
    odd = os.fsdecode(b"caf\xe9\xff.png")  # Latin-1 bytes: not UTF-8
    (root / "cat" / "img_0000.png").rename(root / "cat" / odd)
    done = _run("train", root, "--arch", "tiny", "--epochs", "1", "-o", tmp_path / "m.safetensors")
    assert done.returncode == 0, done.stderr
    raw = (tmp_path / "m.split.json").read_bytes()
    assert not re.search(rb"\\ud[c-f]", raw, re.I)  # no lone surrogate escapes, which strict parsers reject
    json.loads(raw.decode("utf-8"))
    doc = manifest.read_manifest(tmp_path / "m.split.json")
    names = [p for p, _ in doc["train"] + doc["val"]]
    assert f"cat/{odd}" in names and len(names) == 16
    assert sorted(manifest.resolve_items(doc["train"] + doc["val"], root)) == sorted(
        (root / n, k) for n, k in doc["train"] + doc["val"])
    assert all(os.path.exists(p) for p, _ in manifest.resolve_items(doc["train"] + doc["val"], root))


def test_jpegs_with_corrupt_exif_give_no_raw_python_warnings_in_train_or_predict(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    bad_exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x01" * 30  # IFD runs past its end
    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "d" / cls / f"{i}.jpg", exif=bad_exif)
    model = tmp_path / "m.safetensors"
    done = _run("train", tmp_path / "d", "--arch", "tiny", "--epochs", "1", "-o", model)
    assert done.returncode == 0, done.stderr
    assert b"Warning" not in done.stderr and b"warnings.warn" not in done.stderr, done.stderr
    done = _run("predict", tmp_path / "d" / "a" / "0.jpg", "-m", model)
    assert done.returncode == 0 and b"Warning" not in done.stderr, done.stderr
