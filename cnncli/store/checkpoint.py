"""A training checkpoint (`OUT.ckpt.safetensors`): its tensor names, and reading it back with every key checked
before it is used.

A checkpoint is a weight file (see weights.py) whose tensors are prefixed `model/`, `opt/` and `best/` and
whose metadata adds "kind": "checkpoint", the TrainState ("state", without best_weights), the TrainConfig
("config"), "optimizer_step" and the run's "options". A checkpoint with a key missing, an unknown key, or a
value of the wrong type or range is refused with one FormatError (exit 65) naming the file and the key,
never a TypeError / KeyError / ZeroDivisionError later in training.
"""

import math
from dataclasses import fields

import numpy as np

from cnncli.engine.training import TrainConfig, TrainState, frozen_layers
from cnncli.errors import FormatError
from cnncli.store import modelfile, weights

KIND = "checkpoint"
OPTIMIZERS = {"adam": (".m", ".v"), "sgd": ("",)}  # the state names each optimizer keeps per parameter


def stack_named(prefix, arrays):
    """{prefix + name: float32 array} for a checkpoint's `model/`, `opt/` or `best/` group; arrays maps names
    to arrays."""
    return {prefix + k: np.asarray(v, np.float32) for k, v in arrays.items()}


def _int(lo):
    return f"an integer >= {lo}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _num(lo, strict=False):
    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
            v > lo if strict else v >= lo)
    return f"a finite number {'>' if strict else '>='} {lo:g}", ok


def _opt(check):
    what, ok = check
    return f"null or {what}", lambda v: v is None or ok(v)


def _one_of(*values):
    return f"one of {', '.join(map(str, values))}", lambda v: isinstance(v, str) and v in values


def _kind(t, what):
    return what, lambda v: isinstance(v, t) and not isinstance(v, bool) if t is not bool else isinstance(v, bool)


_RUNNING = ("{loss, correct, seen} counters", lambda v: isinstance(v, dict) and set(v) == {"loss", "correct", "seen"}
            and _num(0)[1](v["loss"]) and _int(0)[1](v["correct"]) and _int(0)[1](v["seen"]))
_HISTORY = ("a list of epoch records", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v))
_WEIGHTS = ("null or a list of positive numbers", lambda v: v is None or (
    isinstance(v, list) and all(_num(0, strict=True)[1](w) for w in v)))

# augment: true / false from before --augment took a mode name; the option may be unset (None: the default).
_AUGMENT = ("none, light, photo, true or false", lambda v: isinstance(v, bool) or v in ("none", "light", "photo"))
_AUGMENT_OPTION = ("none, light, photo, true, false or null", lambda v: v is None or _AUGMENT[1](v))
# Checks for the fields cnncli knows; a field added to TrainState / TrainConfig later is required to be present
# but not type-checked here.
STATE = {"epoch": _int(0), "batch": _int(0), "step": _int(0), "elapsed": _num(0), "history": _HISTORY,
         "best_epoch": _int(0), "best_score": _opt(_num(-math.inf)), "epochs_without_gain": _int(0),
         "running": _RUNNING, "stop_reason": _kind(str, "a string")}
CONFIG = {"epochs": _int(1), "batch_size": _int(1), "lr": _num(0, strict=True), "optimizer": _one_of(*OPTIMIZERS),
          "weight_decay": _num(0), "schedule": _one_of("cosine", "constant"), "seed": _kind(int, "an integer"),
          "augment": _AUGMENT, "class_weights": _WEIGHTS, "patience": _opt(_int(1)),
          "max_time": _opt(_num(0, strict=True)), "clip_norm": _opt(_num(0, strict=True)),
          "freeze": _int(0)}
# Config fields added after checkpoints were first written, with the value an older checkpoint meant.
CONFIG_SINCE = {"freeze": 0}
OPTIONS = {"data": _kind(str, "a string"), "output": _kind(str, "a string"), "arch": _kind(str, "a string"),
           "size": _opt(("4 to 1024", lambda v: _int(4)[1](v) and v <= 1024)), "color": _one_of("auto", "gray", "rgb"),
           "epochs": _opt(_int(1)), "batch_size": _int(1), "lr": _num(0, strict=True), "optimizer": _one_of(*OPTIMIZERS),
           "weight_decay": _num(0), "val_split": ("a number in [0, 1)", lambda v: _num(0)[1](v) and v < 1),
           "seed": _kind(int, "an integer"), "augment": _AUGMENT_OPTION,
           "resize": _opt(_one_of("crop", "squash", "pad")), "class_weights": _one_of("none", "auto"), "patience": _opt(_int(0)), "max_time": _opt(_num(0, strict=True)),
           "clip_norm": _opt(_num(0, strict=True)), "threads": _opt(_int(1)), "overwrite": _kind(bool, "true or false"),
           "strict": _kind(bool, "true or false"), "plot": _opt(_kind(str, "a string")),
           "no_early_stop": _kind(bool, "true or false"), "init": _opt(_kind(str, "a string")), "freeze": _int(0)}


def _check_map(path, name, value, required, checks, extra_ok=False):
    """FormatError unless value is a dict with exactly `required` keys (any subset of `checks` if extra_ok)
    whose values pass their checks."""
    if not isinstance(value, dict):
        raise FormatError(f"{path}: damaged checkpoint: '{name}' is missing or not an object")
    missing = sorted(set(required) - set(value))
    extra = [] if extra_ok else sorted(set(value) - set(required))
    if missing or extra:
        raise FormatError(f"{path}: damaged checkpoint: '{name}' "
                          + "; ".join(([f"lacks {', '.join(missing[:5])}"] if missing else [])
                                      + ([f"has unknown {', '.join(map(str, extra[:5]))}"] if extra else [])))
    for key, v in value.items():
        if key in checks and not checks[key][1](v):
            raise FormatError(f"{path}: damaged checkpoint: '{name}.{key}' must be {checks[key][0]}")


def _check_tensor_group(path, group, tensors, expected):
    """FormatError unless tensors (name -> array) has exactly the names and shapes of expected."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    shaped = sorted(n for n in set(expected) & set(tensors) if tuple(tensors[n].shape) != tuple(expected[n]))
    if missing or extra or shaped:
        what = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}"] if extra else []) + (
            [f"mis-shaped {', '.join(shaped[:3])}"] if shaped else [])
        raise FormatError(f"{path}: damaged checkpoint: {group}/ tensors do not match the model ({'; '.join(what)})")


def read(path):
    """Read and validate a checkpoint. Returns (Classifier, TrainState, TrainConfig, optimizer tensors
    {name: float32 array}, metadata dict). Raises FormatError (exit 65) / NoInputError (exit 66)."""
    tensors, meta = weights.load(path)
    if meta.get("kind") != KIND:
        raise FormatError(f"{path}: not a cnncli training checkpoint")
    parts = {}
    for name, arr in tensors.items():
        prefix, _, rest = name.partition("/")
        parts.setdefault(prefix, {})[rest] = arr
    unknown = sorted(set(parts) - {"model", "opt", "best"})
    if unknown:
        raise FormatError(f"{path}: damaged checkpoint: unexpected tensors under {', '.join(unknown[:3])}")
    clf = modelfile.from_parts(path, parts.get("model", {}), meta)
    shapes = clf.model.expected_shapes()
    _check_map(path, "state", meta.get("state"), [f.name for f in fields(TrainState) if f.name != "best_weights"],
               STATE)
    if isinstance(meta.get("config"), dict):
        meta["config"] = {**CONFIG_SINCE, **meta["config"]}
    _check_map(path, "config", meta.get("config"), [f.name for f in fields(TrainConfig)], CONFIG)
    _check_map(path, "options", meta.get("options"), [], OPTIONS, extra_ok=True)
    cfg = TrainConfig(**meta["config"])
    if cfg.class_weights is not None and len(cfg.class_weights) != len(clf.classes):
        raise FormatError(f"{path}: damaged checkpoint: 'config.class_weights' needs one weight per class")
    step = meta.get("optimizer_step")
    if not _int(0)[1](step):
        raise FormatError(f"{path}: damaged checkpoint: 'optimizer_step' must be an integer >= 0")
    try:
        frozen = frozen_layers(clf.model, cfg.freeze)
    except ValueError as exc:
        raise FormatError(f"{path}: damaged checkpoint: 'config.freeze': {exc}") from None
    # Before the first step an optimizer holds no state; after it, one entry per trained parameter outside the
    # frozen layers (which the optimizer never sees) and suffix; batch norm's running statistics are not trained.
    trained = clf.model.expected_shapes(buffers=False)
    opt_expected = {} if step == 0 else {p + s: shape for p, shape in trained.items() for s in OPTIMIZERS[cfg.optimizer]
                                         if int(p.split(".")[1]) not in frozen}
    _check_tensor_group(path, "opt", parts.get("opt", {}), opt_expected)
    if "best" in parts:
        _check_tensor_group(path, "best", parts["best"], shapes)
    st = dict(meta["state"])
    st["best_score"] = -math.inf if st["best_score"] is None else st["best_score"]
    st["best_weights"] = parts.get("best")
    return clf, TrainState(**st), cfg, parts.get("opt", {}), meta
