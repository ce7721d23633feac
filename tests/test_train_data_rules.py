"""What `train` reads from DATA: folder symlinks back into DATA are skipped, split folder names match in any
letter case, class names that predict uses as labels are refused; bad seeds are usage errors; and the test
suite itself does not depend on the folder it is started from. All through the real command."""

import json
import os
import subprocess
import sys

import pytest

from cnncli.store import weights
from conftest import make_image_folder
from robust_helpers import FAST, REPO, child_env, run_main

ARGS = [*FAST, "--epochs", "1", "--val-split", "0"]


def test_a_folder_symlink_back_into_data_is_skipped_with_a_warning(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=("face", "other"), n_per_class=5, size=8)
    os.symlink("..", data / "face" / "up")  # would add every image of every class to 'face'
    os.symlink(data / "other", data / "face" / "others")
    (data / "face" / "deep").mkdir()
    os.symlink(data / "face", data / "face" / "deep" / "loop")
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS], capsys)
    assert code == 0, err
    assert "images per class: face 5, other 5" in err
    for link in ("face/up", "face/others", "face/deep/loop"):
        assert f"warning: skipped {data / link}: a folder symlink" in err, err
    assert weights.load(out)[1]["train"]["images"] == 10
    code, stdout, err = run_main(["eval", data, "-m", out, "--format", "json"], capsys)  # eval reads it the same way
    assert code == 0 and json.loads(stdout)["n"] == 10, err


def test_split_folder_names_in_any_letter_case(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8, split=True, n_val=2)
    for old, new in (("train", "Train"), ("test", "TEST"), ("val", "Validation")):
        (data / old).rename(data / new)
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *FAST, "--epochs", "1"], capsys)
    assert code == 0, err
    meta = weights.load(out)[1]
    assert meta["classes"] == ["cat", "dog"]
    assert meta["train"]["images"] == 12 and meta["train"]["test_accuracy"] is not None
    assert "validating on 4" in err
    (data / "train").mkdir()  # train/ beside Train/: which one is meant?
    code, _, err = run_main(["train", data, "-o", tmp_path / "n.safetensors", *ARGS], capsys)
    assert code == 65 and "more than one train folder (Train, train)" in err, err


@pytest.mark.parametrize("name", ["uncertain", "unknown", "Uncertain"])
def test_class_names_that_are_predict_labels_are_refused(tmp_path, capsys, name):
    data = make_image_folder(tmp_path / "data", classes=("cat", name), n_per_class=3, size=8)
    out = tmp_path / "m.safetensors"
    code, stdout, err = run_main(["train", data, "-o", out, *ARGS], capsys)
    assert code == 65 and stdout == "", err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"the class name '{name}' is reserved" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_out_of_range_is_a_usage_error(tmp_path, capsys, seed):
    data = make_image_folder(tmp_path / "data", n_per_class=3, size=8)
    code, out, err = run_main(["train", data, "-o", tmp_path / "m.safetensors", *ARGS, "--seed", seed], capsys)
    assert code == 2 and out == "", err
    assert err.startswith(f"Usage error: --seed: must be between 0 and 4294967295, got {seed}\n")
    assert "Traceback" not in err and not (tmp_path / "m.safetensors").exists()


def test_the_suite_ignores_a_model_in_the_folder_it_is_run_from(tmp_path, capsys):
    """README's quick start trains ./model.safetensors, then runs the tests from the same folder."""
    data = make_image_folder(tmp_path / "data", n_per_class=3, size=8)
    assert run_main(["train", data, "-o", tmp_path / "model.safetensors", *ARGS], capsys)[0] == 0
    env = child_env(CNNCLI_MODEL=str(tmp_path / "model.safetensors"))
    res = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                          str(REPO / "tests" / "test_predict.py"), "-k", "current_directory or missing"],
                         cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stdout.decode()[-3000:]
    assert b" 2 passed, " in res.stdout  # test_model_from_env_then_current_directory and a missing-model test
