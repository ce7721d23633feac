"""Which weight file a command reads: the one rule predict, eval and info share."""

import os
from pathlib import Path

from cnncli.errors import NoInputError

DEFAULT_MODEL = "model.safetensors"
MODEL_ENV = "CNNCLI_MODEL"


def resolve_model(option):
    """The weight file to use: the given path, else $CNNCLI_MODEL, else ./model.safetensors.

    Raises NoInputError naming ./model.safetensors and both ways to name another file when none is given and
    that default does not exist (a given path that does not exist is reported by the loader, exit 66 too)."""
    if option:
        return Path(option)
    env = os.environ.get(MODEL_ENV, "")
    if env:
        return Path(env)
    if Path(DEFAULT_MODEL).exists():
        return Path(DEFAULT_MODEL)
    raise NoInputError(f"{DEFAULT_MODEL}: no such file; pass --model PATH or set {MODEL_ENV}")
