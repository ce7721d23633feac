"""train's persistent decode cache (store/decode_cache.py, README "Images"): a second run decodes nothing and
trains the same weights; other settings or other bytes miss; a damaged entry is decoded again, never used;
the size cap holds; --no-cache and an unwritable folder write nothing and still train.

Through the real command (cnncli.commands.cli.main in-process); conftest points CNNCLI_CACHE_DIR at a fresh
folder per test.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from cnncli.store import decode_cache, weights
from conftest import make_image_folder
from robust_helpers import run_main

ARGS = ["--arch", "tiny", "--epochs", "1", "--batch-size", "4", "--size", "16", "--seed", "3"]
N_IMAGES = 24  # 2 classes x 12


def _data(tmp_path):
    return make_image_folder(tmp_path / "data", n_per_class=12, size=40, mode="RGB", ext=".jpg")


def _train(data, out, capsys, *extra):
    code, _, err = run_main(["train", data, "-o", out, "--overwrite", *ARGS, *extra], capsys)
    assert code == 0, err
    found = re.search(r"decoded (\d+), (\d+) from cache", err)
    return (int(found[1]), int(found[2])) if found else None, err


def _tensors(path):
    return {k: v.tobytes() for k, v in weights.load(path)[0].items()}


def _entries(root):
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith("."))


def test_a_second_run_decodes_nothing_and_trains_the_same_weights(tmp_path, capsys):
    data = _data(tmp_path)
    counts, err = _train(data, tmp_path / "a.safetensors", capsys)
    assert counts == (N_IMAGES, 0)
    assert f"decode cache {os.environ['CNNCLI_CACHE_DIR']}" in err
    assert len(_entries(os.environ["CNNCLI_CACHE_DIR"])) == N_IMAGES
    # other hyperparameters, same decode settings: every image from the cache
    counts, _ = _train(data, tmp_path / "b.safetensors", capsys)
    assert counts == (0, N_IMAGES)
    counts, _ = _train(data, tmp_path / "c.safetensors", capsys, "--no-cache")
    assert counts is None
    assert _tensors(tmp_path / "a.safetensors") == _tensors(tmp_path / "b.safetensors") \
        == _tensors(tmp_path / "c.safetensors")


def test_the_default_folder_is_under_xdg_cache_home_or_home(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    monkeypatch.delenv("CNNCLI_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _train(data, tmp_path / "a.safetensors", capsys)
    assert len(_entries(tmp_path / "xdg" / "cnncli" / "decoded")) == N_IMAGES
    monkeypatch.delenv("XDG_CACHE_HOME")
    _train(data, tmp_path / "a.safetensors", capsys)
    assert len(_entries(tmp_path / "home" / ".cache" / "cnncli" / "decoded")) == N_IMAGES
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # invalid by the XDG spec: ignored, never the cwd
    monkeypatch.chdir(tmp_path)
    assert _train(data, tmp_path / "a.safetensors", capsys)[0] == (0, N_IMAGES)  # read from ~/.cache
    assert not (tmp_path / "relative").exists()


@pytest.mark.parametrize("change", [["--size", "12"], ["--resize", "squash"], ["--color", "gray"]])
def test_other_decode_settings_miss(tmp_path, capsys, change):
    data = _data(tmp_path)
    _train(data, tmp_path / "a.safetensors", capsys)
    counts, _ = _train(data, tmp_path / "b.safetensors", capsys, *change)
    assert counts == (N_IMAGES, 0)


def test_an_edited_file_misses_and_its_new_pixels_are_used(tmp_path, capsys):
    data = _data(tmp_path)
    _train(data, tmp_path / "a.safetensors", capsys)
    victim = sorted((data / "cat").iterdir())[0]
    other = sorted((data / "dog").iterdir())[0]
    victim.write_bytes(other.read_bytes())  # same name, other picture
    counts, _ = _train(data, tmp_path / "b.safetensors", capsys)
    assert counts == (0, N_IMAGES)  # its new bytes are another cached image's bytes: a hit on that entry
    victim.write_bytes(victim.read_bytes() + b"\0")  # bytes nobody cached yet
    counts, _ = _train(data, tmp_path / "c.safetensors", capsys)
    assert counts == (1, N_IMAGES - 1)
    _train(data, tmp_path / "d.safetensors", capsys, "--no-cache")
    assert _tensors(tmp_path / "c.safetensors") == _tensors(tmp_path / "d.safetensors")


def test_a_damaged_entry_is_decoded_again_and_gives_the_same_weights(tmp_path, capsys):
    data = _data(tmp_path)
    _train(data, tmp_path / "a.safetensors", capsys)
    entries = _entries(os.environ["CNNCLI_CACHE_DIR"])
    flipped, cut, emptied, foreign = entries[:4]
    blob = bytearray(flipped.read_bytes())
    blob[-5] ^= 0x40  # one pixel changed: the pixel checksum fails
    flipped.write_bytes(bytes(blob))
    cut.write_bytes(cut.read_bytes()[:-7])  # a partial write
    emptied.write_bytes(b"")
    foreign.write_bytes(entries[5].read_bytes())  # a whole, valid entry of another key
    counts, _ = _train(data, tmp_path / "b.safetensors", capsys)
    assert counts == (4, N_IMAGES - 4)
    assert _tensors(tmp_path / "a.safetensors") == _tensors(tmp_path / "b.safetensors")
    assert _train(data, tmp_path / "c.safetensors", capsys)[0] == (0, N_IMAGES)  # the entries were rewritten


def test_the_size_cap_holds(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    monkeypatch.setenv("CNNCLI_CACHE_SIZE", "20K")
    _train(data, tmp_path / "a.safetensors", capsys)
    entries = _entries(os.environ["CNNCLI_CACHE_DIR"])
    used = sum(max(p.stat().st_size, p.stat().st_blocks * 512) for p in entries)
    assert 0 < len(entries) < N_IMAGES and used <= 20 * 1024
    counts, _ = _train(data, tmp_path / "b.safetensors", capsys)
    assert counts[0] > 0 and counts[1] == len(entries)
    assert _tensors(tmp_path / "a.safetensors") == _tensors(tmp_path / "b.safetensors")


def test_trim_removes_the_least_recently_used_entries_first(tmp_path):
    cache = decode_cache.DecodeCache(tmp_path / "c", cap=10**9)
    keys = [bytes([i]) * 32 for i in range(4)]
    for i, k in enumerate(keys):
        cache.put(k, np.full((3, 8, 8), i, np.uint8))
    paths = [cache._path(k) for k in keys]
    for age, p in zip((400, 100, 300, 200), paths):
        os.utime(p, (1e9 - age, 1e9 - age))
    cache.get(keys[0])  # a hit makes the oldest one the newest
    each = max(paths[0].stat().st_size, paths[0].stat().st_blocks * 512)
    cache.cap = 2 * each
    cache.trim()
    assert [p.exists() for p in paths] == [True, True, False, False]
    assert np.array_equal(cache.get(keys[1]), np.full((3, 8, 8), 1, np.uint8))


def test_no_cache_writes_nothing(tmp_path, capsys):
    data = _data(tmp_path)
    counts, err = _train(data, tmp_path / "a.safetensors", capsys, "--no-cache")
    assert "decode cache off (--no-cache)" in err and counts is None
    assert _entries(os.environ["CNNCLI_CACHE_DIR"]) == []


def test_an_unwritable_cache_folder_is_one_info_line_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"x")
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(blocker / "cache"))  # below a file: cannot be made, even by root
    counts, err = _train(data, tmp_path / "a.safetensors", capsys)
    assert counts == (N_IMAGES, 0)
    assert len(re.findall("decode cache not written", err)) == 1 and "Traceback" not in err
    assert blocker.read_bytes() == b"x"


def test_a_bad_cache_size_is_a_usage_error(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    monkeypatch.setenv("CNNCLI_CACHE_SIZE", "lots")
    code, _, err = run_main(["train", data, "-o", tmp_path / "a.safetensors", *ARGS], capsys)
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "CNNCLI_CACHE_SIZE" in line] == [
        "Usage error: CNNCLI_CACHE_SIZE: expected bytes with an optional K, M or G suffix (e.g. 2G), got 'lots'"]


@pytest.mark.parametrize("text,expected", [("2G", 2 * 1024**3), ("500M", 500 * 1024**2), ("65536", 65536),
                                           ("1.5k", 1536), ("0", 0), (None, decode_cache.DEFAULT_CAP)])
def test_cache_size_spellings(text, expected):
    assert decode_cache.parse_bytes(text) == expected


def test_resume_may_add_no_cache_and_ends_bit_identical(tmp_path, capsys, monkeypatch):
    from train_helpers import interrupt_after_reads

    data = _data(tmp_path)
    ref, out = tmp_path / "ref.safetensors", tmp_path / "m.safetensors"
    _train(data, ref, capsys, "--epochs", "2")
    with interrupt_after_reads(monkeypatch, 3):
        code, _, err = run_main(["train", data, "-o", out, *ARGS, "--epochs", "2"], capsys)
    assert code == 130, err
    code, _, err = run_main(["train", data, "-o", out, "--resume", "--no-cache"], capsys)
    assert code == 0 and "decode cache off (--no-cache)" in err, err
    assert _tensors(out) == _tensors(ref)


def test_the_cache_folder_is_private_and_the_umask_survives_the_decode_threads(tmp_path, capsys, monkeypatch):
    data = _data(tmp_path)
    root = tmp_path / "new" / "cache"
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(root))
    old = os.umask(0o077)
    try:
        _train(data, tmp_path / "a.safetensors", capsys)
        assert os.umask(0o077) == 0o077  # two threads writing entries query the umask by setting it
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in root.iterdir()} == {0o700}


@pytest.mark.parametrize("plant", ["symlink to /dev/zero", "fifo", "folder", "huge file"])
def test_a_planted_entry_never_blocks_reads_without_end_or_fails_the_run(tmp_path, capsys, plant):
    data = _data(tmp_path)
    _train(data, tmp_path / "a.safetensors", capsys)
    victim = _entries(os.environ["CNNCLI_CACHE_DIR"])[0]
    victim.unlink()
    if plant == "symlink to /dev/zero":
        victim.symlink_to("/dev/zero")
    elif plant == "fifo":
        os.mkfifo(victim)
    elif plant == "folder":
        victim.mkdir()
    else:
        with open(victim, "wb") as f:
            f.truncate(decode_cache.MAX_ENTRY_BYTES + 1)  # sparse: takes no disk
    counts, _ = _train(data, tmp_path / "b.safetensors", capsys)  # returns: no hang, no memory blow-up
    assert counts == (1, N_IMAGES - 1)
    assert _tensors(tmp_path / "a.safetensors") == _tensors(tmp_path / "b.safetensors")


def test_trim_removes_only_cache_entries(tmp_path):
    root = tmp_path / "cache"
    cache = decode_cache.DecodeCache(root, cap=0)
    cache.put(b"\x01" * 32, np.zeros((1, 4, 4), np.uint8))
    lookalike = root / "ab" / ("c" * 62)  # named like an entry, but another program's file
    lookalike.parent.mkdir()
    lookalike.write_bytes(b"precious")
    cache.trim()
    assert lookalike.read_bytes() == b"precious"
    assert not (root / "01" / ("01" * 31)).exists()
