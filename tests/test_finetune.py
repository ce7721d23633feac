"""`cnncli train DATA --init OLD.safetensors [--freeze N]` through the real command: the weights it starts
from, the output layer for other classes, frozen layers left bit-identical, the summary in the weight file and
`info`, and every refusal with its exit code."""

import csv
import io
import json

import numpy as np
from conftest import make_image_folder
from robust_helpers import run_main

from cnncli.store import modelfile, weights

ARGS = ["--batch-size", "8", "--seed", "1"]
TINY = ["--arch", "tiny", *ARGS]  # conv8k3-relu-pool2-fc: layers.0 (conv) and layers.3 (output) have weights


def _train(argv, capsys, code=0):
    got, out, err = run_main(["train", *argv], capsys)
    assert got == code, err
    assert out == ""
    return err


def _old(tmp_path, capsys, classes=("cat", "dog"), arch=TINY, epochs="4"):
    data = make_image_folder(tmp_path / "old-data", classes=classes, n_per_class=12, size=10, split=True, n_val=4)
    old = tmp_path / "old.safetensors"
    _train([data, "-o", old, *arch, "--epochs", epochs], capsys)
    return old


def _tensors(path):
    return weights.load(path)[0]


def _first_val_loss(out):
    rows = csv.DictReader(io.StringIO(out.with_name(out.name.replace(".safetensors", ".history.csv")).read_text()))
    return float(next(rows)["val_loss"])


def test_same_classes_start_from_the_old_weights(tmp_path, capsys):
    """After one epoch from OLD the validation loss is far below a fresh start's after one epoch."""
    old = _old(tmp_path, capsys, arch=["--arch", "m1", *ARGS], epochs="8")
    data = make_image_folder(tmp_path / "new", n_per_class=12, size=10, split=True, n_val=6, seed=7)
    scratch, tuned = tmp_path / "scratch.safetensors", tmp_path / "tuned.safetensors"
    _train([data, "-o", scratch, "--arch", "m1", *ARGS, "--epochs", "1"], capsys)
    err = _train([data, "-o", tuned, "--init", old, *ARGS, "--epochs", "1"], capsys)
    assert "re-initialised" not in err
    assert _first_val_loss(tuned) < 0.5 * _first_val_loss(scratch), (_first_val_loss(tuned), _first_val_loss(scratch))
    train = weights.load(tuned)[1]["train"]
    assert train["init"] == str(old) and train["init_output_layer"] == "kept" and train["frozen_layers"] == 0
    assert train["init_sha256"] == weights.load(old)[1]["metadata_sha256"]
    code, text, _ = run_main(["info", tuned], capsys)
    assert code == 0 and f"started from: {old}" in text and "its output layer: kept" in text
    assert f"its metadata SHA-256: {train['init_sha256']}" in text


def test_same_classes_for_one_step_at_a_tiny_rate_keep_almost_every_weight(tmp_path, capsys):
    """Every tensor, the output layer included, is OLD's up to one small step (Adam moves each weight by about
    lr in its first step); OLD's decision settings, fitted to OLD's outputs, are not carried over."""
    old = _old(tmp_path, capsys)
    modelfile.save_decisions(old, {"threshold": 0.3, "temperature": 2.0, "min_confidence": 0.6},
                             expect=weights.load(old)[1]["metadata_sha256"])
    data = make_image_folder(tmp_path / "new", n_per_class=4, size=10, split=True, n_val=2, seed=5)
    out = tmp_path / "tuned.safetensors"
    _train([data, "-o", out, "--init", old, *ARGS, "--batch-size", "64", "--epochs", "1", "--lr", "1e-6"], capsys)
    before, after = _tensors(old), _tensors(out)
    assert before.keys() == after.keys()
    for name in before:
        assert np.abs(after[name] - before[name]).max() <= 2e-6, name
    meta = weights.load(out)[1]
    assert weights.load(old)[1]["threshold"] == 0.3
    assert not {"threshold", "temperature", "min_confidence"} & set(meta)


def test_other_classes_get_a_new_output_layer_and_freeze_keeps_layers_bit_identical(tmp_path, capsys):
    old = _old(tmp_path, capsys)
    data = make_image_folder(tmp_path / "new", classes=("ant", "bee", "cow"), n_per_class=8, size=10, split=True,
                             n_val=2)
    out = tmp_path / "tuned.safetensors"
    err = _train([data, "-o", out, "--init", old, *ARGS, "--epochs", "3", "--freeze", "1"], capsys)
    assert (f"--init: {old} has other classes (cat, dog; here: ant, bee, cow): output layer 4 re-initialised for 3 "
            "classes") in err
    before, after = _tensors(old), _tensors(out)
    assert after["layers.3.weight"].shape == (3, before["layers.3.weight"].shape[1])
    assert after["layers.3.bias"].shape == (3,)
    for name in ("layers.0.weight", "layers.0.bias"):  # frozen: not one bit changed
        assert after[name].tobytes() == before[name].tobytes(), name
    meta = weights.load(out)[1]
    assert meta["classes"] == ["ant", "bee", "cow"] and meta["arch"] == weights.load(old)[1]["arch"]
    assert meta["train"]["init_output_layer"] == "new" and meta["train"]["frozen_layers"] == 1
    code, text, _ = run_main(["info", out], capsys)
    assert code == 0 and "its output layer: new" in text and "frozen layers: 1" in text
    code, text, _ = run_main(["predict", data / "test" / "bee", "-m", out, "--format", "jsonl"], capsys)
    assert code == 0 and {json.loads(line)["label"] for line in text.splitlines()} <= {"ant", "bee", "cow"}


def test_without_freeze_every_layer_trains(tmp_path, capsys):
    old = _old(tmp_path, capsys)
    data = make_image_folder(tmp_path / "new", n_per_class=8, size=10, split=True, n_val=2, seed=3)
    out = tmp_path / "tuned.safetensors"
    _train([data, "-o", out, "--init", old, *ARGS, "--epochs", "2"], capsys)
    before, after = _tensors(old), _tensors(out)
    assert all(after[n].tobytes() != before[n].tobytes() for n in before)


def test_the_same_classes_in_another_order_keep_each_class_its_output_row(tmp_path, capsys):
    """OLD knows (dog, cat) in that order (a file from another tool or an older layout); the new folder lists
    cat, dog: each class keeps its own row of the output layer."""
    old = _old(tmp_path, capsys)
    tensors, meta = weights.load(old)
    swapped = tmp_path / "swapped.safetensors"
    tensors = {**tensors, "layers.3.weight": tensors["layers.3.weight"][::-1].copy(),
               "layers.3.bias": tensors["layers.3.bias"][::-1].copy()}
    weights.save(swapped, tensors, {k: v for k, v in meta.items() if k not in ("metadata_sha256", "tensor_sha256",
                                                                             "format", "format_version")}
                 | {"classes": ["dog", "cat"]})
    data = make_image_folder(tmp_path / "new", n_per_class=4, size=10, split=True, n_val=2, seed=5)
    out = tmp_path / "tuned.safetensors"
    _train([data, "-o", out, "--init", swapped, *ARGS, "--batch-size", "64", "--epochs", "1", "--lr", "1e-6"],
           capsys)
    after = _tensors(out)
    assert np.abs(after["layers.3.weight"] - weights.load(old)[0]["layers.3.weight"]).max() <= 2e-6
    assert weights.load(out)[1]["train"]["init_output_layer"] == "kept"


def test_init_may_be_the_output_file_itself(tmp_path, capsys):
    old = _old(tmp_path, capsys)
    digest = weights.load(old)[1]["metadata_sha256"]
    data = make_image_folder(tmp_path / "new", n_per_class=8, size=10, split=True, n_val=2, seed=4)
    _train([data, "-o", old, "--init", old, *ARGS, "--epochs", "1"], capsys, code=73)  # no --overwrite: refused
    assert weights.load(old)[1]["metadata_sha256"] == digest
    _train([data, "-o", old, "--init", old, *ARGS, "--epochs", "1", "--overwrite"], capsys)
    meta = weights.load(old)[1]
    assert meta["train"]["init_sha256"] == digest != meta["metadata_sha256"]


def test_options_that_contradict_the_init_file_are_usage_errors(tmp_path, capsys):
    old = _old(tmp_path, capsys)
    data = make_image_folder(tmp_path / "new", n_per_class=4, size=10, split=True, n_val=2)
    out = tmp_path / "m.safetensors"
    for extra, msg in (
            (["--arch", "m1"], f"--init {old} is conv8k3-relu-pool2-fc on 10x10 gray (resize crop); --arch m1 "
                               "contradicts it"),
            (["--size", "12", "--color", "rgb"], "--size 12, --color rgb contradict it"),
            (["--resize", "pad"], "--resize pad contradicts it"),
            (["--freeze", "2"], "--freeze 2: conv8k3-relu-pool2-fc has 2 layers with parameters"),
            (["--resume"], "--init cannot be combined with --resume")):
        code, stdout, err = run_main(["train", data, "-o", out, "--init", old, *ARGS, *extra], capsys)
        assert code == 2 and stdout == "" and msg in err, err
        assert len(err.strip().splitlines()) == 2 and err.startswith("Usage error: ")  # the line and the hint
        assert not out.exists()
    for same in (["--arch", "tiny"], ["--size", "10", "--color", "gray", "--resize", "crop"]):  # repeating is fine
        _train([data, "-o", out, "--init", old, *ARGS, "--epochs", "1", "--overwrite", *same], capsys)
    code, _, err = run_main(["train", data, "-o", out, *ARGS, "--freeze", "1", "--overwrite"], capsys)
    assert code == 2 and "--freeze 1 needs --init" in err


def test_a_damaged_foreign_or_missing_init_file_is_refused_naming_it(tmp_path, capsys):
    old = _old(tmp_path, capsys)
    data = make_image_folder(tmp_path / "new", n_per_class=4, size=10, split=True, n_val=2)
    damaged = tmp_path / "damaged.safetensors"
    raw = bytearray(old.read_bytes())
    raw[-3] ^= 0xFF  # a flipped byte in the last tensor
    damaged.write_bytes(bytes(raw))
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(b"\x80\x04not a safetensors file")
    foreign = tmp_path / "foreign.safetensors"  # a valid safetensors file from another tool
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    foreign.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    out = tmp_path / "m.safetensors"
    for init, code in ((damaged, 65), (pickled, 65), (foreign, 65), (tmp_path / "missing.safetensors", 66)):
        got, stdout, err = run_main(["train", data, "-o", out, "--init", init, *ARGS], capsys)
        assert got == code and stdout == "", err
        assert len(err.strip().splitlines()) == 1 and str(init) in err and "Traceback" not in err
        assert not out.exists()


def test_an_interrupted_fine_tuning_run_resumes_with_its_frozen_layers(tmp_path, capsys, monkeypatch):
    from train_helpers import interrupt_after_reads

    old = _old(tmp_path, capsys)
    data = make_image_folder(tmp_path / "new", classes=("ant", "bee", "cow"), n_per_class=8, size=10, split=True,
                             n_val=2)
    argv = ["--init", old, *ARGS, "--epochs", "3", "--freeze", "1"]
    ref, out = tmp_path / "ref.safetensors", tmp_path / "m.safetensors"
    _train([data, "-o", ref, *argv], capsys)
    with interrupt_after_reads(monkeypatch, 5):  # 3 batches an epoch, 4 reads: inside epoch 2
        code, _, err = run_main(["train", data, "-o", out, *argv], capsys)
    assert code == 130, err
    assert weights.load(tmp_path / "m.ckpt.safetensors")[1]["config"]["freeze"] == 1
    _train([data, "-o", out, "--resume"], capsys)
    got = _tensors(out)
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in _tensors(ref).items()}
    assert got["layers.0.weight"].tobytes() == _tensors(old)["layers.0.weight"].tobytes()
    assert weights.load(out)[1]["train"]["init_sha256"] == weights.load(old)[1]["metadata_sha256"]


def test_fit_keeps_a_frozen_layers_buffers_while_later_layers_move_theirs():
    """A layer's buffers (bn's running statistics) move in every training forward pass; a frozen layer's are put
    back after each step, bit for bit, and an unfrozen layer's keep moving. The layers here get a buffer that
    counts forward passes, standing in for a running statistic."""
    from cnncli.engine.model import Model
    from cnncli.engine.training import TrainConfig, fit

    model = Model("conv4k3-relu-pool2-fc8-relu-fc", (1, 8, 8), 2, seed=0)
    for i in (0, 3):
        layer = model.layers[i]
        layer.buffers = {"count": np.zeros(3, np.float32)}

        def counting(x, training=False, _forward=layer.forward, _buffers=layer.buffers, **kw):
            if training:
                _buffers["count"] += 1
            return _forward(x, training, **kw)

        layer.forward = counting
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (16, 1, 8, 8), dtype=np.uint8), rng.integers(0, 2, 16)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, optimizer="adam", freeze=1)
    fit(model, x, y, cfg, lambda a: a.astype(np.float32) / 255)
    assert model.layers[0].buffers["count"].tolist() == [0, 0, 0]
    assert model.layers[3].buffers["count"].tolist() == [4, 4, 4]  # 2 epochs of 2 batches


def test_freeze_keeps_a_bn_layers_running_statistics_bit_identical(tmp_path, capsys):
    arch = ["--arch", "conv4k3-bn-relu-pool2-fc", *ARGS]  # layers.0 conv, layers.1 bn, layers.4 output
    old = _old(tmp_path, capsys, arch=arch, epochs="2")
    data = make_image_folder(tmp_path / "new", n_per_class=8, size=10, split=True, n_val=2, seed=9)
    out = tmp_path / "tuned.safetensors"
    _train([data, "-o", out, "--init", old, *ARGS, "--epochs", "2", "--freeze", "2"], capsys)
    before, after = _tensors(old), _tensors(out)
    bn = sorted(n for n in before if n.startswith("layers.1."))
    assert {"layers.1.running_mean", "layers.1.running_var"} <= set(bn)
    for name in ["layers.0.weight", "layers.0.bias", *bn]:
        assert after[name].tobytes() == before[name].tobytes(), name
    assert after["layers.4.weight"].tobytes() != before["layers.4.weight"].tobytes()
