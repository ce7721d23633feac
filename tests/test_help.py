"""`--help` at 80 columns, through `python -m cnncli`: fits, says nothing empty, groups options, shows examples."""

import pytest
import typer

from robust_helpers import child_env, run_child
from cnncli.commands.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)
TRAIN_PANELS = ["Data", "Model", "Optimisation", "Output", "Run control"]


def _help(args, tmp_path):
    code, out, err = run_child([*args, "--help"], tmp_path, env=child_env(COLUMNS="80", NO_COLOR="1"))
    assert code == 0 and err == b"", err
    return out.decode().splitlines()


def test_every_command_is_checked():
    assert {"train", "eval", "predict", "info", "export"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=lambda c: " ".join(c) or "cnncli")
def test_help_fits_80_columns_and_shows_no_empty_types(command, tmp_path):
    lines = _help(command, tmp_path)
    too_wide = [ln for ln in lines if len(ln) > 80]
    assert too_wide == []
    text = "\n".join(lines)
    assert "<bool>" not in text and "<list[" not in text  # a flag takes no value; a list argument says "..."
    if command:
        after = lines[[ln.strip() for ln in lines].index("Examples:") + 1:]
        examples = [ln for ln in after if "cnncli " + command[0] in ln]
        assert 2 <= len(examples) <= 3 and all(len(ln.strip()) <= 78 for ln in examples)


def test_train_help_groups_its_options_into_panels(tmp_path):
    lines = _help(["train"], tmp_path)
    titles = [ln.strip("╭─ ").split(" ─")[0] for ln in lines if ln.startswith("╭─ ")]
    assert [t for t in titles if t in TRAIN_PANELS] == TRAIN_PANELS
    assert len(lines) < 85  # it was 99 lines, with a 20-character description column
    # A short description stays on the line of its option: the description column is wide enough.
    assert any("--lr" in ln and "Peak learning rate (cosine decay)." in ln for ln in lines)
    assert any(ln.startswith("│ --quiet ") and ln.rstrip(" │").endswith("errors on stderr.") for ln in lines)


@pytest.mark.parametrize("command", [[], ["train"], ["predict"]], ids=lambda c: " ".join(c) or "cnncli")
def test_help_into_head_ends_quietly_with_exit_0(command, tmp_path):
    import subprocess
    import sys

    cmd = " ".join([sys.executable, "-m", "cnncli", *command, "--help"])
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c 1"], capture_output=True, timeout=60,
                         cwd=tmp_path, env=child_env(COLUMNS="80", NO_COLOR="1"))
    assert res.returncode == 0 and res.stderr == b"", res.stderr  # was 1: rich's exit on a closed pipe
