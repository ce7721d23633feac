"""Which images `eval` scores, and which it may tune a threshold on.

A labeled DATA folder has up to three parts: training, validation and test. Validation is DATA/val/ (or
valid/, validation/), or, when training held it out itself, the files listed in the split manifest beside
the weights (MODEL.split.json, paths relative to DATA). Test is DATA/test/. A flat DATA/<class>/ folder
that is not the training folder is one unnamed part: the user's own labeled set.

Tuning (picking a threshold, fitting a temperature) reads the validation part by default and never the
test part unless asked: a test set that was tuned on no longer gives unbiased figures.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from cnncli.data import folders
from cnncli.errors import DataError
from cnncli.store import manifest, modelfile

SPLITS = ("train", "val", "test", "all")


@dataclass
class Part:
    """Labeled items [(path, class index)], a description for the report, and its split name (None: a plain
    labeled folder with no split of its own)."""

    items: list
    source: str
    split: str | None


def _manifest(data, model_path, clf, on_warn=None):
    """(doc, sidecar path) of the training split manifest when it belongs to these weights (the same run id
    in both) and describes DATA, else None (with a warning when DATA is the training folder)."""
    warn = on_warn or (lambda msg: None)
    side = modelfile.default_sidecar(model_path, ".split.json")
    trained_on = clf.train.get("data")
    same = trained_on is not None and os.path.realpath(trained_on) == os.path.realpath(data)
    doc = manifest.read_manifest(side) if side.exists() else None
    if doc is not None and doc["run_id"] != clf.train.get("run_id"):
        warn(f"ignored {side}: it was written by another training run than {model_path}")
        doc = None
    if doc is None or doc["classes"] != list(clf.classes) or not doc["val"]:
        if same and folders.split_folders(data) is None:
            warn(f"{data} is the folder {model_path} was trained on, with no held-out split recorded: "
                 "scores on it include training images")
        return None
    if not same and not all(p.exists() for p, _ in manifest.resolve_items(doc["val"], data)):
        return None
    return doc, side


class Splits:
    """The parts of DATA as seen by a model; each method returns a Part or None when DATA has no such part."""

    def __init__(self, data, model_path, clf, on_warn=None):
        self.data, self.classes = Path(data), list(clf.classes)
        folders.labeled_dir(data)  # existence and folder checks, with their exit codes
        split_dirs = folders.split_folders(data) or {}  # names in any letter case: Train/ is train/
        self.layout = "split" if split_dirs else "flat"
        self.train_dir, self.val_dir = split_dirs.get("train"), split_dirs.get("val")
        self.test_dir = split_dirs.get("test")
        self.has_test = self.test_dir is not None
        self.manifest = _manifest(data, model_path, clf, on_warn)

    def _folder(self, name, split):
        return Part(folders.scan_labeled(self.data / name, self.classes), str(self.data / name), split)

    def val(self):
        if self.val_dir:
            return self._folder(self.val_dir, "val")
        if self.manifest:
            doc, side = self.manifest
            return Part(manifest.resolve_items(doc["val"], self.data), f"held-out split recorded in {side}", "val")
        return None

    def test(self):
        return self._folder(self.test_dir, "test") if self.has_test else None

    def train(self):
        if self.manifest:  # training held the validation files out of this part: leave them out here too
            doc, side = self.manifest
            return Part(manifest.resolve_items(doc["train"], self.data), f"training split recorded in {side}",
                        "train")
        if self.layout == "split":
            return self._folder(self.train_dir, "train")
        return Part(folders.scan_labeled(self.data, self.classes), str(self.data), "train")

    def all(self):
        if self.layout == "flat":
            return Part(folders.scan_labeled(self.data, self.classes), str(self.data), "all")
        names = [self.train_dir, *([self.val_dir] if self.val_dir else []), *([self.test_dir] if self.has_test else [])]
        items = [it for n in names for it in folders.scan_labeled(self.data / n, self.classes)]
        return Part(items, f"{self.data} (all of {', '.join(n + '/' for n in names)})", "all")

    def plain(self):
        """A flat folder that is not the training folder: DATA's class folders, no split."""
        return Part(folders.scan_labeled(self.data, self.classes), str(self.data), None)

    def get(self, split):
        """The Part named by --split (train, val, test or all); DataError when DATA has no such part."""
        part = getattr(self, split)()
        if part is None:
            what = {"val": f"no val/ (valid/, validation/) folder and no split recorded beside the model",
                    "test": "no test/ folder"}[split]
            raise DataError(f"{self.data}: --split {split}: {what}")
        return part

    def scored(self, split=None):
        """What eval scores: the --split part, else test, else validation, else the plain folder."""
        if split:
            return self.get(split)
        part = self.test() or self.val()
        if part is not None:
            return part
        if self.layout == "split":
            raise DataError(f"{self.data}: has train/ but no test/ or val/ folder to evaluate on "
                            "(pass --split train to evaluate on the training data)")
        return self.plain()

    def tuning(self, split=None):
        """What a threshold or temperature is fitted on: the --split part, else validation, else the plain
        folder (when DATA is not split at all); DataError rather than the test part."""
        if split:
            return self.get(split)
        part = self.val()
        if part is not None:
            return part
        if self.layout == "split":
            raise DataError(f"{self.data}: no validation split to tune on (no val/ folder and no split recorded "
                            "beside the model); add DATA/val/, or pass --split test to tune on the test images "
                            "(their figures are then no longer unbiased)")
        return self.plain()
