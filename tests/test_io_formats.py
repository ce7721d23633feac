"""predict / eval / info output formats under hostile names and options (issue 8, smaller findings):
escaping in every line format, NUL on stdin, class names with newlines, one stderr line per failed gate,
NO_COLOR in --help on a terminal, --uncertain against --threshold, and one decision rule for ties."""

import json
import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnncli.engine.model import Model
from cnncli.engine.training import evaluate
from cnncli.store import modelfile
from robust_helpers import child_env, read_pty, run_child, run_main

SIZE = 8


def _model(path, classes=("cat", "dog"), zero=False):
    clf = modelfile.Classifier(Model("conv2k3-relu-pool2-fc", (1, SIZE, SIZE), len(classes), seed=0),
                               list(classes), "gray", [0.5], [0.25])
    if zero:  # every logit 0: every image gets exactly 1/K for every class
        for _, v in clf.model.named():
            v[...] = 0
    modelfile.save(path, clf)
    return clf


def _png(path, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((SIZE, SIZE), value, np.uint8)).save(path)
    return path


def test_jsonl_writes_non_utf8_bytes_as_backslash_x_like_every_line_format(tmp_path):
    model = tmp_path / "m.safetensors"
    _model(model)
    name = os.path.join(os.fsencode(tmp_path), b"bad-\xff.png")
    with open(name, "wb") as f:
        f.write(_png(tmp_path / "src.png").read_bytes())
    code, out, err = run_child(["predict", os.fsdecode(name), "-m", model, "--format", "jsonl"], tmp_path)
    assert code == 0, err
    assert b"\\udcff" not in out  # the old way: a lone surrogate that most JSON readers turn into U+FFFD
    assert json.loads(out)["path"].endswith("bad-\\xff.png")


def test_nul_in_a_stdin_path_is_an_error_row_never_a_raw_nul(tmp_path):
    model = tmp_path / "m.safetensors"
    _model(model)
    good = _png(tmp_path / "ok.png")
    proc = subprocess.run([sys.executable, "-m", "cnncli", "predict", "-", "-m", str(model), "--format", "tsv"],
                          input=os.fsencode(good) + b"\nx\0y.png\n", capture_output=True, cwd=tmp_path,
                          env=child_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert b"\0" not in proc.stdout and b"\0" not in proc.stderr
    rows = proc.stdout.decode().splitlines()
    assert len(rows) == 3 and rows[2].startswith("x\\x00y.png\t") and "NUL" in rows[2]


def test_class_names_with_newlines_keep_the_eval_table_and_info_one_line_per_row(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    classes = ("bad\nname", "good")
    _model(model, classes)
    for k, cls in enumerate(classes):
        for i in range(2):
            _png(tmp_path / "data" / cls / f"{i}.png", 40 + 150 * k + i)
    code, out, err = run_main(["eval", tmp_path / "data", "-m", model], capsys)
    assert code == 0, err
    table = out.splitlines()
    per_class = [ln for ln in table if ln.startswith(("bad", "good"))]
    assert [ln.split()[0] for ln in per_class] == ["bad\\nname", "good"] * 2  # per-class rows, confusion rows
    assert not any(ln.startswith("name") for ln in table)
    code, out, err = run_main(["info", model], capsys)
    assert code == 0, err
    assert "classes (2): bad\\nname, good" in out.splitlines()


def test_every_failed_gate_gets_its_own_stderr_line(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    _model(model, zero=True)  # always predicts dog: cat recall 0, accuracy 0.5
    for cls in ("cat", "dog"):
        _png(tmp_path / "data" / cls / "0.png")
    code, out, err = run_main(["eval", tmp_path / "data", "-m", model, "--fail-under", "accuracy=0.9",
                               "--fail-under", "recall[cat]=0.5,macro_f1=0.99"], capsys)
    assert code == 3
    assert "accuracy" in out  # the report still came first
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert lines[0].endswith("accuracy 0.50 < 0.90")
    assert "recall[cat]" in lines[1] and "macro_f1" in lines[2]


def _help_on_a_terminal(tmp_path, **env):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "predict", "--help"], cwd=tmp_path,
                            env=child_env(**env), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    text = read_pty(master)
    assert proc.wait(timeout=60) == 0, text
    return text


def test_no_color_help_on_a_terminal_has_no_escape_codes(tmp_path):
    assert b"\x1b[" in _help_on_a_terminal(tmp_path)  # the terminal does get styles without NO_COLOR
    plain = _help_on_a_terminal(tmp_path, NO_COLOR="1")
    assert b"--uncertain" in plain and b"\x1b" not in plain


@pytest.mark.parametrize("args, says", [
    (["--uncertain", "0.1:0.3"], "the default threshold is 0.5"),
    (["--uncertain", "0.4:0.6", "--threshold", "0.7"], "--threshold is 0.7"),
])
def test_uncertain_band_must_contain_the_threshold(tmp_path, capsys, args, says):
    model = tmp_path / "m.safetensors"
    _model(model)
    code, out, err = run_main(["predict", _png(tmp_path / "a.png"), "-m", model, *args], capsys)
    assert code == 2 and out == ""
    assert says in err and "--uncertain" in err


def test_a_tie_is_the_same_class_in_training_eval_and_predict(tmp_path, capsys):
    """All-zero weights give P = (0.5, 0.5) exactly: every path must call it the positive class."""
    model = tmp_path / "m.safetensors"
    clf = _model(model, zero=True)
    for cls in ("cat", "dog"):
        _png(tmp_path / "data" / cls / "0.png")
    code, out, err = run_main(["predict", tmp_path / "data", "-m", model, "--format", "jsonl"], capsys)
    assert code == 0, err
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert [r["label"] for r in rows] == ["dog", "dog"] and {r["probability"] for r in rows} == {0.5}
    code, out, err = run_main(["eval", tmp_path / "data", "-m", model, "--format", "json"], capsys)
    assert json.loads(out)["confusion_matrix"]["matrix"] == [[0, 1], [0, 1]]
    x = np.zeros((2, 1, SIZE, SIZE), np.float32)
    _, acc, _ = evaluate(clf.model, x, np.array([1, 1]), lambda b: b)  # training's validation accuracy
    assert acc == 1.0


def test_csv_rows_and_the_training_history_come_from_one_csv_writer(tmp_path, capsys):
    """Quotes and commas in names survive predict --format csv; train's history CSV is the same dialect."""
    import csv
    import io

    from cnncli.commands.train import _history_csv
    from cnncli.report.lines import csv_row

    model = tmp_path / "m.safetensors"
    _model(model)
    img = _png(tmp_path / 'say "hi", ok.png')
    code, out, err = run_main(["predict", img, "-m", model, "--format", "csv"], capsys)
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:3] == ["path", "label", "probability"] and rows[1][0] == str(img)
    assert out.splitlines()[1] == csv_row([str(img), *rows[1][1:]]).rstrip("\n")
    history = _history_csv([{"epoch": 1, "train_loss": 0.5, "lr": 0.001}]).decode()
    assert list(csv.DictReader(io.StringIO(history))) == [
        {"epoch": "1", "train_loss": "0.5", "train_accuracy": "", "val_loss": "", "val_accuracy": "", "lr": "0.001",
         "time": ""}]
