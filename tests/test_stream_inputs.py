"""An image read from a pipe, FIFO or device (`predict /dev/stdin`, `<(cat img.png)`, a named pipe) is decoded
like the same file on disk: its size of 0 says nothing about its content (README, "Predicting")."""

import os
import subprocess
import sys
import threading

from batch_helpers import body, world
from robust_helpers import child_env


def _predict(args, cwd, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "cnncli", "predict", *map(str, args)], cwd=cwd, env=child_env(),
                          input=stdin, capture_output=True, timeout=120)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_an_image_piped_to_dev_stdin_or_through_a_fifo_gets_the_file_s_scores(tmp_path):
    data, model = world(tmp_path, n_per_class=1, bad=0)
    image = next(data.rglob("*.png"))
    code, out, err = _predict([image, "-m", model], tmp_path)
    assert code == 0, err
    want = body(out)[0].split("\t")[1:]
    code, out, err = _predict(["/dev/stdin", "-m", model], tmp_path, stdin=image.read_bytes())
    assert code == 0 and body(out)[0].split("\t")[1:] == want, err
    fifo = tmp_path / "named.png"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(image.read_bytes()))
    writer.start()
    code, out, err = _predict([fifo, "-m", model], tmp_path)
    writer.join(timeout=60)
    assert code == 0 and body(out)[0].split("\t")[1:] == want, err


def test_an_empty_pipe_is_an_error_row_not_a_hang(tmp_path):
    _, model = world(tmp_path, n_per_class=1, bad=0)
    code, out, err = _predict(["/dev/stdin", "-m", model], tmp_path, stdin=b"")
    assert code == 1 and body(out)[0].endswith("empty file"), err
