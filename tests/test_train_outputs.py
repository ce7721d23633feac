"""Every output of `train` and `eval --plot` follows the rules of `-o`: checked before any image is decoded,
never an input file, never another output of the same run, replaced only with --overwrite; checkpoints are
outputs too, and one lock covers a weight file and all its sidecars whatever the spelling of -o.

All through the real command: cnncli.commands.cli.main in-process, or `python -m cnncli` children.
"""

import os
import signal
import time

import pytest

from cnncli.store import weights
from conftest import make_image_folder
from robust_helpers import FAST, cnncli_child, run_main
from train_helpers import interrupt_after_reads

ARGS = [*FAST, "--epochs", "1"]


@pytest.fixture
def data(tmp_path):
    return make_image_folder(tmp_path / "data", n_per_class=6, size=8)


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- --plot


def test_plot_never_replaces_an_input_image(data, tmp_path, capsys):
    image = data / "cat" / "img_0000.png"
    before = image.read_bytes()
    out = tmp_path / "m.safetensors"
    code, stdout, err = run_main(["train", data, "-o", out, *ARGS, "--plot", image, "--overwrite"], capsys)
    assert code == 73 and stdout == "", err
    assert "is an input of this run" in _one_error_line(err) and str(image) in err
    assert "training" not in err  # refused before any image was decoded
    assert image.read_bytes() == before and not out.exists()


@pytest.mark.parametrize("plot, code, says", [
    ("m.safetensors", 2, "cannot draw a"),  # the weight file itself
    ("m.history.csv", 2, "cannot draw a"),  # a sidecar
    ("c.jpg", 2, "cannot draw a"),  # a format that is not written
    ("m.png", 73, "the --plot file would be the same file as the weight file"),  # -o m.png
])
def test_plot_is_never_another_output_and_names_its_format(data, tmp_path, capsys, plot, code, says):
    out = tmp_path / ("m.png" if plot == "m.png" else "m.safetensors")
    code_, stdout, err = run_main(["train", data, "-o", out, *ARGS, "--plot", tmp_path / plot], capsys)
    assert code_ == code and stdout == "", err
    assert says in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / plot).exists()


def test_an_existing_plot_is_replaced_only_with_overwrite(data, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    plot.write_bytes(b"someone's picture")
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS, "--plot", plot], capsys)
    assert code == 73 and "already exists (use --overwrite)" in _one_error_line(err)
    assert plot.read_bytes() == b"someone's picture" and not out.exists()
    code, _, err = run_main(["train", data, "-o", out, *ARGS, "--plot", plot, "--overwrite"], capsys)
    assert code == 0, err
    assert plot.read_bytes().startswith(b"\x89PNG") and out.exists()


def test_plot_in_a_missing_folder_fails_before_training(data, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS, "--plot", tmp_path / "nope" / "c.png"], capsys)
    assert code == 73, err
    assert "directory does not exist" in _one_error_line(err) and "epoch" not in err
    assert not out.exists() and not (tmp_path / "m.history.csv").exists()


def test_eval_plot_follows_the_same_rules(data, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    assert run_main(["train", data, "-o", model, *ARGS], capsys)[0] == 0
    image = data / "dog" / "img_0001.png"
    before = image.read_bytes()
    base = ["eval", data, "-m", model]
    code, out, err = run_main([*base, "--plot", image, "--overwrite"], capsys)
    assert code == 73 and out == "" and "is an input of this run" in err, err
    assert image.read_bytes() == before
    code, out, err = run_main([*base, "--plot", model], capsys)
    assert code == 2 and out == "" and "cannot draw a" in err, err
    assert weights.load(model)  # still a weight file
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"keep me")
    code, out, err = run_main([*base, "--plot", sheet], capsys)
    assert code == 73 and out == "" and "already exists (use --overwrite)" in err, err
    assert sheet.read_bytes() == b"keep me"
    code, out, err = run_main([*base, "--plot", sheet, "--overwrite"], capsys)
    assert code == 0 and sheet.read_bytes().startswith(b"\x89PNG"), err


# ---------------------------------------------------------------- checkpoints


def test_an_existing_checkpoint_means_resume_or_overwrite(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.safetensors"
    args = ["train", data, "-o", out, "--arch", "tiny", "--batch-size", "2", "--epochs", "3"]
    with interrupt_after_reads(monkeypatch, 2):
        code, _, err = run_main(args, capsys)
    assert code == 130, err
    ckpt = tmp_path / "m.ckpt.safetensors"
    saved = ckpt.read_bytes()

    code, stdout, err = run_main(args, capsys)  # the same command again, without --resume
    assert code == 73 and stdout == "", err
    line = _one_error_line(err)
    assert str(ckpt) in line and "--resume" in line and "--overwrite" in line
    assert ckpt.read_bytes() == saved and not out.exists()

    code, _, err = run_main([*args, "--overwrite"], capsys)  # start again, on purpose
    assert code == 0, err
    assert out.exists() and not ckpt.exists()


def test_one_lock_covers_the_weights_and_their_sidecars_whatever_the_spelling(data, tmp_path, capsys):
    """`-o x` and `-o x.safetensors` share x.ckpt.safetensors and x.history.csv, so they share one lock."""
    bare = tmp_path / "x"
    proc = cnncli_child(["train", data, "-o", bare, "--arch", "tiny", "--batch-size", "2", "--epochs", "200"],
                        tmp_path)
    ckpt = tmp_path / "x.ckpt.safetensors"
    deadline = time.monotonic() + 60
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert ckpt.exists(), proc.stderr.read().decode()
        code, out, err = run_main(["train", data, "-o", tmp_path / "x.safetensors", *ARGS, "--overwrite"], capsys)
        assert code == 75 and out == "", err
        assert f"pid {proc.pid}" in err
        assert ckpt.exists() and not (tmp_path / "x.safetensors").exists()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
        proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert ckpt.exists()  # the interrupted run's checkpoint, resumable


# ---------------------------------------------------------------- divergence


def test_divergence_at_the_end_of_an_epoch_exits_4_and_leaves_nothing_half_baked(tmp_path, capsys):
    """One batch per epoch and a huge step: the loss is finite when checked, the weights after the step are
    not, and the validation loss at the end of epoch 2 is NaN (epoch 1 had written a history and a
    checkpoint). The run leaves none of its files, so the same command with a sane --lr just works."""
    data = make_image_folder(tmp_path / "data", n_per_class=8, size=8)
    out = tmp_path / "m.safetensors"
    args = ["train", data, "-o", out, "--arch", "tiny", "--batch-size", "64", "--epochs", "3", "--optimizer", "sgd"]
    code, stdout, err = run_main([*args, "--lr", "1e10"], capsys)
    assert code == 4 and stdout == "", err
    assert "epoch 1/3" in err  # one epoch was recorded before
    line = err.strip().splitlines()[-1]
    assert "validation loss became nan at the end of epoch 2" in line and "--lr" in line and "--clip-norm" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no weights, checkpoint, split or history
    code, _, err = run_main([*args, "--lr", "0.01"], capsys)
    assert code == 0, err


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_in_the_way(data, tmp_path, capsys):
    (data / "dog" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS, "--strict"], capsys)
    assert code == 65, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    (data / "dog" / "broken.png").unlink()
    assert run_main(["train", data, "-o", out, *ARGS], capsys)[0] == 0


def test_a_plot_inside_the_data_folder_is_refused(data, tmp_path, capsys):
    """A new picture in a class folder would be read as a training image by the next run."""
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS, "--plot", data / "cat" / "curves.png"], capsys)
    assert code == 73 and "is inside the data folder" in _one_error_line(err), err
    assert not (data / "cat" / "curves.png").exists() and not out.exists()
