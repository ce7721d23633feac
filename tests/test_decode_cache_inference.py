"""eval and batch predict read and fill the decode cache train uses (store/decode_cache.py, README "Images"):
a second run reads its images from the cache and prints byte for byte what a run without it prints; a damaged
entry is decoded again, never used; --no-cache and short predict runs (at most 8 inputs) touch nothing, and a
one-image predict does not even import the cache. predict's long runs decode in worker processes: the cache
works there too.

Through the real commands (in-process main for eval, `python -m cnncli` children for predict); conftest points
CNNCLI_CACHE_DIR at a fresh folder per test. The tests prove that an entry is READ by planting a well-formed
entry (right key, right checksum) with other pixels: the output changes. Nobody but the cache's owner can do that
(the folder is private), and it shows the run took the pixels from the cache instead of decoding.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path


from cnncli.engine.model import Model
from cnncli.store import decode_cache, modelfile
from conftest import make_image_folder
from robust_helpers import child_env, run_child, run_main

N_TEST = 12  # 2 classes x 6 test images


def _world(tmp_path, ext=".jpg"):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=40, mode="RGB", ext=ext, split=True, n_test=6)
    model = tmp_path / "m.safetensors"
    modelfile.save(model, modelfile.Classifier(Model("tiny", (3, 16, 16), 2, seed=1), classes=["cat", "dog"],
                                               color="rgb", mean=[0.5] * 3, std=[0.25] * 3))
    return data, model


def _entries():
    return sorted(p for p in Path(os.environ["CNNCLI_CACHE_DIR"]).rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def _plant_other_pixels(entry):
    """Rewrite `entry` as a well-formed entry of the same key holding the inverted pixels."""
    blob = entry.read_bytes()
    head = decode_cache._HEAD
    magic, key, c, h, w, _ = head.unpack_from(blob)
    pixels = bytes(255 - b for b in blob[head.size:])
    entry.write_bytes(head.pack(magic, key, c, h, w, hashlib.sha256(pixels).digest()) + pixels)


def _damage(entries):
    flipped, cut, emptied = entries[:3]
    blob = bytearray(flipped.read_bytes())
    blob[-3] ^= 0x10  # one pixel: the checksum fails
    flipped.write_bytes(bytes(blob))
    cut.write_bytes(cut.read_bytes()[:-5])
    emptied.write_bytes(b"")


def _eval(data, model, capsys, *extra):
    code, out, err = run_main(["eval", data, "-m", model, "--format", "json", *extra], capsys)
    assert code == 0 and err == "", err  # the cache says nothing on eval's stderr
    return out


def test_eval_fills_the_cache_and_a_second_run_prints_the_same_bytes(tmp_path, capsys):
    data, model = _world(tmp_path)
    first = _eval(data, model, capsys)
    entries = _entries()
    assert len(entries) == N_TEST  # eval scores test/: one entry per image
    assert _eval(data, model, capsys) == first
    assert _eval(data, model, capsys, "--no-cache") == first
    for e in entries:  # the second run reads them: other pixels in a valid entry change the figures
        _plant_other_pixels(e)
    assert _eval(data, model, capsys) != first
    assert _eval(data, model, capsys, "--no-cache") == first


def test_eval_decodes_a_damaged_entry_again_and_rewrites_it(tmp_path, capsys):
    data, model = _world(tmp_path)
    first = _eval(data, model, capsys)
    entries = _entries()
    _damage(entries)
    assert _eval(data, model, capsys) == first
    for e in entries:  # every entry is whole again (rewritten), so planting still changes the output
        _plant_other_pixels(e)
    assert _eval(data, model, capsys) != first


def test_eval_no_cache_writes_nothing_and_a_bad_size_setting_is_a_usage_error(tmp_path, capsys, monkeypatch):
    data, model = _world(tmp_path)
    _eval(data, model, capsys, "--no-cache")
    assert _entries() == []
    monkeypatch.setenv("CNNCLI_CACHE_SIZE", "lots")
    code, out, err = run_main(["eval", data, "-m", model], capsys)
    assert code == 2 and out == "" and "CNNCLI_CACHE_SIZE: expected bytes" in err.splitlines()[0]
    monkeypatch.setenv("CNNCLI_CACHE_SIZE", "0")  # 0 turns it off
    _eval(data, model, capsys)
    assert _entries() == []


def _predict(inputs, model, tmp_path, *extra):
    code, out, err = run_child(["predict", *inputs, "-m", model, "--all-probs", "--format", "tsv", *extra],
                               tmp_path, env=child_env())
    assert code == 0 and b"cache" not in err, err  # the cache says nothing on predict's stderr
    return out


def test_batch_predict_in_threads_and_in_worker_processes_reads_the_same_entries(tmp_path):
    data, model = _world(tmp_path)
    test = data / "test"
    plain = _predict([test], model, tmp_path, "--no-cache")
    assert _entries() == []
    assert _predict([test], model, tmp_path) == plain  # 12 inputs < a batch of 256: decoded in threads
    entries = _entries()
    assert len(entries) == N_TEST
    # a full first batch decodes in 2 worker processes, each opening the cache itself
    assert _predict([test], model, tmp_path, "--batch-size", "10") == plain
    for e in entries:
        _plant_other_pixels(e)
    assert _predict([test], model, tmp_path, "--batch-size", "10") != plain
    assert _predict([test], model, tmp_path) != plain
    assert _predict([test], model, tmp_path, "--no-cache") == plain


def test_batch_predict_decodes_damaged_entries_again(tmp_path):
    data, model = _world(tmp_path)
    test = data / "test"
    plain = _predict([test], model, tmp_path, "--batch-size", "10")  # worker processes write the entries
    entries = _entries()
    assert len(entries) == N_TEST
    _damage(entries)
    assert _predict([test], model, tmp_path, "--batch-size", "10") == plain
    assert _predict([test], model, tmp_path) == plain


def test_eval_and_predict_share_entries(tmp_path, capsys):
    data, model = _world(tmp_path)
    _eval(data, model, capsys)
    entries = _entries()
    plain = _predict([data / "test"], model, tmp_path)
    assert _entries() == entries  # same key (content, decode settings, version): nothing new written
    for e in entries:
        _plant_other_pixels(e)
    assert _predict([data / "test"], model, tmp_path) != plain


PROBE = ("import sys\nfrom cnncli.commands.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
         "print('EXIT', code, 'cnncli.store.decode_cache' in sys.modules, file=sys.stderr)")


def test_a_short_predict_run_neither_imports_nor_fills_the_cache(tmp_path):
    data, model = _world(tmp_path)
    images = sorted((data / "test").rglob("*.jpg"))
    for inputs in (images[:1], images[:8]):
        res = subprocess.run([sys.executable, "-c", PROBE, "predict", *map(str, inputs), "-m", str(model)],
                             capture_output=True, timeout=120, env=child_env(), cwd=tmp_path)
        assert res.stderr.decode().strip().splitlines()[-1] == "EXIT 0 False", res.stderr
        assert len(res.stdout.splitlines()) == len(inputs) + 1  # header and one row each
    assert _entries() == []
    res = subprocess.run([sys.executable, "-c", PROBE, "predict", *map(str, images[:9]), "-m", str(model)],
                         capture_output=True, timeout=120, env=child_env(), cwd=tmp_path)
    assert res.stderr.decode().strip().splitlines()[-1] == "EXIT 0 True", res.stderr
    assert len(_entries()) == 9


def test_predict_reads_a_fifo_among_many_inputs_without_blocking(tmp_path):
    data, model = _world(tmp_path)
    images = sorted((data / "test").rglob("*.jpg"))
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # the cache reads a whole file to key it: a FIFO is decoded directly instead (no hang)
    code, out, err = run_child(["predict", *images, fifo, "-m", model, "--format", "tsv"], tmp_path,
                               env=child_env(), timeout=60)
    assert code == 1 and b"pipe.jpg: empty file" in err
    assert len(out.splitlines()) == len(images) + 2
    assert all(b"\tcat\t" in ln or b"\tdog\t" in ln for ln in out.splitlines()[1:-1])


def test_predict_refuses_a_bad_size_setting_before_any_row(tmp_path):
    data, model = _world(tmp_path)
    image = next((data / "test").rglob("*.jpg"))
    code, out, err = run_child(["predict", image, "-m", model, "--format", "tsv"], tmp_path,
                               env=child_env(CNNCLI_CACHE_SIZE="2 gigs"))
    assert code == 2 and out == b"" and b"CNNCLI_CACHE_SIZE: expected bytes" in err.splitlines()[0]


def test_an_unwritable_cache_folder_changes_nothing_in_eval(tmp_path, capsys, monkeypatch):
    data, model = _world(tmp_path)
    first = _eval(data, model, capsys, "--no-cache")
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"x")
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(blocker / "cache"))  # below a file: cannot be made, even by root
    assert _eval(data, model, capsys) == first  # and nothing on stderr (_eval checks)


def test_tiny_images_are_decoded_directly_and_never_stored(tmp_path, capsys):
    # at most 32x32 source pixels (Fashion-MNIST's 28x28 PNGs): decoding costs what reading an entry costs
    for side, stored in ((32, False), (33, True)):
        data = make_image_folder(tmp_path / f"d{side}", n_per_class=3, size=side, split=True, n_test=3)
        model = tmp_path / f"m{side}.safetensors"
        modelfile.save(model, modelfile.Classifier(Model("tiny", (1, 16, 16), 2, seed=1), classes=["cat", "dog"],
                                                   color="gray", mean=[0.5], std=[0.25]))
        first = _eval(data, model, capsys)
        assert len(_entries()) == (6 if stored else 0)
        assert _eval(data, model, capsys) == first == _eval(data, model, capsys, "--no-cache")
        for e in _entries():
            e.unlink()
    # train too: its second run on tiny images decodes them all again
    data = make_image_folder(tmp_path / "train28", n_per_class=4, size=28)
    for _ in range(2):
        code, _, err = run_main(["train", data, "-o", tmp_path / "t.safetensors", "--overwrite", "--arch", "tiny",
                                 "--epochs", "1", "--size", "16"], capsys)
        assert code == 0 and "decoded 8, 0 from cache" in err, err
    assert _entries() == []


def _used(entries):
    return sum(max(p.stat().st_size, p.stat().st_blocks * 512) for p in entries)


def test_eval_and_predict_keep_the_cache_under_its_size_cap(tmp_path, capsys, monkeypatch):
    data, model = _world(tmp_path)
    monkeypatch.setenv("CNNCLI_CACHE_SIZE", "20K")
    first = _eval(data, model, capsys)
    entries = _entries()
    assert 0 < len(entries) < N_TEST and _used(entries) <= 20 * 1024
    assert _eval(data, model, capsys) == first  # the trimmed ones decoded again, and trimmed again
    assert _used(_entries()) <= 20 * 1024
    for e in _entries():
        e.unlink()
    _predict([data / "test"], model, tmp_path, "--batch-size", "10")  # written by worker processes, trimmed here
    entries = _entries()
    assert 0 < len(entries) < N_TEST and _used(entries) <= 20 * 1024
