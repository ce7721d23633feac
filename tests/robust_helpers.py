"""Shared helpers (no tests here) for the command-level robustness tests: run the real `cnncli` in-process or as a child."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli.commands.cli import main

REPO = Path(__file__).resolve().parents[1]

# Small and fast: a few seconds per run on two cores.
FAST = ["--arch", "tiny", "--batch-size", "8"]


def run_main(argv, capsys):
    """Run cnncli.commands.cli.main(argv) (exit-code mapping included); returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) if isinstance(a, Path) else a for a in argv])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def child_env(**extra):
    """The environment for a `python -m cnncli` child: this checkout first on the path, no NO_COLOR unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CNNCLI_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["TERM"] = "xterm-256color"  # a colour-capable terminal type: only the missing TTY may turn colour off
    env.update(extra)
    return env


def cnncli_child(args, cwd, **kwargs) -> subprocess.Popen:
    """Start `python -m cnncli ARGS` with bytes pipes for stdout and stderr."""
    return subprocess.Popen([sys.executable, "-m", "cnncli", *map(os.fsencode, map(str, args))],
                            cwd=cwd, env=kwargs.pop("env", None) or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, **kwargs)


def run_child(args, cwd, timeout=120, **kwargs):
    """Run `python -m cnncli ARGS` to the end; returns (exit code, stdout bytes, stderr bytes)."""
    proc = cnncli_child(args, cwd, **kwargs)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def tree_hashes(root: Path) -> dict[bytes, str]:
    """SHA-256 of every file under root, keyed by its path as bytes (names need not be UTF-8)."""
    out = {}
    for dirpath, _, files in os.walk(os.fsencode(root)):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).hexdigest()
    return out


def leftovers(directory: Path) -> list[str]:
    """Hidden temp or lock files a run left behind in directory."""
    return sorted(p.name for p in Path(directory).iterdir()
                  if p.name.endswith((".tmp", ".probe", ".lock")) or p.name.startswith("."))


def read_pty(master: int) -> bytes:
    """Everything written to a pseudo-terminal until the child closes it; closes master."""
    text = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        text += chunk
    os.close(master)
    return text
