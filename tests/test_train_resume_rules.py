"""--resume never silently drops an option that contradicts the interrupted run, accepts the ones that may
change (--threads, --wait, -q, --fail-on-collapse) and stays bit-identical with them; the checkpoint data
record is tied to its checkpoint, so an edited split is refused.

Through the real command (cnncli.commands.cli.main in-process); interrupts are real SIGINTs sent at a
chosen read of the stop flag (train_helpers.interrupt_after_reads).
"""

import json

from cnncli.store import weights
from conftest import make_image_folder
from robust_helpers import run_main
from train_helpers import interrupt_after_reads

ARGS = ["--arch", "tiny", "--batch-size", "4", "--epochs", "2", "--seed", "5"]


def _interrupted(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", n_per_class=10, size=8)
    out = tmp_path / "m.safetensors"
    with interrupt_after_reads(monkeypatch, 3):
        code, _, err = run_main(["train", data, "-o", out, *ARGS], capsys)
    assert code == 130, err
    return data, out, tmp_path / "m.ckpt.safetensors"


def _error_line(err):
    """The one line of a usage error (the usual "Try 'cnncli train -h'" hint may follow it)."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("Try ")]
    assert len(lines) == 1, err
    return lines[0]


def test_resume_refuses_options_that_contradict_the_checkpoint(tmp_path, capsys, monkeypatch):
    data, out, ckpt = _interrupted(tmp_path, capsys, monkeypatch)
    before = ckpt.read_bytes()
    code, stdout, err = run_main(["train", data, "-o", out, "--resume", "--epochs", "1", "--arch", "m1",
                                  "--max-time", "3", "--lr", "5", "--threads", "1"], capsys)
    assert code == 2 and stdout == "", err
    line = _error_line(err)
    for said in ("--epochs 1 (it used 2)", "--arch m1 (it used tiny)", "--lr 5 (it used 0.002)",
                 "--max-time 3 (it used the default)"):
        assert said in line, line
    assert "--threads" not in line
    assert ckpt.read_bytes() == before and not out.exists()


def test_resume_with_the_same_options_and_run_settings_stays_bit_identical(tmp_path, capsys, monkeypatch):
    data, out, _ = _interrupted(tmp_path, capsys, monkeypatch)
    ref = tmp_path / "ref.safetensors"
    assert run_main(["train", data, "-o", ref, *ARGS], capsys)[0] == 0
    code, _, err = run_main(["train", data, "-o", out, "--resume", *ARGS, "--threads", "1", "--wait", "1", "-q",
                             "--fail-on-collapse"], capsys)
    assert code == 0, err
    assert {k: v.tobytes() for k, v in weights.load(out)[0].items()} == {
        k: v.tobytes() for k, v in weights.load(ref)[0].items()}


def test_an_edited_checkpoint_data_record_is_refused(tmp_path, capsys, monkeypatch):
    data, out, ckpt = _interrupted(tmp_path, capsys, monkeypatch)
    record_path = tmp_path / "m.ckpt.data.json"
    record = json.loads(record_path.read_text())
    assert len(record["parts"]["val"]) == 4
    record["parts"]["train"] += record["parts"]["val"][:2]  # validate on 2, train on 18: a different run
    record["parts"]["val"] = record["parts"]["val"][2:]
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    before = ckpt.read_bytes()
    code, stdout, err = run_main(["train", data, "-o", out, "--resume"], capsys)
    assert code == 65 and stdout == "", err
    line = err.strip().splitlines()[-1]
    assert str(record_path) in line and "SHA-256" in line
    assert ckpt.read_bytes() == before and not out.exists()


def test_resume_accepts_the_values_cnncli_chose_and_names_them_when_contradicted(tmp_path, capsys, monkeypatch):
    data, out, ckpt = _interrupted(tmp_path, capsys, monkeypatch)  # size and colour left to cnncli: 8 px, gray
    before = ckpt.read_bytes()
    code, _, err = run_main(["train", data, "-o", out, "--resume", "--size", "16"], capsys)
    assert code == 2 and "--size 16 (it used 8)" in _error_line(err), err
    assert ckpt.read_bytes() == before
    ref = tmp_path / "ref.safetensors"
    assert run_main(["train", data, "-o", ref, *ARGS], capsys)[0] == 0
    code, _, err = run_main(["train", data, "-o", out, "--resume", "--size", "8", "--color", "gray", *ARGS], capsys)
    assert code == 0, err  # repeating what the run used is no contradiction, and changes nothing
    assert {k: v.tobytes() for k, v in weights.load(out)[0].items()} == {
        k: v.tobytes() for k, v in weights.load(ref)[0].items()}
