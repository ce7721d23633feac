"""Weight-file and lock security through the real command: planted lock files, outputs that are not regular
files, empty output names. Each test drives cnncli.commands.cli.main (exit-code mapping included)."""

import os
import socket
import stat

import pytest

from cnncli.engine.model import Model
from cnncli.store import modelfile
from conftest import make_image_folder
from robust_helpers import FAST, run_main

NOTES = b"the user's notes: never to be truncated\n"


def _tiny_model(path, classes=("cat", "dog"), size=8, seed=0):
    """A valid two-class weight file (untrained: these tests are about files, not accuracy)."""
    clf = modelfile.Classifier(Model("tiny", (1, size, size), len(classes), seed=seed), list(classes), "gray",
                               [0.5], [0.25])
    modelfile.save(path, clf)
    return path


def _one_line_error(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], err


# ---------------------------------------------------------------- planted lock files


@pytest.mark.parametrize("plant", ["symlink", "dangling-symlink", "hardlink", "fifo"])
def test_train_refuses_a_planted_lock_file_and_leaves_its_target_untouched(tmp_path, capsys, plant):
    data = make_image_folder(tmp_path / "faces", n_per_class=4, size=8)
    out_dir = tmp_path / "d"
    out_dir.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_bytes(NOTES)
    lock = out_dir / "m.lock"  # one lock for m.safetensors and its sidecars
    if plant == "symlink":
        lock.symlink_to(notes)
    elif plant == "dangling-symlink":
        lock.symlink_to(tmp_path / "created-through-the-link")
    elif plant == "hardlink":
        os.link(notes, lock)
    else:
        os.mkfifo(lock)
    code, out, err = run_main(["train", data, "-o", out_dir / "m.safetensors", *FAST, "--epochs", "1"], capsys)
    assert code == 73, err
    assert out == ""
    _one_line_error(err, "m.lock", "refusing")
    assert "reading" not in err  # refused before any image was decoded
    assert notes.read_bytes() == NOTES
    assert not (tmp_path / "created-through-the-link").exists()
    assert not (out_dir / "m.safetensors").exists()
    assert os.path.lexists(lock)  # left where it was: removing it is the user's call


def test_eval_save_threshold_refuses_a_symlinked_lock_and_keeps_model_and_target(tmp_path, capsys):
    data = make_image_folder(tmp_path / "faces", n_per_class=4, size=8)
    model = _tiny_model(tmp_path / "m.safetensors")
    before = model.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_bytes(NOTES)
    (tmp_path / "m.lock").symlink_to(notes)
    code, out, err = run_main(["eval", data, "-m", model, "--pick-threshold", "youden", "--save-threshold"], capsys)
    assert code == 73, err
    assert "refusing" in err and "m.lock" in err
    assert notes.read_bytes() == NOTES
    assert model.read_bytes() == before


# ---------------------------------------------------------------- outputs that are not regular files


def _fifo(path):
    os.mkfifo(path)


def _socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


def _directory(path):
    path.mkdir()


@pytest.mark.parametrize("make", [_fifo, _socket, _directory], ids=["fifo", "socket", "directory"])
def test_overwrite_never_replaces_a_non_regular_output(tmp_path, capsys, make):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    target = tmp_path / "node"
    keep = make(target)
    mode = os.lstat(target).st_mode
    try:
        code, out, err = run_main(["train", data, "-o", target, "--overwrite", *FAST, "--epochs", "1"], capsys)
    finally:
        if keep is not None:
            keep.close()
    assert code == 73, err
    _one_line_error(err, str(target))
    assert "reading" not in err
    assert stat.S_IFMT(os.lstat(target).st_mode) == stat.S_IFMT(mode)


def test_overwrite_never_replaces_a_device_node(tmp_path, capsys):
    """A null device node made in tmp_path (never /dev/null itself: old code would have replaced it)."""
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("creating a device node needs CAP_MKNOD")
    before = os.lstat(node)
    code, out, err = run_main(["train", data, "-o", node, "--overwrite", *FAST, "--epochs", "1"], capsys)
    assert code == 73, err
    _one_line_error(err, str(node), "character device")
    after = os.lstat(node)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_empty_output_name_is_a_usage_error(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    code, out, err = run_main(["train", data, "-o", "", *FAST, "--epochs", "1"], capsys)
    assert code == 2, err
    assert out == ""
    assert "--output" in err and "empty" in err and "Traceback" not in err
