"""`cnncli train` under faults: bad images, strict mode, divergence, write failures, signals, concurrent runs.

Each test runs the real command (`python -m cnncli` children, or cnncli.commands.cli.main in-process where no
signal or resource limit is involved) on tiny generated folders, and checks what the issue promises.
"""

import os
import resource
import signal
import time

import numpy as np
import pytest
from PIL import Image

from cnncli.store import weights
from badfiles import BAD_FILES as BAD_IMAGES
from badfiles import png_bytes as _png
from conftest import make_image_folder
from robust_helpers import FAST, cnncli_child, leftovers, run_child, run_main, tree_hashes

# ---------------------------------------------------------------- bad images


# names that must survive: spaces, newline, tab, bytes that are not UTF-8
ODD_NAMES = [b"with space.png", b"new\nline.png", b"tab\there.png", b"latin1-\xe9\xff.png"]


def _esc(name: bytes) -> str:
    """How a name appears in messages and bad-files.tsv: \\n, \\t escaped, non-UTF-8 bytes as \\xNN."""
    text = name.decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\t", "\\t")


def test_bad_images_are_skipped_reported_listed_and_never_modified(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=8, size=12)
    for name, (make, _) in BAD_IMAGES.items():
        (data / "cat" / name).write_bytes(make())
    frames = [Image.fromarray(np.full((12, 12), v, np.uint8)) for v in (30, 220)]
    frames[0].save(data / "dog" / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(data / "cat"), name), "wb") as f:
            f.write(_png(np.full((12, 12), 200, np.uint8)))
    before = tree_hashes(data)
    out_path = tmp_path / "m.safetensors"

    # stdout and stderr are pipes (no TTY), TERM claims colour: still no escape codes anywhere
    code, out, err = run_child(["train", data, "-o", out_path, *FAST, "--epochs", "1", "--val-split", "0"], tmp_path)
    text = err.decode("utf-8")
    assert code == 0, text
    assert out == b""
    assert b"\x1b" not in err
    assert tree_hashes(data) == before  # no user file was touched
    for name, (_, reason) in BAD_IMAGES.items():
        line = next((ln for ln in text.splitlines() if f"cat/{name}:" in ln), None)
        assert line is not None and line.startswith("warning: skipped") and reason in line, (name, text)
    assert "anim.gif" not in text  # used (first frame), not skipped
    # 8 generated + 4 odd names in cat, 8 + the GIF in dog
    assert f"images per class: cat 12, dog 9; skipped files: {len(BAD_IMAGES)}" in text
    rows = (tmp_path / "m.bad-files.tsv").read_bytes().decode("utf-8").splitlines()
    assert sorted(r.split("\t")[0].rsplit("/", 1)[-1] for r in rows) == sorted(BAD_IMAGES)
    assert all(len(r.split("\t")) == 2 for r in rows)
    weights.load(out_path)


def test_odd_file_names_in_bad_file_reports(tmp_path):
    """A bad file whose name has a newline, tab or non-UTF-8 bytes: one escaped line in stderr and the TSV."""
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(data / "dog"), name), "wb") as f:
            f.write(b"not an image at all")
    code, out, err = run_child(["train", data, "-o", tmp_path / "m.safetensors", *FAST, "--epochs", "1",
                                "--val-split", "0"], tmp_path)
    text = err.decode("utf-8")  # must be valid UTF-8 even though a name is not
    assert code == 0 and out == b"", text
    rows = (tmp_path / "m.bad-files.tsv").read_bytes().decode("utf-8").splitlines()
    assert len(rows) == len(ODD_NAMES)
    for name in ODD_NAMES:
        assert f"warning: skipped {data}/dog/{_esc(name)}: not an image" in text
        assert any(r.startswith(f"{data}/dog/{_esc(name)}\t") for r in rows)


def test_non_utf8_name_with_automatic_validation_split(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    with open(os.path.join(os.fsencode(data / "cat"), b"latin1-\xe9.png"), "wb") as f:
        f.write(_png(np.full((8, 8), 200, np.uint8)))
    code, out, err = run_main(["train", str(data), "-o", str(tmp_path / "m.safetensors"), *FAST, "--epochs", "1"],
                              capsys)
    assert code == 0, err


def test_strict_makes_a_bad_file_fatal(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    (data / "dog" / "broken.png").write_bytes(b"")
    target = tmp_path / "m.safetensors"
    code, out, err = run_main(["train", str(data), "-o", str(target), *FAST, "--epochs", "1", "--strict"], capsys)
    assert code == 65, err
    assert out == ""
    assert f"{data}/dog/broken.png: empty file" in err
    assert "epoch" not in err and not target.exists()
    assert (data / "dog" / "broken.png").read_bytes() == b""


# ---------------------------------------------------------------- numbers


def test_divergence_stops_with_a_hint_and_writes_no_weights(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=8, size=8)
    target = tmp_path / "m.safetensors"
    code, out, err = run_main(["train", str(data), "-o", str(target), "--arch", "tiny", "--batch-size", "4",
                               "--epochs", "3", "--optimizer", "sgd", "--lr", "1e6"], capsys)
    assert code == 4, err
    assert out == ""
    assert "diverged" in err and "lower learning rate" in err
    assert "Warning" not in err  # no numpy overflow noise, just the message
    assert not target.exists()
    for f in tmp_path.glob("*.safetensors"):  # a checkpoint from a finished epoch, if any, is finite
        tensors, _ = weights.load(f)
        assert all(np.isfinite(t).all() for t in tensors.values())
    assert leftovers(tmp_path) == []


def _load(path):
    tensors, meta = weights.load(path)
    return tensors


def _assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


def test_same_data_options_and_seed_give_bit_identical_weights_with_clip_norm(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    args = [*FAST, "--epochs", "2", "--augment", "--clip-norm", "0.5"]
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        code, out, err = run_main(["train", str(data), "-o", str(tmp_path / f"{name}.safetensors"), *args,
                                   "--seed", seed], capsys)
        assert code == 0 and out == "", err
    a, b = _load(tmp_path / "a.safetensors"), _load(tmp_path / "b.safetensors")
    _assert_same_tensors(a, b)
    # the seed matters (the comparison above is not trivially true)
    c = _load(tmp_path / "c.safetensors")
    assert any(a[k].tobytes() != c[k].tobytes() for k in a)


# ---------------------------------------------------------------- writing files


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_while_saving_is_exit_74_keeping_the_old_weights(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=12)
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"previous weights")
    # fc2048 makes the weights about 1.6 MB (and the checkpoint more); the images are a few hundred bytes
    code, out, err = run_child(["train", data, "-o", target, "--arch", "conv8k3-relu-pool2-fc2048-relu-fc",
                                "--epochs", "1", "--overwrite"], tmp_path, preexec_fn=_limit_file_size(256 * 1024))
    text = err.decode()
    assert code == 74, text
    assert out == b""
    assert "cannot write: file too large" in text and "Traceback" not in text
    assert len([ln for ln in text.splitlines() if "error" in ln]) == 1
    assert target.read_bytes() == b"previous weights"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- signals and concurrent runs

SIG_ARGS = ["--arch", "tiny", "--batch-size", "4", "--epochs", "100", "--seed", "3"]


@pytest.fixture(scope="module")
def sig_data(tmp_path_factory):
    """A folder big enough that 30 epochs take a few seconds, and the weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("sig")
    data = make_image_folder(root / "data", n_per_class=32, size=12)
    ref = root / "ref.safetensors"
    code, out, err = run_child(["train", data, "-o", ref, *SIG_ARGS], root)
    assert code == 0, err.decode()
    return data, _load(ref)


def _start_and_wait_for_first_epoch(args, cwd):
    proc = cnncli_child(args, cwd)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if not line or line.startswith(b"epoch 1/"):
            break
    assert b"epoch 1/" in seen and proc.poll() is None, seen.decode()
    return proc, seen


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_leaves_a_checkpoint_and_resume_matches_an_uninterrupted_run(sig_data, tmp_path, capsys, sig, code):
    data, reference = sig_data
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"the old model")
    proc, _ = _start_and_wait_for_first_epoch(["train", data, "-o", target, *SIG_ARGS, "--overwrite"], tmp_path)
    os.kill(proc.pid, signal.SIGSTOP)  # paused, it keeps holding the lock however fast the epochs are

    # meanwhile, a second run aimed at the same output is refused at once, naming the holder
    t0 = time.monotonic()
    locked, out, err = run_main(["train", str(data), "-o", str(target), *SIG_ARGS, "--overwrite"], capsys)
    assert locked == 75 and out == "", err
    assert f"pid {proc.pid}" in err and time.monotonic() - t0 < 5
    # ... or after --wait seconds
    t0 = time.monotonic()
    locked, _, err = run_main(["train", str(data), "-o", str(target), *SIG_ARGS, "--overwrite", "--wait", "0.5"],
                              capsys)
    assert locked == 75 and time.monotonic() - t0 >= 0.5, err

    assert proc.poll() is None, "training finished before the signal: make the run longer"
    proc.send_signal(sig)
    os.kill(proc.pid, signal.SIGCONT)
    _, rest = proc.communicate(timeout=60)
    text = rest.decode()
    assert proc.returncode == code, text
    assert "--resume" in text
    checkpoint = tmp_path / "m.ckpt.safetensors"
    assert checkpoint.exists()
    assert target.read_bytes() == b"the old model"
    assert leftovers(tmp_path) == []

    resumed, out, err = run_main(["train", str(data), "-o", str(target), "--resume"], capsys)
    assert resumed == 0 and out == "", err
    assert "resuming from" in err
    _assert_same_tensors(_load(target), reference)
    assert not checkpoint.exists()


def test_a_second_signal_stops_at_once_without_saving(sig_data, tmp_path):
    """SIGINT then SIGTERM delivered together: the second one ends the run immediately (exit 143), no final
    checkpoint message, no output. (Two identical signals would be merged by the OS, so the pair differs.)"""
    data, _ = sig_data
    target = tmp_path / "m.safetensors"
    proc, _ = _start_and_wait_for_first_epoch(["train", data, "-o", target, *SIG_ARGS], tmp_path)
    os.kill(proc.pid, signal.SIGSTOP)  # both signals become pending, then arrive together
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGCONT)
    _, rest = proc.communicate(timeout=60)
    text = rest.decode()
    assert proc.returncode == 143, text
    assert time.monotonic() - t0 < 5
    assert "checkpoint saved" not in text and "terminated" in text
    assert "Traceback" not in text
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_resume_without_checkpoint_is_a_usage_error(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    code, out, err = run_main(["train", str(data), "-o", str(tmp_path / "m.safetensors"), "--resume"], capsys)
    assert code == 2 and out == "" and "no checkpoint" in err


def test_a_data_folder_name_with_a_newline_and_an_escape_code_is_escaped_in_every_info_line(tmp_path):
    data = make_image_folder(tmp_path / "in\nside\x1b[31m", n_per_class=6, size=8)
    code, out, err = run_child(["train", data, "-o", tmp_path / "m.safetensors", *FAST, "--epochs", "1"], tmp_path)
    assert code == 0, err
    assert b"\x1b" not in err and b"in\\nside\\x1b[31m" in err
    assert not any(line.startswith(b"side") for line in err.splitlines())  # no line was split by the name
