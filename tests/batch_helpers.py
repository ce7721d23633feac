"""Shared setup for the batch-run tests (--shard, --ledger, --sort-into): a tiny model and generated images."""

from __future__ import annotations

from pathlib import Path

from conftest import make_image_folder

from cnncli.engine.model import Model
from cnncli.store import modelfile

SIZE = 16


def tiny_model(path: Path, seed: int = 0, classes=("cat", "dog")) -> Path:
    """Save an untrained two-class model (1 x 16 x 16 gray inputs) to path; returns path."""
    clf = modelfile.Classifier(Model("conv4k3-relu-pool2-fc", (1, SIZE, SIZE), len(classes), seed=seed),
                               list(classes), "gray", [0.5], [0.25])
    modelfile.save(path, clf)
    return path


def world(tmp_path: Path, n_per_class: int = 12, bad: int = 1):
    """(data folder with `bad` undecodable files added under cat/, model path)."""
    data = make_image_folder(tmp_path / "data", n_per_class=n_per_class, size=SIZE)
    for k in range(bad):
        (data / "cat" / f"broken_{k}.png").write_bytes(b"not an image")
    return data, tiny_model(tmp_path / "m.safetensors")


def body(out: str) -> list[str]:
    """The data lines of a tsv output (header dropped)."""
    lines = out.splitlines()
    assert lines and lines[0].startswith("path\t"), out[:200]
    return lines[1:]
