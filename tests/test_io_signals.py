"""`predict` ended by a signal: no process left holding the caller's stdout, no Python abort.

These run the real `python -m cnncli predict -` with paths arriving on a stdin pipe that stays open, the way
`producer | cnncli predict - | wc -l` runs, and signal it while it waits for more input.
"""

import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from test_io_formats import _model
from robust_helpers import child_env

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def _start_predict(tmp_path, *args):
    model = tmp_path / "m.safetensors"
    _model(model)
    return subprocess.Popen([sys.executable, "-m", "cnncli", "predict", "-m", str(model), *args, "-"],
                            cwd=tmp_path, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _images(folder, n):
    folder.mkdir()
    paths = []
    for i in range(n):
        Image.fromarray(np.full((8, 8), i % 250, np.uint8)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def _read_to_eof(stream, timeout=30):
    """Everything left on a pipe until every writer has closed it; fails if that takes over `timeout` s."""
    data, deadline = b"", time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail("the output pipe is still held open: a process outlived cnncli")
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            return data
        data += chunk


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_decode_workers_end_with_predict_however_it_is_killed(tmp_path, sig):
    paths = _images(tmp_path / "in", 300)  # a full first batch (256): decoding runs in worker processes
    proc = _start_predict(tmp_path, "--format", "tsv")
    proc.stdin.write(("\n".join(paths) + "\n").encode())
    proc.stdin.flush()
    rows = [proc.stdout.readline() for _ in range(1 + 256)]  # header and the first batch; stdin stays open
    assert all(r.endswith(b"\t\n") for r in rows[1:])
    workers = _children(proc.pid)
    assert len(workers) >= 2  # two decode workers (and multiprocessing's resource tracker)
    proc.send_signal(sig)
    _read_to_eof(proc.stdout)  # `| wc -l` ends: nobody holds stdout any more
    assert proc.wait(timeout=30) == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers))
    err = proc.stderr.read()
    proc.stdin.close()
    if sig == signal.SIGTERM:
        assert err.decode().splitlines() == ["cnncli: terminated"]


def test_ctrl_c_while_waiting_for_stdin_exits_130_without_aborting_python(tmp_path):
    """Issue 8: `(printf 'one.jpg\\n'; sleep 6) | cnncli predict --batch-size 1 -` and Ctrl-C after the first
    row aborted Python ("Fatal Python error: _enter_buffered_busy", exit 134) in every try."""
    path = _images(tmp_path / "in", 1)[0]
    for _ in range(2):
        proc = _start_predict(tmp_path, "--batch-size", "1", "--format", "tsv")
        proc.stdin.write(path.encode() + b"\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith(b"path\t")
        assert proc.stdout.readline().startswith(path.encode() + b"\t")
        proc.send_signal(signal.SIGINT)  # stdin is still open: the reader is blocked waiting for more
        err = _read_to_eof(proc.stderr)
        code = proc.wait(timeout=30)
        proc.stdin.close()
        assert (code, err) == (130, b"cnncli: interrupted\n")
