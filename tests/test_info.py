"""`cnncli info` through the real command: the same model lookup as predict and eval, and values for people."""

import json
import os

import cnncli
from robust_helpers import child_env, run_child
from cnncli.engine.model import Model
from cnncli.store import modelfile


def _model(path, train=None):
    clf = modelfile.Classifier(Model("conv2k3-relu-pool2-fc", (1, 8, 8), 2, seed=0), ["cat", "dog"], "gray",
                               [0.5], [0.25], threshold=0.37, train=train or {})
    modelfile.save(path, clf)


def test_info_reads_model_safetensors_in_the_working_directory_like_predict(tmp_path):
    _model(tmp_path / "model.safetensors")
    code, out, err = run_child(["info"], tmp_path)
    assert code == 0, err
    assert out.decode().startswith(f"file: model.safetensors ({os.path.getsize(tmp_path / 'model.safetensors'):,} "
                                   "bytes)\n")
    other = tmp_path / "sub"
    other.mkdir()
    _model(other / "env.safetensors")
    code, out, err = run_child(["info", "--json"], other, env=child_env(CNNCLI_MODEL="env.safetensors"))
    assert code == 0, err
    assert json.loads(out)["file"] == "env.safetensors"


def test_a_missing_default_model_is_the_same_error_for_info_predict_and_eval(tmp_path):
    (tmp_path / "data").mkdir()
    errors = {}
    for args in (["info"], ["predict", "x.png"], ["eval", "data"]):
        code, out, err = run_child(args, tmp_path)
        assert code == 66 and out == b""
        errors[args[0]] = err.decode()
    assert errors["info"] == errors["predict"] == errors["eval"]
    assert errors["info"].strip() == ("cnncli: error: model.safetensors: no such file; pass --model PATH or set "
                                      "CNNCLI_MODEL")


def test_info_shows_numbers_for_people_and_every_training_setting(tmp_path):
    train = {"epochs": 12, "best_epoch": 10, "seed": 0, "optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0001,
             "batch_size": 64, "augment": False, "class_weights": [1.25, 0.8333333333333334], "images": 320,
             "val_accuracy": 0.9833333333333333, "test_accuracy": None, "stop_reason": "completed",
             "automatic": ["--resize squash", "--val-split 0"], "warnings": ["first warning", "second warning"]}
    _model(tmp_path / "m.safetensors", train)
    code, out, err = run_child(["info", "m.safetensors"], tmp_path)
    assert code == 0, err
    text = out.decode()
    for python_repr in ("True", "False", "0.9833333", "0.83333", "None", "[1.25"):
        assert python_repr not in text
    lines = text.splitlines()
    for line in ("  validation accuracy: 0.9833", "  class weights: cat 1.25, dog 0.8333", "  weight decay: 0.0001",
                 "  augment: no", "  learning rate: 0.002", "  test accuracy: none", "threshold: 0.37",
                 # two-item lists that are not per class carry no class names (two classes here)
                 "  chosen automatically: --resize squash, --val-split 0", "  warnings: first warning, second warning"):
        assert line in lines
    code, out, _ = run_child(["info", "m.safetensors", "--json"], tmp_path)
    doc = json.loads(out)  # the JSON keeps the stored values exactly
    assert doc["train"] == {**train, "cnncli_version": cnncli.__version__} and doc["bytes"] == os.path.getsize(tmp_path / "m.safetensors")
