"""Weight-file and lock security through the real command: planted lock files, outputs that are not regular
files, empty output names. Each test drives cnncli.commands.cli.main (exit-code mapping included)."""

import json
import os
import resource
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from cnncli.engine.model import Model
from cnncli.store import modelfile, weights
from conftest import make_image_folder
from robust_helpers import FAST, child_env, run_main

NOTES = b"the user's notes: never to be truncated\n"


def _tiny_model(path, classes=("cat", "dog"), size=8, seed=0):
    """A valid two-class weight file (untrained: these tests are about files, not accuracy)."""
    clf = modelfile.Classifier(Model("tiny", (1, size, size), len(classes), seed=seed), list(classes), "gray",
                               [0.5], [0.25])
    modelfile.save(path, clf)
    return path


def _one_line_error(err, *words):
    """The error is one line (warnings before it, each on its own line, are allowed) naming every word."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
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


# ---------------------------------------------------------------- weight-file metadata: checksum and ranges


def _meta_strings(path):
    with safetensors.safe_open(str(path), "np") as f:
        return dict(f.metadata())


def _edited(tmp_path, key, edit):
    """A valid model whose stored metadata string `key` is changed by edit(str) -> str, digests left as they were
    (what a hand edit of the file's header does)."""
    good = _tiny_model(tmp_path / "good.safetensors")
    tensors, _ = weights.load(good)
    raw = _meta_strings(good)
    raw[key] = edit(raw[key])
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors.numpy.save(tensors, metadata=raw))
    return path


EDITS = {
    "one digit of preprocess.std": ("preprocess", lambda s: s.replace('"std": [0.25]', '"std": [0.26]')),
    "relu to tanh in the arch": ("arch", lambda s: s.replace("relu", "tanh")),
    "a renamed class": ("classes", lambda s: s.replace('"dog"', '"wolf"')),
}


@pytest.mark.parametrize("command", ["info", "predict", "eval"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_metadata_is_refused_by_the_checksum(tmp_path, capsys, edit, command):
    key, fn = EDITS[edit]
    path = _edited(tmp_path, key, fn)
    assert _meta_strings(path)[key] != _meta_strings(tmp_path / "good.safetensors")[key]  # the edit happened
    data = make_image_folder(tmp_path / "data", n_per_class=2, size=8)
    argv = {"info": ["info", path], "predict": ["predict", data / "cat", "-m", path],
            "eval": ["eval", data, "-m", path]}[command]
    code, out, err = run_main(argv, capsys)
    assert code == 65, err
    assert out == ""
    _one_line_error(err, str(path), "metadata does not match its checksum")


def _saved_with(tmp_path, name="m.safetensors", tensors=None, **changes):
    """A weight file with valid checksums whose metadata has `changes` applied to a valid tiny model's."""
    good = _tiny_model(tmp_path / "good.safetensors")
    good_tensors, meta = weights.load(good)
    meta.update(changes)
    path = tmp_path / name
    weights.save(path, good_tensors if tensors is None else tensors, meta)
    return path


def _pre(**changes):
    return {"resize": modelfile.RESIZE_STORED["crop"], "scale": 1 / 255, "mean": [0.5], "std": [0.25],
            "alpha_background": "white", "exif_transpose": True, **changes}


OUT_OF_RANGE = {
    "std 1e-320": dict(preprocess=_pre(std=[1e-320])),
    "std 0": dict(preprocess=_pre(std=[0.0])),
    "std negative": dict(preprocess=_pre(std=[-0.25])),
    "mean 1e300": dict(preprocess=_pre(mean=[1e300])),
    "mean a string": dict(preprocess=_pre(mean=["0.5"])),
    "scale 1 (not 1/255)": dict(preprocess=_pre(scale=1.0)),
    "resize rule unknown": dict(preprocess=_pre(resize="stretch")),
    "resize rule not a string": dict(preprocess=_pre(resize=["squash"])),
    "threshold true": dict(threshold=True),
    "threshold 1.5": dict(threshold=1.5),
    "threshold -0.1": dict(threshold=-0.1),
    "input 4096 px": dict(input={"channels": 1, "height": 4096, "width": 4096, "color": "gray"}),
    "input 2 px": dict(input={"channels": 1, "height": 2, "width": 2, "color": "gray"}),
    "input not square": dict(input={"channels": 1, "height": 8, "width": 9, "color": "gray"}),
    "gray with 3 channels": dict(input={"channels": 3, "height": 8, "width": 8, "color": "gray"}),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
def test_out_of_range_metadata_is_refused_even_with_valid_checksums(tmp_path, capsys, case):
    path = _saved_with(tmp_path, **OUT_OF_RANGE[case])
    code, out, err = run_main(["info", path], capsys)
    assert code == 65, err
    assert out == ""
    _one_line_error(err, str(path), "invalid metadata")


def test_a_format_1_file_is_refused_as_older(tmp_path, capsys):
    good = _tiny_model(tmp_path / "good.safetensors")
    tensors, _ = weights.load(good)
    raw = _meta_strings(good)
    raw["format_version"] = "1"
    del raw["metadata_sha256"]  # format 1 files had no metadata checksum
    path = tmp_path / "old.safetensors"
    path.write_bytes(safetensors.numpy.save(tensors, metadata=raw))
    code, out, err = run_main(["info", path], capsys)
    assert code == 65 and out == ""
    _one_line_error(err, str(path), "older cnncli (format 1)", "train it again")


# ---------------------------------------------------------------- models beyond the bounds


def _limited_child(args, cwd, gib=3):
    """`python -m cnncli ARGS` with its address space capped, so an attempt to allocate gigabytes fails fast
    (MemoryError, exit 70) instead of swapping the machine."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (gib * 2**30, gib * 2**30))
    proc = subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], cwd=cwd, env=child_env(),
                          capture_output=True, timeout=120, preexec_fn=cap)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _huge(tmp_path, name, arch, channels, side, fc=0):
    """A small file (a few KB, valid checksums) whose metadata describes a model beyond the bounds; its
    tensors are an output layer `layers.{fc}` of 2 x 3 (all pool4096-fc on 3 channels needs: a valid file)."""
    color = "gray" if channels == 1 else "rgb"
    tensors = {f"layers.{fc}.weight": np.zeros((2, 3), np.float32), f"layers.{fc}.bias": np.zeros(2, np.float32)}
    meta = {"arch": arch, "classes": ["cat", "dog"],
            "input": {"channels": channels, "height": side, "width": side, "color": color},
            "preprocess": _pre(mean=[0.5] * channels, std=[0.25] * channels), "train": {}}
    path = tmp_path / name
    weights.save(path, tensors, meta)
    assert path.stat().st_size < 10_000
    return path


HUGE = {
    # (arch, channels, side, what the message names, index of the output layer's tensors in the file)
    "fc65536-fc at 3x4096x4096": ("fc65536-fc", 3, 4096, "input", 0),
    "pool4096-fc at 3x4096x4096 (a valid file)": ("pool4096-fc", 3, 4096, "input", 1),
    "fc65536-fc65536 at 1x28x28": ("fc65536-fc65536-fc", 1, 28, "parameters", 0),
    "conv256k1-pool1024 at 3x1024x1024": ("conv256k1-pool1024-fc", 3, 1024, "activation values per image", 0),
    "pool1024s1p512 at 3x1024x1024 (hours of work)": ("pool1024s1p512-fc", 3, 1024, "multiply-adds per image", 1),
}


@pytest.mark.parametrize("command", ["info", "predict", "eval"])
@pytest.mark.parametrize("case", sorted(HUGE))
def test_a_model_beyond_the_bounds_is_refused_before_allocating(tmp_path, case, command):
    arch, channels, side, what, fc = HUGE[case]
    path = _huge(tmp_path, "m.safetensors", arch, channels, side, fc)
    data = make_image_folder(tmp_path / "data", n_per_class=2, size=8, mode="L" if channels == 1 else "RGB")
    argv = {"info": ["info", path], "predict": ["predict", data / "cat", "-m", path],
            "eval": ["eval", data, "-m", path]}[command]
    code, out, err = _limited_child(argv, tmp_path)
    assert code == 65, err
    assert out == ""
    _one_line_error(err, str(path), what)


def test_tensors_that_do_not_match_the_spec_are_refused(tmp_path, capsys):
    path = _huge(tmp_path, "m.safetensors", "tiny", 1, 8)  # tiny needs conv and fc tensors, the file has others
    code, out, err = run_main(["info", path], capsys)
    assert code == 65 and out == ""
    _one_line_error(err, str(path), "tensors do not match the architecture", "missing layers.3.bias",
                    "layers.0.weight has shape (2, 3)")


def test_train_refuses_an_oversized_arch_as_a_usage_error_before_decoding(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    out_file = tmp_path / "m.safetensors"
    code, out, err = run_main(["train", data, "-o", out_file, "--arch", "fc65536-fc65536", "--epochs", "1"], capsys)
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    assert "--arch" in err and "parameters" in err and "limit" in err
    assert "reading" not in err
    assert not out_file.exists()


# ---------------------------------------------------------------- eval --save-threshold against a replaced model


def test_save_threshold_refuses_when_train_overwrite_replaced_the_model_meanwhile(tmp_path, capsys, monkeypatch):
    """eval picks a threshold on model A; before it gets the lock, a real `train --overwrite` replaces A with B.
    The threshold must not land in B: exit 75, one line, B untouched."""
    from cnncli.store import atomic

    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    model = _tiny_model(tmp_path / "m.safetensors")
    real_acquire = atomic.OutputLock.acquire
    replaced = []

    def train_overwrite_first(self):
        if not replaced:  # the concurrent run: it takes the same lock, writes B, releases
            proc = subprocess.run([sys.executable, "-m", "cnncli", "train", str(data), "-o", str(model), *FAST,
                                   "--epochs", "1", "--overwrite", "-q"], cwd=tmp_path, env=child_env(),
                                  capture_output=True, timeout=120)
            assert proc.returncode == 0, proc.stderr.decode()
            replaced.append(model.read_bytes())
        return real_acquire(self)

    monkeypatch.setattr(atomic.OutputLock, "acquire", train_overwrite_first)
    code, out, err = run_main(["eval", data, "-m", model, "--pick-threshold", "youden", "--save-threshold",
                               "--wait", "30"], capsys)
    assert replaced, "the concurrent train never ran"
    assert code == 75, err
    _one_line_error(err, str(model), "replaced while this command ran")
    assert model.read_bytes() == replaced[0]  # B exactly as train wrote it: no threshold from A's scores
    assert "threshold" not in weights.load(model)[1]


def test_save_threshold_saves_when_the_model_is_unchanged(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    model = _tiny_model(tmp_path / "m.safetensors")
    tensors_before, _ = weights.load(model)
    code, out, err = run_main(["eval", data, "-m", model, "--pick-threshold", "youden", "--save-threshold",
                               "--format", "json"], capsys)
    assert code == 0, err
    tensors_after, meta = weights.load(model)
    assert meta["threshold"] == json.loads(out)["saved_threshold"]["threshold"]
    assert all(tensors_after[k].tobytes() == v.tobytes() for k, v in tensors_before.items())


def test_save_threshold_through_a_symlinked_model_saves_into_the_file_it_points_at(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    (tmp_path / "models").mkdir()
    real = _tiny_model(tmp_path / "models" / "v3.safetensors")
    link = tmp_path / "cur.safetensors"
    link.symlink_to(real)
    code, out, err = run_main(["eval", data, "-m", link, "--split", "all", "--pick-threshold", "youden",
                               "--save-threshold", "--format", "json"], capsys)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is still a link to v3
    assert weights.load(real)[1]["threshold"] == json.loads(out)["saved_threshold"]["threshold"]


# ---------------------------------------------------------------- damaged checkpoints


def _drop(d, key):
    d = dict(d)
    del d[key]
    return d


CHECKPOINT_DAMAGE = {
    # name: (change the metadata dict in place, change the tensors dict in place, word the error names)
    "state lacks epoch": (lambda m: m.update(state=_drop(m["state"], "epoch")), None, "'state' lacks epoch"),
    "state has an unknown key": (lambda m: m["state"].update(bogus=1), None, "'state' has unknown bogus"),
    "state.running lacks seen": (lambda m: m["state"].update(running={"loss": 0.0, "correct": 0}), None,
                                 "'state.running'"),
    "config lacks batch_size": (lambda m: m.update(config=_drop(m["config"], "batch_size")), None,
                                "'config' lacks batch_size"),
    "config batch_size 0": (lambda m: m["config"].update(batch_size=0), None, "'config.batch_size'"),
    "config epochs 0": (lambda m: m["config"].update(epochs=0), None, "'config.epochs'"),
    "config unknown optimizer": (lambda m: m["config"].update(optimizer="rmsprop"), None, "'config.optimizer'"),
    "config has an unknown key": (lambda m: m["config"].update(momentum=0.5), None, "'config' has unknown momentum"),
    "no optimizer_step": (lambda m: m.pop("optimizer_step"), None, "'optimizer_step'"),
    "options size a string": (lambda m: m["options"].update(size="big"), None, "'options.size'"),
    "options not an object": (lambda m: m.update(options=[1, 2]), None, "'options'"),
    "an optimizer tensor missing": (None, lambda t: t.pop(sorted(k for k in t if k.startswith("opt/"))[0]),
                                    "opt/ tensors do not match"),
    "an unknown tensor group": (None, lambda t: t.update({"junk/x": np.zeros(2, np.float32)}),
                                "unexpected tensors under junk"),
}


def test_resume_refuses_a_checkpoint_with_missing_extra_or_bad_keys(tmp_path, capsys, monkeypatch):
    """One real interrupted run, then each damage applied to a copy of its checkpoint (re-signed, so only the
    key checks can catch it): --resume exits 65 with one line naming the file and the key, never 70."""
    from train_helpers import interrupt_after_reads

    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    out = tmp_path / "m.safetensors"
    ckpt = tmp_path / "m.ckpt.safetensors"
    args = ["--arch", "tiny", "--batch-size", "4", "--epochs", "2", "--seed", "5"]
    with interrupt_after_reads(monkeypatch, 3):
        code, _, err = run_main(["train", data, "-o", out, *args], capsys)
    assert code == 130, err
    good = ckpt.read_bytes()
    seen = {}
    for name, (meta_edit, tensor_edit, word) in CHECKPOINT_DAMAGE.items():
        ckpt.write_bytes(good)
        tensors, meta = weights.load(ckpt)
        meta = json.loads(json.dumps(meta))  # deep copy
        if meta_edit:
            meta_edit(meta)
        if tensor_edit:
            tensor_edit(tensors)
        weights.save(ckpt, tensors, meta)
        damaged = ckpt.read_bytes()
        code, stdout, err = run_main(["train", data, "-o", out, "--resume"], capsys)
        lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
        seen[name] = (code, stdout == "" and len(lines) == 1 and str(ckpt) in lines[0]
                      and "damaged checkpoint" in lines[0] and word in lines[0], err.strip()[-300:])
        assert ckpt.read_bytes() == damaged and not out.exists()
    bad = {k: v for k, v in seen.items() if v[0] != 65 or not v[1]}
    assert bad == {}
    ckpt.write_bytes(good)  # and the undamaged checkpoint still resumes
    code, _, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 0, err


def test_train_refuses_a_batch_beyond_the_activation_limit_before_decoding(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=4, size=8)
    out_file = tmp_path / "m.safetensors"
    # conv64k3p1 on 1x512x512: 2 x 16.8 million activation values per image; 64 images are 2.1 billion
    argv = ["train", data, "-o", out_file, "--arch", "conv64k3p1-relu-pool8-fc", "--size", "512", "--epochs", "1"]
    code, out, err = run_main([*argv, "--batch-size", "64"], capsys)
    assert code == 2, err
    assert out == "" and "Traceback" not in err and "reading" not in err
    assert "--batch-size" in err and "use --batch-size 15 or less" in err
    assert not out_file.exists()
