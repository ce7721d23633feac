"""A failed run leaves nothing in the way of the next one, and collapse means collapse: one class predicted for
(nearly) every validation image of at least two classes, never a perfect score on one class.

Through the real command (cnncli.commands.cli.main in-process).
"""

import numpy as np
import pytest

from cnncli.engine.health import collapse_warnings
from conftest import make_image_folder
from robust_helpers import run_main
from test_photo_training import _noise_folder  # classes of pure noise: a model can only collapse

FAST = ["--arch", "tiny", "--batch-size", "8"]


def test_a_collapsed_run_under_fail_on_collapse_leaves_nothing_that_blocks_a_rerun(tmp_path, capsys):
    data = _noise_folder(tmp_path / "noise")
    (data / "many" / "broken.png").write_bytes(b"not an image")  # so there is a bad-files list to clean up
    cmd = ["train", data, "-o", tmp_path / "c.safetensors", *FAST, "--epochs", "2", "--val-split", "0.5",
           "--fail-on-collapse"]
    for attempt in ("first", "rerun"):  # the same command again (a nightly cron): the same gate, never exit 73
        code, stdout, err = run_main(cmd, capsys)
        assert code == 3 and stdout == "", (attempt, err)
        assert "--fail-on-collapse" in err.strip().splitlines()[-1]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.")) == [], attempt
    code, _, err = run_main([*cmd, "--resume"], capsys)
    assert code == 2 and "no checkpoint" in err  # nothing left to resume, said as such


def test_a_single_class_validation_folder_is_never_called_collapsed(tmp_path, capsys):
    data = make_image_folder(tmp_path / "e", classes=("coat", "pullover"), n_per_class=8, size=8, split=True,
                             n_test=0)
    (data / "val" / "coat").mkdir(parents=True)  # val/ holds two coats and nothing else
    for i in range(2):
        (data / "train" / "coat" / f"img_000{i}.png").rename(data / "val" / "coat" / f"v{i}.png")
    out = tmp_path / "v.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *FAST, "--epochs", "3", "--fail-on-collapse"], capsys)
    assert code == 0, err
    assert "collapsed" not in err and out.exists()


def _predicting(labels, predicted):
    return collapse_warnings([{"train_loss": 0.5}], np.array(labels), np.array(predicted), 2, 0.002)


@pytest.mark.parametrize("labels, predicted", [
    ([0, 0, 0, 1], [0, 0, 0, 0]),  # one class for all, accuracy 0.75 = the majority rate
    ([0, 0, 1, 1] * 5, [1] * 20),  # one class for all of a balanced set
    ([0] * 10 + [1] * 10, [1] + [0] * 19),  # nearly all (95%), accuracy 0.45 at a majority of 0.5
])
def test_collapse_is_one_class_for_nearly_all_of_two_or_more(labels, predicted):
    found = _predicting(labels, predicted)
    assert len(found) == 1 and "collapsed to (nearly) one class" in found[0]


@pytest.mark.parametrize("labels, predicted", [
    ([0, 0], [0, 0]),  # a perfect score on a single-class validation set
    ([1, 1, 1], [0, 0, 0]),  # single class: "always guess the largest class" is no baseline
    ([0, 0, 1, 1], [0, 0, 1, 1]),  # perfect on two classes
    ([0, 0, 0, 1], [1, 0, 0, 0]),  # accuracy 0.5 below the majority rate, but both classes predicted
])
def test_no_collapse_without_one_class_for_nearly_all_of_two_or_more(labels, predicted):
    assert _predicting(labels, predicted) == []
