"""Finds of a hostile tester about weights, caches and the machine, each pinned through the real command: a weight
file whose outputs overflow is refused as a bad weight file; a damaged numba kernel cache is compiled again; a
machine where decode processes cannot start (read-only /dev/shm) decodes in threads; a dangling --ledger symlink
is refused; predict --sort-into DIR inside an input folder does not score DIR's links again."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batch_helpers import body, world
from conftest import make_image_folder
from cnncli.engine.model import Model
from cnncli.store import modelfile, weights
from robust_helpers import child_env, run_main

SIZE = 8


def _huge_model(path):
    """A weight file that passes every check (finite tensors, valid checksums) but whose last dense layer's
    weights and biases are +-3e38: every logit overflows float32 to +-inf, every probability is NaN."""
    clf = modelfile.Classifier(Model("tiny", (1, SIZE, SIZE), 2, seed=1), ["coat", "pullover"], "gray",
                               [0.5], [0.25])
    modelfile.save(path, clf)
    tensors, meta = weights.load(path)
    last = max((n for n, v in tensors.items() if n.endswith(".weight") and v.ndim == 2),
               key=lambda n: int(n.split(".")[1]))
    sign = np.array([[1.0], [-1.0]], np.float32)
    tensors[last] = np.broadcast_to(sign * np.float32(3e38), tensors[last].shape).astype(np.float32)
    tensors[last.replace(".weight", ".bias")] = (sign[:, 0] * np.float32(3e38)).astype(np.float32)
    weights.save(path, tensors, meta)  # checksums recomputed, as README's weight-file section describes
    return path


def _cnncli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], capture_output=True, text=True,
                          env=env or child_env(), cwd=cwd, timeout=300)


def _refused_as_bad_weights(done, name):
    assert done.returncode == 65, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "overflow" in lines[0], done.stderr
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr


def test_a_weight_file_whose_outputs_overflow_is_refused_by_predict_and_eval(tmp_path):
    model = _huge_model(tmp_path / "huge.safetensors")
    # 40 images: the compiled path, in chunks on the kernels' worker threads; 3: the numpy one, in this thread.
    data = make_image_folder(tmp_path / "d", classes=("coat", "pullover"), n_per_class=20, size=SIZE)
    few = make_image_folder(tmp_path / "few", classes=("coat",), n_per_class=3, size=SIZE)
    for inputs in ([few], [data]):
        done = _cnncli("predict", "-m", model, "--no-cache", *inputs)
        _refused_as_bad_weights(done, "huge.safetensors")
        assert body(done.stdout) == []  # the header only: no row with nan in it
    done = _cnncli("predict", "-m", model, "--no-cache", "--format", "jsonl", few)
    _refused_as_bad_weights(done, "huge.safetensors")
    assert done.stdout == ""
    ledger = tmp_path / "l.sqlite"
    done = _cnncli("predict", "-m", model, "--no-cache", "--ledger", ledger, few)
    _refused_as_bad_weights(done, "huge.safetensors")
    assert sqlite3.connect(ledger).execute("SELECT count(*) FROM results").fetchone() == (0,)
    done = _cnncli("eval", data, "-m", model, "--no-cache")
    _refused_as_bad_weights(done, "huge.safetensors")


def _numba_cache_run(tmp_path):
    """(predict's arguments, its environment with a fresh NUMBA_CACHE_DIR, the cache folder, the first run) after a
    first predict that fills the cache: 12 images take the compiled path; one dense layer, few kernels."""
    data, _ = world(tmp_path, n_per_class=6, bad=0)
    model = tmp_path / "fc.safetensors"
    modelfile.save(model, modelfile.Classifier(Model("fc", (1, 16, 16), 2, seed=0), ["cat", "dog"], "gray",
                                               [0.5], [0.25]))
    cache = tmp_path / "numba"
    env = child_env(NUMBA_CACHE_DIR=str(cache))
    args = ("predict", "-m", model, "--no-cache", data)
    first = _cnncli(*args, env=env)
    assert first.returncode == 0, first.stderr
    return args, env, cache, first


def test_a_damaged_numba_cache_is_compiled_again(tmp_path):
    args, env, cache, first = _numba_cache_run(tmp_path)
    data_files, index_files = sorted(cache.rglob("*.nbc")), sorted(cache.rglob("*.nbi"))
    assert data_files and index_files
    sizes = {p: p.stat().st_size for p in data_files}
    for p in data_files:  # a copy or a full disk cut them short
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    again = _cnncli(*args, env=env)
    assert (again.returncode, again.stdout, again.stderr) == (0, first.stdout, first.stderr)
    assert all(p.stat().st_size != sizes[p] // 2 for p in data_files)  # compiled again and rewritten
    for p in index_files:
        p.write_bytes(b"junk, not a pickle")
    again = _cnncli(*args, env=env)
    assert (again.returncode, again.stdout, again.stderr) == (0, first.stdout, first.stderr)
    assert all(p.read_bytes() != b"junk, not a pickle" for p in index_files)


@pytest.mark.parametrize("plant", ["fifo", "zero", "directory"])
def test_a_planted_numba_cache_entry_is_a_miss_never_a_hang_or_a_memory_blowup(tmp_path, plant):
    """A FIFO in place of a cached kernel blocked the read past SIGTERM; a symlink to /dev/zero was read until the
    machine ran out of memory; a directory gave exit 70. Each is now a cache miss: compiled again, same output."""
    args, env, cache, first = _numba_cache_run(tmp_path)
    entries = sorted(cache.rglob("*.nbc"))  # the kernels' data files; their index still names them
    assert entries
    for p in entries:
        p.unlink()
        if plant == "fifo":
            os.mkfifo(p)
        elif plant == "zero":
            p.symlink_to("/dev/zero")
        else:
            p.mkdir()
    # The child's address space is capped, so that reading /dev/zero would fail there, not exhaust the machine;
    # it writes its peak resident memory to a file at exit: an entry read until the cap shows up there.
    peak = tmp_path / "peak_kb"
    script = ("import atexit, resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
              f"atexit.register(lambda: open({str(peak)!r}, 'w').write("
              "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
              "from cnncli.commands.cli import main\n"
              "main(sys.argv[1:])\n")
    again = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env,
                           timeout=240)
    assert (again.returncode, again.stdout, again.stderr) == (0, first.stdout, first.stderr)
    assert int(peak.read_text()) < 1_000_000  # KB: a normal run of this size peaks at a few hundred MB


# multiprocessing's semaphores fail as they do with /dev/shm mounted read-only (EROFS), then predict runs.
NO_SEMAPHORES = """
import errno, sys
import multiprocessing.synchronize as synchronize
def refuse(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")
synchronize.SemLock.__init__ = refuse
from cnncli.commands.cli import main
main(sys.argv[1:])
"""


def test_predict_decodes_in_threads_when_worker_processes_cannot_be_made(tmp_path):
    data, model = world(tmp_path, n_per_class=4, bad=1)
    # A full first batch (4 of 9 inputs) makes a long run, which decodes in worker processes.
    args = ["predict", "-m", str(model), "--no-cache", "--batch-size", "4", str(data)]
    normal = _cnncli(*args)
    assert normal.returncode == 1, normal.stderr  # the broken file's error row
    done = subprocess.run([sys.executable, "-c", NO_SEMAPHORES, *args], capture_output=True, text=True,
                          env=child_env(), timeout=300)
    assert (done.returncode, done.stdout) == (1, normal.stdout) and len(body(done.stdout)) == 9

    def messages(err):  # the summary line's rate and seconds differ from run to run
        return [line for line in err.splitlines() if not line.startswith("cnncli: predict:")]

    assert messages(done.stderr) == messages(normal.stderr) and len(messages(done.stderr)) == 1, done.stderr


def test_a_dangling_ledger_symlink_is_refused_and_nothing_is_created(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=1, bad=0)
    target = tmp_path / "elsewhere" / "created-through-the-link.sqlite"
    target.parent.mkdir()
    link = tmp_path / "l.sqlite"
    link.symlink_to(target)
    code, out, err = run_main(["predict", "-m", model, "--ledger", link, data], capsys)
    assert code == 73, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(link) in lines[0] and "symlink" in lines[0], err
    assert out == "" and os.listdir(target.parent) == [] and link.is_symlink()


def test_sort_into_inside_an_input_folder_is_not_scored_again(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=3, bad=0)
    sorted_dir = data / "sorted"
    args = ["predict", "-m", model, "--no-cache", data, "--sort-into", sorted_dir]
    code, first, _ = run_main(args, capsys)
    assert code == 0 and len(body(first)) == 6
    links = sorted(Path(d, f) for d, _, fs in os.walk(sorted_dir) for f in fs)
    assert len(links) == 6
    code, again, _ = run_main(args, capsys)
    assert code == 0 and again == first  # not 12 rows: the sorted links are outputs, not inputs
    assert sorted(Path(d, f) for d, _, fs in os.walk(sorted_dir) for f in fs) == links
    code, inside, _ = run_main(["predict", "-m", model, "--no-cache", sorted_dir], capsys)
    assert code == 0 and len(body(inside)) == 6  # named itself, the folder is an input like any other
