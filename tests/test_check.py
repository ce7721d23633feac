"""`cnncli check DATA`: planted duplicates (exact, resized, re-encoded JPEG, cross-class) are all found,
nothing else is, and the exit code says whether anything leaks across splits or classes."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnncli.data import fingerprints

SIDE = 40


def _picture(rng):
    """A distinct smooth random picture (gray, SIDE x SIDE): 5x5 random values upsampled, plus fine noise."""
    coarse = Image.fromarray((rng.random((5, 5)) * 255).astype(np.uint8)).resize((SIDE, SIDE), Image.BICUBIC)
    a = np.asarray(coarse, np.float64) + rng.normal(0, 6, (SIDE, SIDE))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _world(root, n=12, seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n if split == "train" else n // 3):
                _picture(rng).save(d / f"{i:03d}.png")
    return root


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, cwd=cwd)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = _world(tmp_path_factory.mktemp("check") / "d")
    tr = root / "train"
    shutil.copy(tr / "cat" / "000.png", root / "test" / "cat" / "copy.png")  # exact, across splits
    with Image.open(tr / "cat" / "001.png") as im:
        im.resize((97, 97), Image.BILINEAR).save(root / "val" / "cat" / "bigger.png")  # resized, across splits
        im.save(tr / "cat" / "again.jpg", quality=50)  # re-encoded JPEG, same split and class
    shutil.copy(tr / "dog" / "002.png", tr / "cat" / "labelled_twice.png")  # exact, across classes
    (tr / "dog" / "broken.png").write_bytes(b"not a png")
    Image.new("L", (8, 8), 128).save(tr / "dog" / "tiny.png")
    return root


def _pairs(groups):
    return {frozenset(f["path"].split("/d/", 1)[1] for f in g["files"]) for g in groups}


def test_finds_every_planted_duplicate_and_nothing_else(planted):
    res = _run("check", str(planted), "--format", "json")
    assert res.returncode == 3, res.stderr
    rep = json.loads(res.stdout)
    assert _pairs(rep["exact_duplicates"]) == {frozenset({"train/cat/000.png", "test/cat/copy.png"}),
                                               frozenset({"train/dog/002.png", "train/cat/labelled_twice.png"})}
    assert _pairs(rep["near_duplicates"]) == {frozenset({"train/cat/001.png", "val/cat/bigger.png",
                                                         "train/cat/again.jpg"})}
    kinds = {frozenset(f["path"].split("/d/", 1)[1] for f in g["files"]): (g["cross_split"], g["cross_class"])
             for g in rep["exact_duplicates"] + rep["near_duplicates"]}
    assert kinds[frozenset({"train/dog/002.png", "train/cat/labelled_twice.png"})] == (False, True)
    assert kinds[frozenset({"train/cat/000.png", "test/cat/copy.png"})] == (True, False)
    assert rep["leaks"] == 2 and rep["conflicts"] == 1
    assert [u["path"].endswith("broken.png") for u in rep["unreadable"]] == [True]
    assert [(t["width"], t["height"]) for t in rep["tiny"]] == [(8, 8)]
    assert rep["counts"]["train"] == {"cat": 14, "dog": 14} and rep["counts"]["test"] == {"cat": 5, "dog": 4}
    assert rep["files"] == 46 and rep["modes"] == {"L": 45} and rep["formats"] == {"PNG": 44, "JPEG": 1}


def test_text_report_and_clean_folder(planted, tmp_path):
    res = _run("check", str(planted))
    out = res.stdout.decode()
    assert res.returncode == 3 and "LEAK across splits" in out and "CONFLICT across classes" in out
    assert "broken.png" in out and res.stderr.count(b"\n") == 1 and b"across splits" in res.stderr
    clean = _world(tmp_path / "c", n=6, seed=1)
    res = _run("check", str(clean))
    assert res.returncode == 0 and "no duplicates across splits or classes" in res.stdout.decode()
    assert res.stderr == b""


def test_missing_folder_and_flat_layout(tmp_path):
    res = _run("check", str(tmp_path / "nope"))
    assert res.returncode == 66 and res.stderr.count(b"\n") == 1
    rng = np.random.default_rng(5)
    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(10 if cls == "a" else 2):
            _picture(rng).save(tmp_path / "f" / cls / f"{i}.png")
    shutil.copy(tmp_path / "f" / "a" / "0.png", tmp_path / "f" / "b" / "x.png")
    res = _run("check", str(tmp_path / "f"), "--format", "json")
    rep = json.loads(res.stdout)
    assert res.returncode == 3 and rep["layout"] == "flat" and rep["conflicts"] == 1 and rep["leaks"] == 0
    assert rep["imbalance"]["all"]["flagged"] and rep["imbalance"]["all"]["ratio"] == pytest.approx(10 / 3)


def test_array_overlap_counts_exact_and_near_copies():
    rng = np.random.default_rng(2)
    train = np.stack([np.asarray(_picture(rng))[None] for _ in range(20)])
    shifted = np.clip(train[3].astype(int) + 3, 0, 255).astype(np.uint8)  # brightness nudge: near, not exact
    other = np.stack([train[0], shifted, np.asarray(_picture(rng))[None]])
    assert fingerprints.array_overlap(train, other) == (1, 1)
    assert fingerprints.array_overlap(train, other[2:]) == (0, 0)


def test_train_warns_when_test_images_are_in_training(tmp_path):
    root = _world(tmp_path / "t", n=6, seed=3)
    shutil.copy(root / "train" / "dog" / "001.png", root / "test" / "dog" / "leak.png")
    res = _run("train", str(root), "--arch", "tiny", "--epochs", "1", "-o", str(tmp_path / "m.safetensors"), "-q",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    err = res.stderr.decode()
    assert "1 of 5 test images also appear in the training images (1 identical, 0 near-identical)" in err
    assert "validation images" not in err
