"""Command-level robustness: bad options, internal errors, damaged weight files, unwritable outputs, no escapes.

Each test drives the real entry point (cnncli.commands.cli.main, which maps outcomes to exit codes) or a
`python -m cnncli` child. The library-level refusals are tested in test_weights.py / test_atomic.py; here we
check what a user sees: the exit code, one line on stderr, nothing on stdout.
"""

import json
import os
import pickle  # tests only: to craft a malicious file that cnncli must refuse without running it
import pty
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from cnncli.store import modelfile

from cnncli.store import weights
from cnncli.engine.model import Model
from conftest import make_image_folder
from robust_helpers import FAST, child_env, read_pty, run_main

# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv", [
    ["train", "DATA", "--no-such-option"],
    ["train"],
    ["train", "DATA", "--epochs", "0"],
    ["train", "DATA", "--epochs", "many"],
    ["train", "DATA", "--lr", "nan"],
    ["train", "DATA", "--lr", "-1"],
    ["train", "DATA", "--lr", "inf"],
    ["train", "DATA", "--lr", "0"],
    ["train", "DATA", "--val-split", "1"],
    ["train", "DATA", "--val-split", "-0.1"],
    ["train", "DATA", "--batch-size", "0"],
    ["train", "DATA", "--clip-norm", "nan"],
    ["train", "DATA", "--optimizer", "rmsprop"],
    ["info", "m.safetensors", "--bogus"],
    ["no-such-command"],
    ["--no-such-global-option", "info", "m.safetensors"],
], ids=lambda a: " ".join(a) or "empty")
def test_bad_command_lines_exit_2_with_usage_on_stderr_and_nothing_on_stdout(argv, tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    argv = [str(data) if a == "DATA" else a for a in argv]
    code, out, err = run_main(argv, capsys)
    assert code == 2, err
    assert out == ""
    assert "usage" in err.lower() and "-h" in err  # says what is wrong and where help is
    assert "Traceback" not in err
    assert not (tmp_path / "model.safetensors").exists()


def test_option_error_names_the_option_and_value(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    code, out, err = run_main(["train", str(data), "--lr", "-1"], capsys)
    assert code == 2 and out == ""
    assert "--lr" in err and "-1" in err


def test_internal_error_is_one_line_without_traceback_or_locals(tmp_path, capsys, monkeypatch):
    """A bug (here: a RuntimeError from inside the train job) is exit 70 and one line suggesting --debug."""
    from cnncli.commands import train as train_run

    def broken(opts, report, given=frozenset()):
        secret_local = "hunter2-local-value"  # noqa: F841 - must never be shown
        raise RuntimeError("kaboom in the train job\nsecond line of detail")

    monkeypatch.setattr(train_run, "run", broken)
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    code, out, err = run_main(["train", str(data), "-o", str(tmp_path / "m.safetensors")], capsys)
    assert code == 70
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "RuntimeError" in lines[0] and "kaboom in the train job" in lines[0] and "--debug" in lines[0]
    assert "Traceback" not in err and "second line" not in err and "hunter2" not in err

    code, out, err = run_main(["--debug", "train", str(data), "-o", str(tmp_path / "m.safetensors")], capsys)
    assert code == 70 and out == ""
    assert "Traceback" in err and "kaboom" in err and "hunter2" not in err


def test_user_errors_are_one_line_even_for_file_names_with_newlines(tmp_path, capsys):
    missing = tmp_path / "no\nsuch\tmodel.safetensors"
    code, out, err = run_main(["info", str(missing)], capsys)
    assert code == 66 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "no\\nsuch\\tmodel.safetensors" in err


# ---------------------------------------------------------------- weight files via `cnncli info`


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _valid_model(path):
    model = Model("tiny", (1, 8, 8), 2, seed=0)
    clf = modelfile.Classifier(model, ["cat", "dog"], "gray", [0.5], [0.25])
    modelfile.save(path, clf)
    return path


def _raw_meta(path):
    """The metadata strings of a saved weight file (what safetensors stores)."""
    with safetensors.safe_open(str(path), "np") as f:
        return dict(f.metadata())


def _pickle(tmp_path, good):
    return pickle.dumps({"state_dict": _Payload(tmp_path / "pwned")}, protocol=4)


def _newer(tmp_path, good):
    tensors, _ = weights.load(good)
    return safetensors.numpy.save(tensors, metadata={**_raw_meta(good), "format_version": str(weights.FORMAT_VERSION + 1)})


def _unknown_layer(tmp_path, good):
    tensors, meta = weights.load(good)
    path = tmp_path / "spec.safetensors"
    weights.save(path, tensors, {**meta, "arch": "conv8k3-frobnicate-pool2-fc"})
    return path.read_bytes()


def _mismatch(tmp_path, good):
    tensors, meta = weights.load(good)
    name = sorted(tensors)[0]
    tensors[name] = np.zeros(tensors[name].size + 3, np.float32)
    path = tmp_path / "mismatch.safetensors"
    weights.save(path, tensors, meta)
    return path.read_bytes()


def _nan(tmp_path, good):
    tensors, _ = weights.load(good)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    meta = {**_raw_meta(good), "tensor_sha256": weights.tensor_digest(tensors)}  # a "valid" file with NaN
    meta["metadata_sha256"] = weights.metadata_digest(meta)
    return safetensors.numpy.save(tensors, metadata=meta)


def _flipped(tmp_path, good):
    data = bytearray(good.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's float32 data
    return bytes(data)


WEIGHT_FAULTS = {
    "pickle renamed": (_pickle, "not a safetensors file"),
    "truncated": (lambda t, g: g.read_bytes()[: len(g.read_bytes()) // 2], "truncated"),
    "random bytes": (lambda t, g: np.random.default_rng(5).bytes(4096), "not a safetensors file"),
    "empty": (lambda t, g: b"", "empty file"),
    "foreign safetensors": (lambda t, g: safetensors.numpy.save({"w": np.ones(4, np.float32)}),
                            "not a cnncli weight file"),
    "newer format version": (_newer, "newer cnncli"),
    "unknown layer": (_unknown_layer, "unknown layer 'frobnicate'"),
    "tensors do not match spec": (_mismatch, "the architecture needs"),
    "NaN weights": (_nan, "non-finite"),
    "flipped byte": (_flipped, "checksum"),
}


@pytest.mark.parametrize("fault", sorted(WEIGHT_FAULTS))
def test_info_refuses_bad_weight_files_with_one_line_and_exit_65(fault, tmp_path, capsys):
    good = _valid_model(tmp_path / "good.safetensors")
    make, reason = WEIGHT_FAULTS[fault]
    path = tmp_path / "model.safetensors"
    path.write_bytes(make(tmp_path, good))
    before = path.read_bytes()
    code, out, err = run_main(["info", str(path)], capsys)
    assert code == 65, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and reason in lines[0]
    assert path.read_bytes() == before
    assert not (tmp_path / "pwned").exists()  # the pickle payload never ran
    # sanity: the untouched original is accepted by the same command
    code, out, _ = run_main(["info", "--json", str(good)], capsys)
    assert code == 0 and json.loads(out)["classes"] == ["cat", "dog"]


def test_info_missing_file_is_exit_66(tmp_path, capsys):
    code, out, err = run_main(["info", str(tmp_path / "nope.safetensors")], capsys)
    assert code == 66 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nope.safetensors" in err


# ---------------------------------------------------------------- outputs that cannot be created


def _fails_before_training(code, out, err, where):
    assert code == 73, err
    assert out == ""
    assert where in err and len(err.strip().splitlines()) == 1
    assert "reading" not in err and "epoch" not in err  # no data was read, no training started


def test_output_directory_missing_is_exit_73_before_training(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    target = tmp_path / "missing" / "m.safetensors"
    code, out, err = run_main(["train", str(data), "-o", str(target), *FAST, "--epochs", "1"], capsys)
    _fails_before_training(code, out, err, "directory does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_output_directory_nobody_can_write_is_exit_73_before_training(tmp_path, capsys):
    # /proc/self is a directory where not even root can create files
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    code, out, err = run_main(["train", str(data), "-o", "/proc/self/m.safetensors", *FAST, "--epochs", "1"], capsys)
    _fails_before_training(code, out, err, "cannot create files in /proc/self")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (the /proc/self test covers root)")
def test_read_only_output_directory_is_exit_73_before_training(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out, err = run_main(["train", str(data), "-o", str(ro / "m.safetensors"), *FAST], capsys)
    finally:
        ro.chmod(0o755)
    _fails_before_training(code, out, err, "permission denied")
    assert list(ro.iterdir()) == []


def test_existing_output_without_overwrite_is_exit_73_and_untouched(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"the user's previous model")
    code, out, err = run_main(["train", str(data), "-o", str(target), *FAST, "--epochs", "1"], capsys)
    _fails_before_training(code, out, err, "--overwrite")
    assert target.read_bytes() == b"the user's previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.safetensors"]  # no sidecars, no lock


# ---------------------------------------------------------------- no escape codes


def test_no_color_on_a_terminal_means_no_escape_codes_and_empty_stdout(tmp_path):
    """stderr is a real terminal (a pty) but NO_COLOR is set: plain lines only; stdout (a pipe) stays empty."""
    data = make_image_folder(tmp_path / "data", n_per_class=8, size=8)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "train", str(data), "-o", str(tmp_path / "m.safetensors"),
                             *FAST, "--epochs", "2"], cwd=tmp_path, env=child_env(NO_COLOR="1"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = read_pty(master)
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, err
    assert out == b""
    assert b"epoch 2/2" in err  # progress was reported, as plain lines
    assert b"\x1b" not in err
