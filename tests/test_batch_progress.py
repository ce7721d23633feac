"""Progress of long `predict` and `eval` runs: a bar on stderr when it is a terminal (a real pseudo-terminal
here), erased at the end and followed by the summary line; never off a terminal, with NO_COLOR, TERM=dumb or
--no-progress; stdout is the same bytes whichever stderr is. Also the end-of-run summary line itself, and a
predict killed with SIGKILL leaving nothing on stderr from multiprocessing's resource tracker."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading

import pytest

from batch_helpers import tiny_model
from conftest import make_image_folder
from robust_helpers import child_env, read_pty

BAR = "\u2501".encode()  # the heavy horizontal line rich draws the bar with
SUMMARY = re.compile(r"cnncli: predict: (\d+) rows, (\d+) errors, \d+ img/s, \d+\.\d s")


def _world(tmp_path, n_per_class=20):
    data = make_image_folder(tmp_path / "data", n_per_class=n_per_class, size=16)
    (data / "cat" / "broken.png").write_bytes(b"not an image")
    return data, tiny_model(tmp_path / "m.safetensors")


def _run(args, cwd, tty, stdin=b"", **env):
    """Run `python -m cnncli ARGS` with stdout on a pipe and stderr on a pseudo-terminal (tty=True) or a pipe.
    Returns (exit code, stdout bytes, stderr bytes)."""
    kw = dict(cwd=cwd, env=child_env(**env), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if not tty:
        proc = subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)], stderr=subprocess.PIPE, **kw)
        out, err = proc.communicate(stdin, timeout=300)
        return proc.returncode, out, err
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)], stderr=slave, **kw)
    os.close(slave)
    box = {}
    reader = threading.Thread(target=lambda: box.setdefault("out", proc.communicate(stdin, timeout=300)[0]))
    reader.start()  # stdout is drained while the terminal is read, so neither can fill up and block the run
    err = read_pty(master)
    reader.join()
    return proc.wait(timeout=60), box["out"], err


def _screen_end(err: bytes) -> bytes:
    """The last line left on the terminal after the bar was erased: the text after rich's final clear-line."""
    return err.rsplit(b"\x1b[2K", 1)[-1].replace(b"\r", b"")


def test_predict_draws_a_bar_on_a_terminal_and_stdout_stays_byte_identical(tmp_path):
    data, model = _world(tmp_path)
    args = ["predict", data, "-m", model, "--batch-size", "16"]
    code, out, err = _run(args, tmp_path, tty=True)
    assert code == 1, err  # one broken file
    assert b"predict" in err and BAR in err and b"img/s" in err and b"41/41" in err  # total counted from the folder
    last = _screen_end(err).decode()
    assert SUMMARY.fullmatch(last.strip()), err[-400:]  # the bar is gone and the summary line took its place
    assert SUMMARY.fullmatch(last.strip()).groups() == ("41", "1")
    code2, out2, err2 = _run(args, tmp_path, tty=False)
    assert code2 == 1 and out2 == out  # the data does not depend on where stderr goes
    assert len(out.splitlines()) == 42
    assert b"\x1b" not in err2 and BAR not in err2 and b"\r" not in err2  # off a terminal: no bar at all
    lines = err2.decode().splitlines()
    assert lines[0].endswith("broken.png: not an image or unsupported format")
    assert SUMMARY.fullmatch(lines[1]) and len(lines) == 2


def test_predict_from_stdin_counts_up_without_a_total(tmp_path):
    data, model = _world(tmp_path)
    paths = "".join(f"{p}\n" for p in sorted(data.rglob("*.png"))).encode()
    code, out, err = _run(["predict", "-", "-m", model, "--batch-size", "16"], tmp_path, tty=True, stdin=paths)
    assert code == 1, err
    assert BAR in err and b"img/s" in err
    assert b"/41" not in err  # stdin is read once, as it streams: no total to show
    assert SUMMARY.fullmatch(_screen_end(err).decode().strip())
    assert len(out.splitlines()) == 42


@pytest.mark.parametrize("env, flag", [({"NO_COLOR": "1"}, []), ({"TERM": "dumb"}, []), ({}, ["--no-progress"])])
def test_no_bar_with_no_color_term_dumb_or_no_progress(tmp_path, env, flag):
    data, model = _world(tmp_path)
    code, out, err = _run(["predict", data, "-m", model, "--batch-size", "16", *flag], tmp_path, tty=True, **env)
    assert code == 1 and len(out.splitlines()) == 42
    assert b"\x1b" not in err and BAR not in err
    lines = err.decode().replace("\r", "").splitlines()
    assert len(lines) == 2 and SUMMARY.fullmatch(lines[1])


def test_a_short_run_draws_no_bar_and_prints_no_summary(tmp_path):
    data, model = _world(tmp_path)
    code, out, err = _run(["predict", data, "-m", model], tmp_path, tty=True)  # 41 inputs < one batch of 256
    assert code == 1 and len(out.splitlines()) == 42
    assert BAR not in err and b"cnncli: predict:" not in err


def test_summary_line_off_a_terminal_with_timestamps(tmp_path):
    data, model = _world(tmp_path)
    code, out, err = _run(["predict", data, "-m", model, "--batch-size", "16"], tmp_path, tty=False,
                          CNNCLI_LOG_TIMESTAMPS="1")
    last = err.decode().splitlines()[-1]
    stamp, _, rest = last.partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), last
    assert SUMMARY.fullmatch(rest).groups() == ("41", "1")


def test_eval_draws_a_bar_on_a_terminal_and_stdout_stays_byte_identical(tmp_path):
    data, model = _world(tmp_path, n_per_class=128)  # 257 images: more than eval's 256 for a bar
    code, out, err = _run(["eval", data, "-m", model], tmp_path, tty=True)
    assert code == 0, err
    assert b"eval" in err and BAR in err and b"/257" in err
    code2, out2, err2 = _run(["eval", data, "-m", model], tmp_path, tty=False)
    assert code2 == 0 and out2 == out and b"accuracy" in out
    assert b"\x1b" not in err2 and BAR not in err2
    assert err2.decode().splitlines() == [f"warning: skipped {data / 'cat' / 'broken.png'}: "
                                          "not an image or unsupported format"]
    assert err2 in err.replace(b"\r", b"")  # the warning reached the terminal too, above the bar, in one piece


def test_train_bar_still_runs_on_a_terminal_and_keeps_stdout_empty(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=8, size=8)
    code, out, err = _run(["train", data, "-o", tmp_path / "t.safetensors", "--arch", "conv2k3-relu-pool2-fc",
                           "--epochs", "2", "--batch-size", "4"], tmp_path, tty=True)
    assert code == 0, err
    assert out == b""
    assert b"epoch 2/2" in err and BAR in err


def test_sigkill_leaves_no_resource_tracker_warning_on_stderr(tmp_path):
    """Killed outright, predict cannot remove its worker pool's semaphores; multiprocessing's resource tracker
    does, and used to print 'There appear to be N leaked semaphore objects' on the run's stderr."""
    data, model = _world(tmp_path, n_per_class=150)
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "predict", str(data), "-m", str(model),
                             "--batch-size", "16"], cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(1 + 32):  # header and two batches: the worker pool is running
        assert proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)  # to end-of-file: every process holding stderr has ended
    assert proc.returncode == -signal.SIGKILL
    assert b"semaphore" not in err and b"resource_tracker" not in err, err
