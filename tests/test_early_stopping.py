"""Early stopping through the real `cnncli train`: on by default with a validation set, patience from the epoch
budget (max(3, ceil(epochs / 5))), --patience N, --no-early-stop / --patience 0, the best epoch kept, one line
when it stops, the summary in the weight file and `info`, and --resume keeping its state."""

import csv
import io
import shutil

from conftest import make_image_folder
from robust_helpers import run_main
from train_helpers import interrupt_after_reads

from cnncli.engine.training import default_patience
from cnncli.store import weights

ARGS = ["--arch", "tiny", "--batch-size", "4", "--epochs", "20", "--seed", "3"]


def _misleading(root):
    """A folder whose val/ labels are swapped: the better training fits, the worse validation gets, so the
    best validation epoch comes early and a run with a patience must stop long before 20 epochs."""
    data = make_image_folder(root, n_per_class=10, size=8, split=True, n_val=4, n_test=2)
    shutil.move(data / "val" / "cat", data / "val" / "tmp")
    shutil.move(data / "val" / "dog", data / "val" / "cat")
    shutil.move(data / "val" / "tmp", data / "val" / "dog")
    return data


def _history(out):
    return list(csv.DictReader(io.StringIO(out.with_name(out.name.replace(".safetensors", ".history.csv"))
                                           .read_text())))


def _tensors(path):
    return {k: v.tobytes() for k, v in weights.load(path)[0].items()}


def test_the_default_patience_is_a_fifth_of_the_budget_and_at_least_3():
    assert [default_patience(e) for e in (1, 4, 15, 16, 20, 50)] == [3, 3, 3, 4, 4, 10]


def test_a_run_stops_early_by_default_and_keeps_its_best_epoch(tmp_path, capsys):
    data = _misleading(tmp_path / "d")
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS], capsys)
    assert code == 0, err
    train = weights.load(out)[1]["train"]
    rows = _history(out)
    best, ran = train["best_epoch"], train["epochs"]
    assert train["stop_reason"] == "early-stopped" and train["patience"] == 4 and train["epochs_planned"] == 20
    assert ran == len(rows) == best + 4 < 20  # exactly `patience` epochs after the best one
    scores = [float(r["val_accuracy"]) - 1e-6 * float(r["val_loss"]) for r in rows]
    assert best == scores.index(max(scores)) + 1
    assert abs(train["val_accuracy"] - float(rows[best - 1]["val_accuracy"])) < 1e-6  # the best epoch's weights
    assert f"stopped at epoch {ran} of 20: no better validation score for 4 epochs; kept epoch {best}\n" in err
    assert f"epochs: {ran} (early-stopped), best epoch {best}" in err
    code, text, _ = run_main(["info", out], capsys)
    assert code == 0 and "stopped: early-stopped" in text and "patience: 4" in text
    assert "planned epochs: 20" in text


def test_patience_option_sets_how_long_to_wait(tmp_path, capsys):
    data = _misleading(tmp_path / "d")
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS, "--patience", "2"], capsys)
    assert code == 0, err
    train = weights.load(out)[1]["train"]
    assert train["patience"] == 2 and train["epochs"] == train["best_epoch"] + 2 == len(_history(out))
    assert "no better validation score for 2 epochs" in err


def test_no_early_stop_and_patience_0_run_every_epoch(tmp_path, capsys):
    data = _misleading(tmp_path / "d")
    runs = {}
    for flag in (["--no-early-stop"], ["--patience", "0"]):
        out = tmp_path / f"m{len(runs)}.safetensors"
        code, _, err = run_main(["train", data, "-o", out, *ARGS, *flag], capsys)
        assert code == 0, err
        train = weights.load(out)[1]["train"]
        assert train["epochs"] == len(_history(out)) == 20 and train["stop_reason"] == "completed"
        assert train["patience"] is None and "stopped at epoch" not in err
        assert train["best_epoch"] < 20  # it would have stopped: the best epoch is still the one kept
        runs[flag[0]] = _tensors(out)
    assert runs["--no-early-stop"] == runs["--patience"]


def test_without_a_validation_set_every_epoch_runs(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=6, size=8)
    out = tmp_path / "m.safetensors"
    code, _, err = run_main(["train", data, "-o", out, *ARGS[:-4], "--epochs", "6", "--val-split", "0"], capsys)
    assert code == 0, err
    train = weights.load(out)[1]["train"]
    assert train["epochs"] == 6 and train["stop_reason"] == "completed" and train["patience"] is None


def test_bad_patience_options_are_usage_errors(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", n_per_class=4, size=8)
    for extra, msg in ((["--patience", "-1"], "--patience: must be at least 0, got -1"),
                       (["--patience", "3", "--no-early-stop"], "--patience 3 contradicts --no-early-stop")):
        code, out, err = run_main(["train", data, "-o", tmp_path / "m.safetensors", *ARGS, *extra], capsys)
        assert code == 2 and out == "" and msg in err, err
        assert not (tmp_path / "m.safetensors").exists()


def test_resume_keeps_the_early_stopping_state(tmp_path, capsys, monkeypatch):
    """Interrupted after the best epoch (5 batches an epoch, 6 reads of the stop flag each): the resumed run
    stops at the same epoch, keeps the same epoch and ends with the same weights as an uninterrupted one."""
    data = _misleading(tmp_path / "d")
    ref = tmp_path / "ref.safetensors"
    assert run_main(["train", data, "-o", ref, *ARGS], capsys)[0] == 0
    want = weights.load(ref)[1]["train"]
    out = tmp_path / "m.safetensors"
    with interrupt_after_reads(monkeypatch, 6 * want["best_epoch"] + 2):
        code, _, err = run_main(["train", data, "-o", out, *ARGS], capsys)
    assert code == 130, err
    saved = weights.load(tmp_path / "m.ckpt.safetensors")[1]
    assert saved["state"]["best_epoch"] == want["best_epoch"] and saved["config"]["patience"] == 4
    code, _, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 0, err
    got = weights.load(out)[1]["train"]
    assert (got["epochs"], got["best_epoch"], got["stop_reason"]) == (want["epochs"], want["best_epoch"],
                                                                      "early-stopped")
    assert _tensors(out) == _tensors(ref)
