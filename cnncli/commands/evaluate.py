"""The `eval` job: a labeled folder and a weight file in, a metrics report out.

No typer or rich here. `run` returns a JSON-able report; `format_table` renders it for people.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli.data import folders

from cnncli.report import metrics

from cnncli.store import modelfile
from cnncli.errors import DataError, GateError, UsageError, one_line


@dataclass
class EvalOptions:
    data: str
    model: str
    threshold: float | None = None
    pick_threshold: str | None = None
    save_threshold: bool = False
    errors: int = 0
    fail_under: list | None = None
    plot: str | None = None
    wait: float = 0.0


def _manifest_items(data, model_path, clf):
    """Held-out items from the training split manifest beside the weights, if DATA is that training folder."""
    side = modelfile.default_sidecar(model_path, ".split.json")
    if not side.exists():
        return None
    doc = folders.read_manifest(side)
    if doc["classes"] != list(clf.classes) or not doc["val"]:
        return None
    trained_on = clf.train.get("data")
    same = trained_on is not None and os.path.realpath(trained_on) == os.path.realpath(data)
    items = folders.resolve_items(doc["val"], data)
    if not same and not all(p.exists() for p, _ in items):
        return None
    return items, str(side)


def select_items(data, model_path, clf):
    """(items, source description): DATA/test/, else DATA/val/, else the training manifest's held-out files
    when DATA is the training folder, else DATA as a plain class folder."""
    folder = folders.labeled_dir(data)
    if Path(folder) == Path(data):
        found = _manifest_items(data, model_path, clf)
        if found:
            return found[0], f"held-out split recorded in {found[1]}"
    return folders.scan_labeled(data, clf.classes), str(folder)


def run(opts, on_warn=None):
    """Evaluate; returns the report dict (metrics.classification_report keys plus "source", "model",
    "skipped_files", "gate_failures", and optional "picked_threshold", "saved_threshold", "errors").
    Missed --fail-under bars are listed in report["gate_failures"]; the caller turns them into an exit code
    (see gate_error) after printing the report."""
    model_path = Path(opts.model)
    clf = modelfile.load(model_path)
    binary = len(clf.classes) == 2
    if not binary and (opts.threshold is not None or opts.pick_threshold or opts.save_threshold):
        raise UsageError("--threshold / --pick-threshold / --save-threshold need a two-class model, "
                         f"this one has {len(clf.classes)} classes")
    if opts.save_threshold and not opts.pick_threshold:
        raise UsageError("--save-threshold: needs --pick-threshold RULE")
    gates = metrics.parse_gate(opts.fail_under, clf.classes) if opts.fail_under else []
    if opts.pick_threshold:  # validate the rule before decoding anything
        metrics.pick_threshold([0, 1], [0.0, 1.0], opts.pick_threshold)
    items, source = select_items(opts.data, model_path, clf)

    def on_bad(path, reason):
        if on_warn is not None:
            on_warn(f"skipped {path}: {reason}")

    loaded = folders.load_images(items, clf.size, color=clf.color, on_bad=on_bad, classes=clf.classes)
    if len(loaded.y) == 0:
        raise DataError(f"{source}: no readable images")
    proba = clf.proba(loaded.x)
    threshold = opts.threshold if opts.threshold is not None else clf.threshold
    picked = None
    if opts.pick_threshold:
        y01 = (loaded.y == 1).astype(np.int64)
        if y01.min() == y01.max():
            raise DataError(f"{source}: --pick-threshold needs images of both classes")
        threshold, picked = metrics.pick_threshold(y01, proba[:, 1], opts.pick_threshold)
    report = metrics.classification_report(loaded.y, proba, clf.classes, threshold if binary else None)
    report.update({"source": source, "model": str(model_path), "skipped_files": len(loaded.bad)})
    if picked:
        report["picked_threshold"] = picked
    if opts.save_threshold:
        from cnncli.store import weights
        from cnncli.store.atomic import OutputLock

        with OutputLock(model_path, wait=opts.wait):
            weights.update_metadata(model_path, {"threshold": float(threshold)})
        report["saved_threshold"] = {"file": str(model_path), "threshold": float(threshold)}
    if opts.errors:
        wrong = metrics.most_confident_errors([str(p) for p, _ in loaded.items], loaded.y, proba, opts.errors,
                                              threshold if binary else None)
        report["errors"] = [{"path": p, "true": clf.classes[t], "predicted": clf.classes[k], "probability": v}
                            for p, t, k, v in wrong]
    if opts.plot:
        from cnncli.report import plots

        roc = None
        if binary and 0 < int((loaded.y == 1).sum()) < len(loaded.y):
            roc = metrics.roc_curve((loaded.y == 1).astype(np.int64), proba[:, 1])
        plots.plot_eval(opts.plot, report, roc)
    report["gate_failures"] = metrics.check_gate(report, gates) if gates else []
    return report


def gate_error(report):
    """GateError listing the failed bars, or None when every --fail-under bar was met."""
    fails = report.get("gate_failures")
    return GateError("quality gate failed: " + "; ".join(fails)) if fails else None


def _f(v):
    return "n/a" if v is None else f"{v:.4f}"


def format_table(report):
    """The report as plain text lines for a person."""

    classes = report["classes"]
    out = [f"source: {one_line(report['source'])} ({report['n']} images"
           + (f", {report['skipped_files']} unreadable skipped" if report["skipped_files"] else "") + ")",
           f"accuracy: {_f(report['accuracy'])}", f"balanced accuracy: {_f(report['balanced_accuracy'])}",
           f"macro precision / recall / F1: {_f(report['macro_precision'])} / {_f(report['macro_recall'])} / "
           f"{_f(report['macro_f1'])}"]
    if "threshold" in report:
        out.append(f"positive class: {report['positive_class']}; threshold {report['threshold']:.6g}; "
                   f"sensitivity {_f(report['sensitivity'])}; specificity {_f(report['specificity'])}; "
                   f"ROC AUC {_f(report['roc_auc'])}")
    if "picked_threshold" in report:
        pt = report["picked_threshold"]
        out.append(f"picked threshold ({pt['rule']}): {pt['threshold']:.6g} (sensitivity {pt['sensitivity']:.4f}, "
                   f"specificity {pt['specificity']:.4f})")
    if "saved_threshold" in report:
        out.append(f"saved threshold {report['saved_threshold']['threshold']:.6g} "
                   f"to {one_line(report['saved_threshold']['file'])}")
    w = max(8, *(len(c) for c in classes))
    out += ["", f"{'class':<{w}}  precision  recall      f1  support"]
    for c in classes:
        r = report["per_class"][c]
        out.append(f"{c:<{w}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    m = report["confusion_matrix"]["matrix"]
    cw = max(5, *(len(str(v)) for row in m for v in row), *(len(c) for c in classes))
    out += ["", "confusion matrix (rows: true, columns: predicted)",
            " " * (w + 2) + " ".join(f"{c:>{cw}}" for c in classes)]
    for c, row in zip(classes, m):
        out.append(f"{c:<{w}}  " + " ".join(f"{v:>{cw}}" for v in row))
    if report.get("errors"):
        out += ["", "most confident errors (probability, true -> predicted, file):"]
        out += [f"{e['probability']:.4f}  {e['true']} -> {e['predicted']}  {one_line(e['path'])}"
                for e in report["errors"]]
    return "\n".join(out) + "\n"
