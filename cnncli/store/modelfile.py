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
from cnncli.errors import FormatError, SpecError, one_line
from cnncli.data.folders import RESERVED_LABELS
from cnncli.data.images import normalize
from cnncli.engine.layers import softmax
from cnncli.engine.model import Model, plan

MAX_CLASSES = 10000
# preprocess.resize in the file <-> the decoder's rule (images.RESIZE_RULES); files from before --resize all say
# the first one, and a file without the key means "crop" too.
RESIZE_NAMES = {"shorter-side-then-center-crop": "crop", "whole-image-squashed": "squash",
                "longer-side-then-letterbox": "pad"}
RESIZE_STORED = {v: k for k, v in RESIZE_NAMES.items()}
MIN_SIDE, MAX_SIDE = 4, 1024  # input sides, as train --size allows
MIN_STD, MAX_ABS = 1e-3, 1e3  # preprocess.std in [MIN_STD, MAX_ABS] (train floors it at 1e-3); |mean| <= MAX_ABS


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
    digest: str | None = None  # metadata_sha256 of the file it was loaded from (covers tensors and metadata)
    temperature: float = 1.0  # logits are divided by it before the softmax (eval --calibrate)
    min_confidence: float | None = None  # predict says "unknown" below this top probability
    resize: str = "crop"  # the decoder's resize rule (images.RESIZE_RULES), repeated by eval and predict
    tta: bool = False  # average the logits of each image and its mirror (predict/eval --tta; not stored)
    source: str = "the weight file"  # names the file in errors: its path when loaded from one

    @property
    def size(self):
        return self.model.input_shape[1]

    @property
    def channels(self):
        return self.model.input_shape[0]

    def to_float(self, x):
        """uint8 (N, C, H, W) -> normalised float32 (N, C, H, W)."""
        return normalize(x, self.mean, self.std)

    def logits(self, x):
        """Raw logits (N, K) float32 for uint8 images (N, C, H, W), before the temperature; normalised and run
        one inference pass (Model.images_per_pass) at a time. FormatError naming the weight file when any logit
        is not finite: finite but huge weights overflow float32, and nothing could be decided from such rows."""
        step = self.model.images_per_pass()
        with _quiet_overflow():
            if self.tta:  # the mean of the two logits: test-time augmentation with a horizontal flip
                mirror = lambda a: np.ascontiguousarray(a[..., ::-1])  # noqa: E731
                out = [(self.model.forward(self.to_float(x[i:i + step])) + self.model.forward(
                    self.to_float(mirror(x[i:i + step])))) / np.float32(2) for i in range(0, len(x), step)]
            else:
                out = [self.model.forward(self.to_float(x[i:i + step])) for i in range(0, len(x), step)]
        return self._finite(np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32))

    def proba_from_logits(self, z):
        """Class probabilities (N, K) float32 from raw logits (N, K): softmax(logits / temperature).
        FormatError naming the weight file when one is not finite (logits too large for the temperature)."""
        with _quiet_overflow():
            return self._finite(softmax(z if self.temperature == 1.0 else z / np.float32(self.temperature)))

    def proba(self, x):
        """Class probabilities (N, K) float32 for uint8 images (N, C, H, W): softmax(logits / temperature)."""
        return self.proba_from_logits(self.logits(x))

    def _finite(self, a):
        """a, unless it holds a NaN or an infinity: then FormatError, the weight file's fault (exit 65)."""
        if not np.isfinite(a).all():
            raise FormatError(f"{self.source}: the model's outputs overflow (non-finite probabilities); "
                              "the weights are unusable")
        return a

    def metadata(self):
        c, h, w = self.model.input_shape
        meta = {
            "arch": self.model.spec,
            "classes": list(self.classes),
            "input": {"channels": c, "height": h, "width": w, "color": self.color},
            "preprocess": {"resize": RESIZE_STORED[self.resize], "scale": 1 / 255, "mean": list(self.mean), "std": list(self.std),
                           "alpha_background": "white", "exif_transpose": True},
            "train": {**self.train, "cnncli_version": __version__},
        }
        if self.threshold is not None:
            meta["threshold"] = float(self.threshold)
        if self.temperature != 1.0:
            meta["temperature"] = float(self.temperature)
        if self.min_confidence is not None:
            meta["min_confidence"] = float(self.min_confidence)
        return meta


def _quiet_overflow():
    """Numpy's overflow and invalid-value warnings off: Classifier._finite reports such outputs in one line."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def save(path, clf):
    """Write clf's weights and metadata to path atomically (see weights.save)."""
    weights.save(path, clf.model.state_dict(), clf.metadata())


def _need(path, cond, what):
    if not cond:
        raise FormatError(f"{path}: invalid metadata: {what}")


def _number(v):
    """A real JSON number: int or float, not a bool (JSON true is not a threshold), and finite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite_list(path, value, n, name, lo, hi):
    ok = isinstance(value, list) and len(value) == n and all(_number(v) and lo <= v <= hi for v in value)
    _need(path, ok, f"'{name}' must be {n} finite number{'s' if n > 1 else ''} in [{lo:g}, {hi:g}]")
    return [float(v) for v in value]


def _check_tensors(path, tensors, expected):
    """FormatError naming missing, extra and mis-shaped tensors against the shapes the spec implies."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    shaped = [f"{n} has shape {tuple(tensors[n].shape)}, the architecture needs {expected[n]}"
              for n in sorted(set(expected) & set(tensors)) if tuple(tensors[n].shape) != expected[n]]
    problems = ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
        [f"unexpected {', '.join(extra[:5])}"] if extra else []) + shaped[:3]
    if problems:
        raise FormatError(f"{path}: tensors do not match the architecture: {'; '.join(problems)}")


def from_parts(path, tensors, meta):
    """Build a Classifier from loaded tensors and metadata, validating every field; raises FormatError.

    Order matters: the metadata is range-checked, then the spec's tensor shapes and memory are derived by
    arithmetic (engine.model.plan, which refuses a model over the documented bounds) and compared with the
    file's tensors, and only then is a Model built.
    """
    arch, classes, inp, pre = meta.get("arch"), meta.get("classes"), meta.get("input"), meta.get("preprocess")
    _need(path, isinstance(arch, str), "'arch' must be a string")
    _need(path, isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES
          and all(isinstance(c, str) and c for c in classes) and len(set(classes)) == len(classes),
          "'classes' must be 2 or more distinct names")
    reserved = [c for c in classes if c.lower() in RESERVED_LABELS]  # a row labelled so would be ambiguous
    _need(path, not reserved, f"class {one_line(reserved[0]) if reserved else ''} is one of predict's own labels "
          f"({', '.join(RESERVED_LABELS)})")
    _need(path, isinstance(inp, dict), "'input' missing")
    dims = [inp.get(k) for k in ("channels", "height", "width")]
    _need(path, all(isinstance(v, int) and not isinstance(v, bool) for v in dims)
          and dims[0] in (1, 3) and dims[1] == dims[2] and MIN_SIDE <= dims[1] <= MAX_SIDE,
          f"'input' must be 1 or 3 channels of a square {MIN_SIDE} to {MAX_SIDE} pixels a side")
    _need(path, inp.get("color") == ("gray" if dims[0] == 1 else "rgb"),
          "'input.color' must be gray for 1 channel, rgb for 3")
    _need(path, isinstance(pre, dict), "'preprocess' missing")
    resize = pre.get("resize", "shorter-side-then-center-crop")
    _need(path, isinstance(resize, str) and resize in RESIZE_NAMES and _number(pre.get("scale"))
          and abs(pre["scale"] * 255 - 1) < 1e-9 and pre.get("alpha_background") == "white"
          and pre.get("exif_transpose") is True,
          f"'preprocess' must say resize {' or '.join(RESIZE_NAMES)}, scale 1/255, alpha_background white, "
          "exif_transpose true (the only preprocessing this cnncli does)")
    mean = _finite_list(path, pre.get("mean"), dims[0], "preprocess.mean", -MAX_ABS, MAX_ABS)
    std = _finite_list(path, pre.get("std"), dims[0], "preprocess.std", MIN_STD, MAX_ABS)
    threshold = meta.get("threshold")
    _need(path, threshold is None or (_number(threshold) and 0.0 <= threshold <= 1.0),
          "'threshold' must be a number in [0, 1]")
    try:
        expected = plan(arch, tuple(dims), len(classes)).params
    except SpecError as exc:
        raise FormatError(f"{path}: {exc}") from None
    _check_tensors(path, tensors, expected)
    try:
        model = Model(arch, tuple(dims), len(classes), seed=None)  # no random draws: weights come next
        model.load_state_dict(tensors)
    except SpecError as exc:
        raise FormatError(f"{path}: {exc}") from None
    train = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    temperature, min_conf = meta.get("temperature", 1.0), meta.get("min_confidence")
    _need(path, isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
          and 0.01 <= temperature <= 100, "'temperature' must be a number in [0.01, 100]")
    _need(path, min_conf is None or (isinstance(min_conf, (int, float)) and not isinstance(min_conf, bool)
                                     and 0.0 <= min_conf <= 1.0), "'min_confidence' must be a number in [0, 1]")
    return Classifier(model, classes, inp["color"], mean, std, None if threshold is None else float(threshold),
                      train, meta.get("metadata_sha256"), float(temperature), None if min_conf is None else float(min_conf),
                      RESIZE_NAMES[resize], source=str(path))


def save_decisions(path, values, expect):
    """Write decision metadata (any of threshold, temperature, min_confidence: float) into the weight file at
    path, only if the file still has metadata_sha256 `expect` (the content they were fitted on) and the result
    is a valid model file (every value in its range).

    The caller holds the file's OutputLock. Raises weights.ChangedError (exit 75) if the file was replaced,
    FormatError (exit 65) if a value is out of range; nothing is written in either case.
    """
    weights.update_metadata(path, {k: float(v) for k, v in values.items()}, expect=expect,
                            check=lambda tensors, meta: from_parts(path, tensors, meta))



def load(path):
    """Load and validate a weight file into a Classifier; raises FormatError / NoInputError naming the file."""
    tensors, meta = weights.load(path)
    return from_parts(path, tensors, meta)


def load_bytes(path, data):
    """A Classifier from the bytes of a weight file (weights.read_bytes), validated as load() does; path only
    names it in errors. Lets a caller read the file once and hand the very same bytes on (Dask workers)."""
    tensors, meta = weights.parse(path, data)
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
