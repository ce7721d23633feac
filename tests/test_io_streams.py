"""predict / eval / info / train with hostile streams and folders (issue 8): closed or full stdout and stderr,
stdin without separators, folders that cannot be listed, a class whose only image is bad, and a folder
listing that streams."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnncli.commands.predict_inputs import PATH_MAX, stdin_paths
from conftest import make_image_folder
from test_io_formats import _model, _png
from robust_helpers import FAST, child_env, run_child, run_main


def _shell(cmd_tail, args, tmp_path):
    """Run `python -m cnncli ARGS` with a shell redirection (e.g. '>&-') applied to it."""
    script = 'exec "$@" ' + cmd_tail
    proc = subprocess.run(["sh", "-c", script, "sh", sys.executable, "-m", "cnncli", *map(str, args)],
                          cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def small(tmp_path):
    model = tmp_path / "m.safetensors"
    _model(model)
    for cls in ("cat", "dog"):
        _png(tmp_path / "data" / cls / "0.png")
    return model, tmp_path / "data"


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
@pytest.mark.parametrize("command", ["predict", "eval", "info"])
def test_results_that_cannot_be_written_exit_74_with_one_line(small, tmp_path, command, redirect):
    model, data = small
    args = {"predict": ["predict", data, "-m", model], "eval": ["eval", data, "-m", model],
            "info": ["info", model]}[command]
    code, _, err = _shell(redirect, args, tmp_path)
    assert code == 74, err
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnncli: error: stdout"), err
    assert ("closed" if redirect == ">&-" else "No space left") in lines[0]


@pytest.mark.parametrize("redirect", [">&-", "2>&-", "2>/dev/full"])
def test_train_saves_its_model_whatever_happened_to_stdout_or_stderr(tmp_path, redirect):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    code, out, err = _shell(redirect, ["train", data, "-o", tmp_path / "m.safetensors", *FAST, "--epochs", "1"],
                            tmp_path)
    assert code == 0, err
    assert (tmp_path / "m.safetensors").is_file()
    assert b"Traceback" not in err and out == b""


def test_stdin_without_separators_is_one_error_row_and_the_run_goes_on(small, tmp_path):
    model, data = small
    good = str(data / "cat" / "0.png").encode()
    stdin = b"x" * (5 * 2**20) + b"\n" + good + b"\n" + b"y" * (PATH_MAX + 1)  # 5 MB line; last one unterminated
    proc = subprocess.run([sys.executable, "-m", "cnncli", "predict", "-", "-m", str(model), "--format", "jsonl"],
                          input=stdin, capture_output=True, cwd=tmp_path, env=child_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert [r.get("error") for r in rows] == [f"path longer than {PATH_MAX} bytes", None,
                                              f"path longer than {PATH_MAX} bytes"]
    assert rows[0]["path"] == "x" * 100 + "..." and rows[1]["path"] == good.decode()
    assert len(proc.stderr.splitlines()) == 2 and len(proc.stderr) < 1000


def test_stdin_paths_split_the_same_whatever_the_chunk_boundaries():
    data = b"a.png\n\nb\r\n" + b"z" * (PATH_MAX + 5) + b"\n" + b"c" * PATH_MAX + b"\nlast"
    expected = list(stdin_paths(False, [data]))
    assert [p for p, e in expected if e is None] == ["a.png", "b", "c" * PATH_MAX, "last"]
    assert [e for _, e in expected if e] == [f"path longer than {PATH_MAX} bytes"]
    for size in (1, 3, 4096, 4097):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert list(stdin_paths(False, chunks)) == expected


def _unlistable_folder(parent):
    """A folder inside `parent` whose listing fails even for root: nested so deep that its path is longer
    than the system allows (ENAMETOOLONG). Built through directory file descriptors."""
    top = parent / ("d" * 200)
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(4200 // 201 + 1):
            os.mkdir("d" * 200, dir_fd=fd)
            nxt = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return top


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_an_unreadable_folder_is_one_error_row_and_every_readable_image_gets_its_row(small, tmp_path, capsys, how):
    model, _ = small
    folder = tmp_path / "in"
    _png(folder / "a.png")
    _unlistable_folder(folder)
    _png(folder / "z" / "z.png")
    target = str(folder) if how == "folder" else str(folder / "*")
    code, out, err = run_main(["predict", target, "-m", model, "--format", "jsonl"], capsys)
    assert code == 1, err
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert [r["path"] for r in rows if "label" in r] == [str(folder / "a.png"), str(folder / "z" / "z.png")]
    failed = [r for r in rows if "error" in r]
    assert len(failed) == 1 and "cannot read folder" in failed[0]["error"]
    assert failed[0]["path"].startswith(str(folder / ("d" * 200)))
    assert len(err.splitlines()) == 1


def test_eval_skips_a_class_folders_only_image_when_it_is_unreadable(small, tmp_path, capsys):
    model, data = small
    (data / "cat" / "0.png").write_bytes(b"not an image")
    _png(data / "dog" / "1.png")
    code, out, err = run_main(["eval", data, "-m", model, "--format", "json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["skipped_files"] == 1 and report["per_class"]["cat"]["support"] == 0
    assert [ln for ln in err.splitlines() if "0.png" in ln][0].startswith("warning: skipped")


def test_rows_come_out_while_a_folder_is_still_being_listed(tmp_path):
    """The first folder's rows fill the stdout pipe and block predict before it reaches the last folder;
    an image added to that folder only now still gets its row, so the listing was not made up front."""
    model = tmp_path / "m.safetensors"
    _model(model)
    deep = tmp_path / "in" / "a" / "/".join(["p" * 200] * 14)  # 2,800-byte paths: 60 rows overflow a pipe
    for i in range(60):
        _png(deep / f"{i:02d}.png")
    (tmp_path / "in" / "z").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "predict", str(tmp_path / "in"), "-m", str(model),
                             "--batch-size", "1", "--format", "tsv"], cwd=tmp_path, env=child_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"path\t")
    assert proc.stdout.readline().startswith(str(deep / "00.png").encode())  # rows flow; the pipe fills soon
    _png(tmp_path / "in" / "z" / "late.png")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    paths = [ln.split(b"\t")[0] for ln in out.splitlines()]
    assert len(paths) == 60 and paths[-1] == str(tmp_path / "in" / "z" / "late.png").encode()
