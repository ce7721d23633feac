"""--resume continues on exactly the files of the interrupted run, the stop flag is read once per batch, and a
split manifest belongs to the weights it was written with (eval never takes another run's manifest).

Through the real command (cnncli.commands.cli.main in-process); interrupts are real SIGINTs sent at a
chosen read of the stop flag (train_helpers.interrupt_after_reads).
"""

import json

import numpy as np
from PIL import Image

from cnncli.store import weights
from conftest import make_image_folder
from robust_helpers import run_main
from train_helpers import interrupt_after_reads

ARGS = ["--arch", "tiny", "--batch-size", "4", "--epochs", "2", "--seed", "5"]


def _tensors(path):
    return {k: v.tobytes() for k, v in weights.load(path)[0].items()}


def _interrupted(data, out, capsys, monkeypatch, reads=3, extra=()):
    with interrupt_after_reads(monkeypatch, reads):
        code, _, err = run_main(["train", data, "-o", out, *ARGS, *extra], capsys)
    assert code == 130, err
    return weights.load(out.with_name(out.name.replace(".safetensors", ".ckpt.safetensors")))[1]


def test_a_signal_between_two_reads_of_the_stop_flag_does_not_end_the_epoch(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    ref = tmp_path / "ref.safetensors"
    assert run_main(["train", data, "-o", ref, *ARGS], capsys)[0] == 0
    out = tmp_path / "m.safetensors"
    meta = _interrupted(data, out, capsys, monkeypatch, reads=1)  # SIGINT right after the first batch's read
    # stopped after the next batch, inside epoch 1: nothing recorded as a finished epoch
    assert meta["state"]["epoch"] == 0 and meta["state"]["batch"] == 2 and meta["state"]["history"] == []
    code, _, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 0, err
    assert _tensors(out) == _tensors(ref)


def test_resume_refuses_data_that_changed_naming_the_files(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    out = tmp_path / "m.safetensors"
    _interrupted(data, out, capsys, monkeypatch)
    ckpt = (tmp_path / "m.ckpt.safetensors").read_bytes()
    Image.fromarray(np.full((8, 8), 99, np.uint8)).save(data / "cat" / "new.png")
    (data / "dog" / "img_0003.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "dog" / "img_0004.png")
    code, stdout, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 65 and stdout == "", err
    line = err.strip().splitlines()[-1]
    assert "the data changed since the checkpoint" in line
    assert "1 added (cat/new.png)" in line and "1 removed (dog/img_0003.png)" in line
    assert "1 changed (dog/img_0004.png)" in line
    assert (tmp_path / "m.ckpt.safetensors").read_bytes() == ckpt and not out.exists()


def test_resume_uses_the_saved_split_and_the_data_argument_given_now(tmp_path, capsys, monkeypatch):
    """Interrupted in one working directory with DATA spelt relatively; resumed from another with an
    absolute DATA: the run continues on the split it drew and ends as an uninterrupted run would."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    data = make_image_folder(first / "data", n_per_class=10, size=8)
    ref = tmp_path / "ref.safetensors"
    assert run_main(["train", data, "-o", ref, *ARGS], capsys)[0] == 0
    out = tmp_path / "m.safetensors"
    monkeypatch.chdir(first)
    _interrupted("data", out, capsys, monkeypatch)
    monkeypatch.chdir(second)
    code, _, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 0, err
    assert _tensors(out) == _tensors(ref)
    held_out = json.loads((tmp_path / "m.split.json").read_text())["val"]
    assert held_out == json.loads((tmp_path / "ref.split.json").read_text())["val"]
    assert not (tmp_path / "m.ckpt.safetensors").exists() and not (tmp_path / "m.ckpt.data.json").exists()


# ---------------------------------------------------------------- the split manifest belongs to its weights


def _source(data, model, capsys):
    code, out, err = run_main(["eval", data, "-m", model, "--format", "json"], capsys)
    assert code == 0, err
    return json.loads(out)["source"], err


def test_eval_ignores_the_split_of_a_model_that_was_replaced(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    model = tmp_path / "m.safetensors"
    split = tmp_path / "m.split.json"
    assert run_main(["train", data, "-o", model, *ARGS], capsys)[0] == 0
    assert _source(data, model, capsys)[0] == f"held-out split recorded in {split}"
    old_split = split.read_bytes()
    # retrained on everything: the old held-out list is gone with the old weights
    assert run_main(["train", data, "-o", model, *ARGS, "--val-split", "0", "--overwrite"], capsys)[0] == 0
    assert not split.exists()
    source, err = _source(data, model, capsys)
    assert source == str(data) and "scores on it include training images" in err
    split.write_bytes(old_split)  # a stale manifest put back (an old backup, a copy from elsewhere)
    source, err = _source(data, model, capsys)
    assert source == str(data)
    assert f"ignored {split}: it was written by another training run" in err


def test_a_retrain_that_diverged_leaves_the_models_split_alone(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    model = tmp_path / "m.safetensors"
    split = tmp_path / "m.split.json"
    assert run_main(["train", data, "-o", model, *ARGS], capsys)[0] == 0
    before = model.read_bytes(), split.read_bytes()
    code, _, err = run_main(["train", data, "-o", model, "--arch", "tiny", "--batch-size", "64", "--seed", "9",
                             "--optimizer", "sgd", "--lr", "1e30", "--overwrite"], capsys)
    assert code == 4, err
    assert (model.read_bytes(), split.read_bytes()) == before
    assert _source(data, model, capsys)[0] == f"held-out split recorded in {split}"


def test_a_non_utf8_file_name_survives_the_checkpoint_record_in_strict_json(tmp_path, capsys, monkeypatch):
    import os
    import re

    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    (data / "cat" / "img_0001.png").rename(data / "cat" / os.fsdecode(b"caf\xe9\xff.png"))  # Latin-1 bytes
    ref = tmp_path / "ref.safetensors"
    assert run_main(["train", data, "-o", ref, *ARGS], capsys)[0] == 0
    out = tmp_path / "m.safetensors"
    _interrupted(data, out, capsys, monkeypatch)
    raw = (tmp_path / "m.ckpt.data.json").read_bytes()
    assert not re.search(rb"\\ud[c-f]", raw, re.I)  # no lone surrogate escapes, which strict parsers reject
    json.loads(raw.decode("utf-8"))
    code, _, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 0, err  # the odd name reads back as the same file: resume sees no change
    assert _tensors(out) == _tensors(ref)
