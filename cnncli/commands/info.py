"""The `info` job: what a weight file holds, as a JSON-able document and as text for people.

No typer or rich here. Numbers are shown the way people write them (0.9833, not 0.9833333333333333; yes/no,
not True/False); the JSON keeps the stored values exactly.
"""

import os

from cnncli.errors import one_line
from cnncli.store import modelfile

# Training-summary keys in the order the text shows them, with their labels; others follow as stored.
_TRAIN_LABELS = {
    "data": "data", "images": "training images", "epochs": "epochs", "best_epoch": "best epoch",
    "stop_reason": "stopped", "epochs_planned": "planned epochs", "patience": "patience", "init": "started from",
    "init_sha256": "its metadata SHA-256", "init_output_layer": "its output layer", "frozen_layers": "frozen layers",
    "optimizer": "optimizer", "lr": "learning rate", "weight_decay": "weight decay",
    "batch_size": "batch size", "augment": "augment", "class_weights": "class weights", "seed": "seed",
    "automatic": "chosen automatically", "val_accuracy": "validation accuracy", "test_accuracy": "test accuracy",
    "cnncli_version": "cnncli version",
}

# The lists that hold one value per class: only these are labelled with class names. Any other list
# (automatic choices, warnings) is shown as it is, even when it happens to be as long as the classes.
_PER_CLASS = {"class_weights", "images_per_class"}


def describe(path):
    """The document `cnncli info --json` prints for the weight file at path (loaded and validated first)."""
    clf = modelfile.load(path)
    m = clf.model
    c, h, w = m.input_shape
    return {"file": str(path), "bytes": os.path.getsize(path), "arch": m.spec, "classes": clf.classes,
            "input": {"channels": c, "height": h, "width": w, "color": clf.color},
            "params": int(m.num_params()),
            "layers": [{"layer": t, "output_shape": list(s), "params": p} for t, s, p in m.summary()],
            "threshold": clf.threshold, "train": clf.train}


def _show(value, classes=None):
    """One value for people: yes/no, 4 significant digits, a per-class list as 'cat 1.25, dog 0.833'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = [_show(v) for v in value]
        if classes is not None and len(value) == len(classes):
            shown = [f"{one_line(c)} {v}" for c, v in zip(classes, shown)]
        return ", ".join(shown)
    return one_line(value)


def format_text(doc):
    """describe()'s document as lines of text."""
    inp, classes = doc["input"], doc["classes"]
    c = inp["channels"]
    out = [f"file: {one_line(doc['file'])} ({doc['bytes']:,} bytes)", f"arch: {doc['arch']}",
           f"input: {inp['width']}x{inp['height']}, {inp['color']} ({c} channel{'s' if c > 1 else ''})",
           f"classes ({len(classes)}): {', '.join(map(one_line, classes))}", "layers:"]
    out += [f"  {i + 1:>3} {r['layer']:<16} {'x'.join(map(str, r['output_shape'])):>12} {r['params']:>10,}"
            for i, r in enumerate(doc["layers"])]
    out.append(f"parameters: {doc['params']:,}")
    if doc["threshold"] is not None:
        out.append(f"threshold: {_show(doc['threshold'])}")
    train = doc["train"]
    if train:
        keys = [k for k in _TRAIN_LABELS if k in train] + sorted(k for k in train if k not in _TRAIN_LABELS)
        out.append("training:")
        out += [f"  {_TRAIN_LABELS.get(k, one_line(k))}: {_show(train[k], classes if k in _PER_CLASS else None)}"
                for k in keys]
    return "\n".join(out) + "\n"
