"""The `eval` job: a labeled folder and a weight file in, a metrics report out.

No typer or rich here. `run` returns a JSON-able report; `format_table` renders it for people.
"""

import contextlib
from dataclasses import dataclass
import os
from pathlib import Path

import numpy as np

from cnncli.commands import eval_splits, gates, outputs
from cnncli.data import folders
from cnncli.errors import DataError, UsageError, one_line
from cnncli.commands import eval_decisions
from cnncli.batch import scoring
from cnncli.report import calibration, metrics, thresholds
from cnncli.store import modelfile, weights


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
    errors_image: str | None = None
    wait: float = 0.0
    split: str | None = None  # train, val, test, all; None: see eval_splits.Splits.scored / tuning
    overwrite: bool = False  # may --plot replace an existing file
    calibrate: bool = False  # fit a temperature on the tuning part and store it in the weight file
    min_confidence: float | None = None  # report (and with save_threshold store) this "unknown" cut-off
    shard: tuple | None = None  # (i, n): score only shard i of n of the scored part (commands/shard.py)
    tta: bool = False  # average each image's logits with its mirror's
    progress: bool = True  # a bar over the scored images on stderr, when it is a terminal and they are many
    scheduler: str | None = None  # --scheduler: score on a Dask cluster (commands/cluster.parse_scheduler)
    no_cache: bool = False  # read and write no decode cache (store/decode_cache.py)


def _open_cache(opts):
    """The decode cache eval reads and fills (store/decode_cache.py, as train's), or None: --no-cache,
    CNNCLI_CACHE_SIZE=0, or --scheduler (the cluster's workers decode). UsageError for a bad CNNCLI_CACHE_SIZE."""
    if opts.no_cache:
        return None
    from cnncli.store import decode_cache

    try:
        cache = decode_cache.open_cache(True)[0]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return None if opts.scheduler else cache


def _load(part, clf, on_warn, progress=False, cluster=None, cache=None):
    """Decode a Part's images and run the model over them, one call per scoring.eval_chunk input files (here,
    or on a Dask cluster: commands/cluster.EvalCluster, whose Loaded.x is None). Returns (folders.Loaded,
    logits float32 (N, K)). DataError when none decode.
    progress: draw a bar over the decoding (on a terminal only, and only for more than LONG_RUN images).
    cache: the decode cache (DecodeCache) to decode through here, or None."""
    def on_bad(path, reason):
        if on_warn is not None:
            on_warn(f"skipped {path}: {reason}")

    from cnncli.commands.progress import LONG_RUN, InputsProgress, live_terminal

    long_run = progress and len(part.items) >= LONG_RUN
    bar = InputsProgress("eval", len(part.items)) if long_run and live_terminal() else None
    tick = bar.update if bar is not None else None
    try:  # README: unreadable images are skipped, always
        if cluster is not None:
            loaded, logits = cluster.load(part.items, clf, on_bad, on_progress=tick)
        else:
            loaded = folders.load_images(part.items, clf.size, color=clf.color, on_bad=on_bad, classes=clf.classes,
                                         allow_lost_classes=True, resize=clf.resize, on_progress=tick,
                                         decoder=cache.decode if cache is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if len(loaded.y) == 0:
        raise DataError(f"{part.source}: no readable images")
    if cluster is None:
        bad = {str(p) for p, _ in loaded.bad}
        logits = scoring.logits_in_chunks(clf, loaded.x, [str(Path(p)) not in bad for p, _ in part.items])
    return loaded, logits


def _tuning(opts, splits, scored, scored_loaded, clf, on_warn, what, cluster=None, cache=None):
    """The tuning part (eval_splits.Splits.tuning) and its (Loaded, logits) (_load), reusing scored_loaded when it
    is the scored part; warns when the tuning spends the test images or is scored on itself."""
    tune = splits.tuning(opts.split)
    warn = on_warn or (lambda msg: None)
    if tune.split in ("test", "all") and splits.has_test:
        warn(f"{what} on the test images ({tune.source}): their figures are no longer unbiased")
    elif tune.source == scored.source:
        warn(f"{what} on the images it is scored on ({tune.source}): expect lower figures on new "
             "images; score a separate test/ folder")
    return tune, (scored_loaded if tune.source == scored.source
                  else _load(tune, clf, on_warn, cluster=cluster, cache=cache))


def _pick(rule, tune, tuned, clf, on_warn):
    """Pick the threshold by rule (kind, target) on the tuning images ((folders.Loaded, logits)); returns
    (threshold, picked dict)."""
    loaded, logits = tuned
    proba = clf.proba_from_logits(logits)
    y01 = (loaded.y == 1).astype(np.int64)
    if y01.min() == y01.max():
        raise DataError(f"{tune.source}: --pick-threshold needs images of both classes")
    threshold, picked = thresholds.pick_threshold(y01, proba[:, 1], *rule)
    picked["source"] = tune.source
    if picked.get("warning") and on_warn is not None:
        on_warn(f"{tune.source}: {picked['warning']}")
    return threshold, picked


def _save(opts, model_path, digest, report, threshold):
    """Write what eval decided into the weight file, in one update under its lock: the temperature
    (--calibrate), the picked threshold and the min confidence (--save-threshold)."""
    keys = {"temperature": report["calibration"]["temperature"]} if "calibration" in report else {}
    if opts.save_threshold and opts.pick_threshold:
        keys["threshold"] = float(threshold)
    if opts.save_threshold and opts.min_confidence is not None:
        keys["min_confidence"] = float(opts.min_confidence)
    if not keys:
        return
    if not 0.0 <= keys.get("threshold", 0.0) <= 1.0:  # above every score: "nothing is positive" is no threshold
        raise DataError(f"--save-threshold: the picked threshold {threshold:.17g} is above every possible "
                        "probability (it would classify nothing as positive); not saved")
    # A symlinked -m (cur.safetensors -> models/v3.safetensors) is saved into the file it points at, under
    # that file's lock: replacing the link would leave the scored file without what was fitted on it.
    target = Path(os.path.realpath(model_path))
    with modelfile.output_lock(target, wait=opts.wait):
        # Under the lock, and only if the file still holds what these were fitted on.
        modelfile.save_decisions(target, keys, expect=digest)
    if "threshold" in keys:
        report["saved_threshold"] = {"file": str(model_path), "threshold": keys["threshold"]}
    report["saved"] = {"file": str(model_path), **keys}


def run(opts, on_warn=None):
    """Evaluate; returns the report dict (metrics.classification_report keys plus "source", "split", "model",
    "skipped_files", "ece", "brier", "gate_failures", and optional "picked_threshold", "calibration",
    "min_confidence", "saved" (and "saved_threshold"), "errors").
    Missed --fail-under bars are listed in report["gate_failures"] (one text per bar); the caller prints the
    report, then one line per missed bar, and exits 3. on_warn(message) receives warnings (skipped files, a threshold
    tuned on test images, too few examples for a target). None when --shard leaves none of the images."""
    model_path = Path(opts.model)
    plot_out = {what: path for what, path in (("--plot file", opts.plot), ("--errors-image file", opts.errors_image))
                if path}
    if plot_out:  # the output rules of commands/outputs.py, before the model or any image is read
        for path in plot_out.values():
            outputs.check_plot_suffix(path)
        outputs.check_outputs(plot_out, opts.overwrite)
    from cnncli.commands.cluster import parse_scheduler

    spec = parse_scheduler(opts.scheduler)
    if spec and opts.errors_image:
        raise UsageError("--errors-image: draws the images, which a cluster's workers do not send back; "
                         "not with --scheduler")
    data = weights.read_bytes(model_path)  # read once: a cluster's workers get these very bytes
    clf = modelfile.load_bytes(model_path, data)
    clf.tta = opts.tta
    binary = len(clf.classes) == 2
    if not binary and (opts.threshold is not None or opts.pick_threshold):
        raise UsageError("--threshold / --pick-threshold need a two-class model, "
                         f"this one has {len(clf.classes)} classes")
    if opts.save_threshold and not opts.pick_threshold and opts.min_confidence is None:
        raise UsageError("--save-threshold: needs --pick-threshold RULE or --min-confidence P")
    if opts.split is not None and opts.split not in eval_splits.SPLITS:
        raise UsageError(f"--split: must be one of {', '.join(eval_splits.SPLITS)}, got {opts.split!r}")
    bars = gates.parse_fail_under(opts.fail_under, clf.classes) if opts.fail_under else []
    rule = gates.parse_threshold_rule(opts.pick_threshold) if opts.pick_threshold else None
    if opts.plot:  # a picture that cannot be drawn fails before decoding, not after
        from cnncli.report import eval_chart

        try:
            eval_chart.check_plottable(len(clf.classes))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if opts.errors_image:
        from cnncli.report import mosaic
    splits = eval_splits.Splits(opts.data, model_path, clf, on_warn)
    scored = splits.scored(opts.split)
    if opts.shard is not None:
        from cnncli.commands.shard import take_shard

        scored = eval_splits.Part(list(take_shard(scored.items, opts.shard, key=lambda it: str(it[0]))),
                                  f"{scored.source}, shard {opts.shard[0]}/{opts.shard[1]}", scored.split)
        if not scored.items:  # as in predict: a job array's empty shard has nothing to do, which is no error
            if on_warn is not None:
                on_warn(f"{scored.source}: no image falls in this shard; nothing scored")
            return None
    outputs.check_not_inputs(plot_out, [model_path, *(p for p, _ in scored.items)], root=opts.data)
    threshold = opts.threshold if opts.threshold is not None else clf.threshold
    picked = calibrated = None
    cache = _open_cache(opts)
    with contextlib.ExitStack() as stack:
        cluster = None
        if spec:
            from cnncli.commands.cluster import EvalCluster

            cluster = stack.enter_context(EvalCluster(spec, str(model_path), data))
        loaded, logits = _load(scored, clf, on_warn, opts.progress, cluster, cache)
        if opts.calibrate or opts.pick_threshold:
            what = "temperature fitted" if opts.calibrate else "threshold picked"
            tune, tuned = _tuning(opts, splits, scored, (loaded, logits), clf, on_warn, what, cluster, cache)
    if cache is not None and cache.written and cache.off_reason is None:
        cache.trim()  # to its cap, as train does after adding entries
    proba = clf.proba_from_logits(logits)
    if opts.calibrate:  # first: a threshold is then picked on the calibrated probabilities predict will see
        calibrated = eval_decisions.fit(tuned[0].y, tuned[1], clf, tune.source)
        before, clf.temperature = proba, calibrated["temperature"]
        proba = clf.proba_from_logits(logits)
        calibrated["scored"] = eval_decisions.scored_figures(loaded.y, before, proba)
    if rule:
        threshold, picked = _pick(rule, tune, tuned, clf, on_warn)
    report = metrics.classification_report(loaded.y, proba, clf.classes, threshold if binary else None)
    report.update({"source": scored.source, "split": scored.split, "model": str(model_path),
                   "skipped_files": len(loaded.bad), "ece": calibration.ece(loaded.y, proba),
                   "brier": calibration.brier(loaded.y, proba)})
    if picked:
        report["picked_threshold"] = picked
    if calibrated:
        report["calibration"] = calibrated
    min_conf = opts.min_confidence if opts.min_confidence is not None else clf.min_confidence
    if min_conf is not None:
        report["min_confidence"] = eval_decisions.confidence(
            loaded.y, proba, metrics.predict_labels(proba, threshold if binary else None), min_conf)
    _save(opts, model_path, clf.digest, report, threshold)
    if opts.errors:
        wrong = metrics.most_confident_errors([str(p) for p, _ in loaded.items], loaded.y, proba, opts.errors,
                                              threshold if binary else None)
        report["errors"] = [{"path": p, "true": clf.classes[t], "predicted": clf.classes[k], "probability": v}
                            for p, t, k, v in wrong]
    if opts.plot:
        # Calibrated probabilities (stored temperature or --calibrate) get a reliability diagram; with
        # --calibrate it also shows the probabilities before.
        reliability = None
        if calibrated or clf.temperature != 1.0:
            reliability = eval_chart.reliability_bins(loaded.y, proba)
            if calibrated:
                reliability["before"] = eval_chart.reliability_bins(loaded.y, before)
        eval_chart.plot_eval(opts.plot, report, loaded.y, proba, reliability)
    if opts.errors_image:
        mosaic.plot_errors(opts.errors_image, loaded.x, loaded.y, proba, clf.classes, [p for p, _ in loaded.items],
                           opts.errors or mosaic.DEFAULT_TILES, threshold if binary else None)
    report["gate_failures"] = gates.check(report, bars) if bars else []
    return report


def _f(v):
    return "n/a" if v is None else f"{v:.4f}"


def _ci(ci):
    """' [lo, hi]' for an interval dict, '' when there is none."""
    return "" if not ci else f" [{ci['lo']:.4f}, {ci['hi']:.4f}]"


def _with_ci(report, key):
    return _f(report[key]) + _ci(report.get("ci", {}).get(key))


def format_table(report):
    """The report as plain text lines for a person."""

    classes = [one_line(c) for c in report["classes"]]  # a newline in a class name must not break a row
    out = [f"source: {one_line(report['source'])} ({report['n']} images"
           + (f", {report['skipped_files']} unreadable skipped" if report["skipped_files"] else "") + ")",
           f"accuracy: {_with_ci(report, 'accuracy')}", f"balanced accuracy: {_f(report['balanced_accuracy'])}",
           f"macro precision / recall / F1: {_f(report['macro_precision'])} / {_f(report['macro_recall'])} / "
           f"{_f(report['macro_f1'])}"
           + (f" (over the classes present; absent: {', '.join(map(one_line, report['absent_classes']))})"
              if report.get("absent_classes") else "")]
    if "threshold" in report:
        out += [f"positive class: {one_line(report['positive_class'])}; threshold {report['threshold']:.6g}",
                f"sensitivity: {_with_ci(report, 'sensitivity')}", f"specificity: {_with_ci(report, 'specificity')}",
                f"ROC AUC: {_with_ci(report, 'roc_auc')}"]
    if "picked_threshold" in report:
        pt = report["picked_threshold"]
        line = (f"picked threshold ({pt['rule']}) on {one_line(pt['source'])}: {pt['threshold']:.6g}, there "
                f"sensitivity {pt['sensitivity']:.4f}, specificity {pt['specificity']:.4f}")
        if "target_lo" in pt:
            line += f"; 95% lower bound of the achieved {pt['rule'].split('=')[0]}: {pt['target_lo']:.4f}"
        out.append(line)
    out += eval_decisions.table_lines(report)
    out.append(f"ECE: {report['ece']:.4f}; Brier: {report['brier']:.4f}")
    if "saved" in report:
        saved = {k: v for k, v in report["saved"].items() if k != "file"}
        out.append("saved " + ", ".join(f"{k} {v:.6g}" for k, v in saved.items())
                   + f" to {one_line(report['saved']['file'])}")
    w = max(8, *(len(c) for c in classes))
    cw_ = 25 if "ci" in report else 9
    out += ["", f"{'class':<{w}}  {'precision':<{cw_}}  {'recall':<{cw_}}  f1      support"]
    for c, name in zip(classes, report["classes"]):
        r = report["per_class"][name]
        ci = r.get("ci", {})
        prec, rec = f"{r['precision']:.4f}{_ci(ci.get('precision'))}", f"{r['recall']:.4f}{_ci(ci.get('recall'))}"
        out.append(f"{c:<{w}}  {prec:<{cw_}}  {rec:<{cw_}}  {r['f1']:.4f}  {r['support']:7d}")
    if "ci_method" in report:
        out.append(f"[lo, hi]: 95% intervals; rates: {report['ci_method']['rates']}; "
                   f"ROC AUC: {report['ci_method']['roc_auc']}")
    m = report["confusion_matrix"]["matrix"]
    cw = max(5, *(len(str(v)) for row in m for v in row), *(len(c) for c in classes))
    out += ["", "confusion matrix (rows: true, columns: predicted)",
            " " * (w + 2) + " ".join(f"{c:>{cw}}" for c in classes)]
    for c, row in zip(classes, m):
        out.append(f"{c:<{w}}  " + " ".join(f"{v:>{cw}}" for v in row))
    if report.get("errors"):
        out += ["", "most confident errors (probability, true -> predicted, file):"]
        out += [f"{e['probability']:.4f}  {one_line(e['true'])} -> {one_line(e['predicted'])}  "
                f"{one_line(e['path'])}" for e in report["errors"]]
    return "\n".join(out) + "\n"
