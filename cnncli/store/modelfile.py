"""A trained model on disk: a Model plus what it needs to see images the way it was trained.

Joins `weights` (the file format) and `model` (the network); neither of those imports the other.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli import __version__

from cnncli.store import weights
from cnncli.store.atomic import OutputLock
from cnncli.errors import FormatError, SpecError
from cnncli.data.images import normalize
from cnncli.engine.model import Model

MAX_CLASSES = 10000
RESIZE_RULE = "shorter-side-then-center-crop"


@dataclass
class Classifier:
    """A model with its class names and preprocessing; `proba(x_uint8)` gives (N, K) probabilities."""

    model: Model
    classes: list
    color: str  # "gray" or "rgb"
    mean: list
    std: list
    threshold: float | None = None  # two-class decision threshold for the positive class (index 1)
    train: dict = field(default_factory=dict)

    @property
    def size(self):
        return self.model.input_shape[1]

    @property
    def channels(self):
        return self.model.input_shape[0]

    def to_float(self, x):
        """uint8 (N, C, H, W) -> normalised float32 (N, C, H, W)."""
        return normalize(x, self.mean, self.std)

    def proba(self, x):
        """Class probabilities (N, K) float32 for uint8 images (N, C, H, W)."""
        return self.model.predict_proba(self.to_float(x))

    def metadata(self):
        c, h, w = self.model.input_shape
        meta = {
            "arch": self.model.spec,
            "classes": list(self.classes),
            "input": {"channels": c, "height": h, "width": w, "color": self.color},
            "preprocess": {"resize": RESIZE_RULE, "scale": 1 / 255, "mean": list(self.mean), "std": list(self.std),
                           "alpha_background": "white", "exif_transpose": True},
            "train": {**self.train, "cnncli_version": __version__},
        }
        if self.threshold is not None:
            meta["threshold"] = float(self.threshold)
        return meta


def save(path, clf):
    """Write clf's weights and metadata to path atomically (see weights.save)."""
    weights.save(path, clf.model.state_dict(), clf.metadata())


def _need(path, cond, what):
    if not cond:
        raise FormatError(f"{path}: invalid metadata: {what}")


def _finite_list(path, value, n, name, positive=False):
    ok = (isinstance(value, list) and len(value) == n
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    _need(path, ok and (not positive or all(v > 0 for v in value)), f"'{name}' must be {n} finite numbers"
          + (" > 0" if positive else ""))
    return [float(v) for v in value]


def from_parts(path, tensors, meta):
    """Build a Classifier from loaded tensors and metadata, validating every field; raises FormatError."""
    arch, classes, inp, pre = meta.get("arch"), meta.get("classes"), meta.get("input"), meta.get("preprocess")
    _need(path, isinstance(arch, str), "'arch' must be a string")
    _need(path, isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES
          and all(isinstance(c, str) and c for c in classes) and len(set(classes)) == len(classes),
          "'classes' must be 2 or more distinct names")
    _need(path, isinstance(inp, dict), "'input' missing")
    dims = [inp.get(k) for k in ("channels", "height", "width")]
    _need(path, all(isinstance(v, int) and not isinstance(v, bool) for v in dims)
          and dims[0] in (1, 3) and all(1 <= v <= 4096 for v in dims[1:]), "'input' sizes out of range")
    _need(path, inp.get("color") in ("gray", "rgb"), "'input.color' must be gray or rgb")
    _need(path, isinstance(pre, dict), "'preprocess' missing")
    mean = _finite_list(path, pre.get("mean"), dims[0], "preprocess.mean")
    std = _finite_list(path, pre.get("std"), dims[0], "preprocess.std", positive=True)
    threshold = meta.get("threshold")
    _need(path, threshold is None or (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0),
          "'threshold' must be a number in [0, 1]")
    try:
        model = Model(arch, tuple(dims), len(classes))
        model.load_state_dict(tensors)
    except SpecError as exc:
        raise FormatError(f"{path}: {exc}") from None
    train = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    return Classifier(model, classes, inp["color"], mean, std, threshold, train)


def load(path):
    """Load and validate a weight file into a Classifier; raises FormatError / NoInputError naming the file."""
    tensors, meta = weights.load(path)
    return from_parts(path, tensors, meta)


def default_sidecar(output, suffix):
    """Path of a file kept beside the weights, e.g. model.safetensors -> model.history.csv."""
    out = Path(output)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    return out.with_name(stem + suffix)


def output_lock(path, wait=0.0):
    """The lock for a weight file and all its sidecars: `stem.lock` beside them (model.safetensors and model
    share model.history.csv and the other sidecars, so both spellings take model.lock). Used by every run
    that writes a weight file or its sidecars."""
    return OutputLock(path, wait=wait, lock_path=default_sidecar(path, ".lock"))


def stack_named(prefix, arrays):
    """{prefix + name: float32 array} for a checkpoint; arrays is a dict of name -> array."""
    return {prefix + k: np.asarray(v, np.float32) for k, v in arrays.items()}
