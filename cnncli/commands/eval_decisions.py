"""`eval --calibrate` and `eval --min-confidence`: what eval measures and stores besides the threshold.

No typer or rich here. Calibration fits a temperature on the tuning part (eval_splits.Splits.tuning: the
validation part unless --split says otherwise); the report shows ECE and Brier before and after, on the
tuning part and on the scored part.
"""

import numpy as np

from cnncli.report import calibration


def _scores(y, proba) -> dict:
    return {"ece": calibration.ece(y, proba), "brier": calibration.brier(y, proba)}


def fit(y, logits, clf, source) -> dict:
    """Fit a temperature on the tuning images' labels (N,) and raw logits float32 (N, K); returns the report's
    "calibration" entry without the scored-part figures: {"source", "temperature", "previous_temperature",
    "fit_nll_before", "fit_nll_after", "tuning": {"before": {ece, brier}, "after": {ece, brier}}}."""
    t = calibration.fit_temperature(y, logits)
    return {
        "source": source,
        "temperature": t,
        "previous_temperature": clf.temperature,
        "fit_nll_before": calibration.nll(y, logits, clf.temperature),
        "fit_nll_after": calibration.nll(y, logits, t),
        "tuning": {"before": _scores(y, calibration.softmax(logits, clf.temperature)),
                   "after": _scores(y, calibration.softmax(logits, t))},
    }


def scored_figures(y, before, after) -> dict:
    """{"before": {ece, brier}, "after": {ece, brier}} on the scored images: labels (N,), proba (N, K) each."""
    return {"before": _scores(y, before), "after": _scores(y, after)}


def confidence(y, proba, pred, min_confidence) -> dict:
    """What --min-confidence P does on the scored images: labels (N,), proba (N, K), predicted indices (N,).
    Returns {"value", "unknown" (images whose top probability is below P), "coverage" (fraction kept),
    "accuracy_covered" (accuracy on the kept images, None when none are kept)}."""
    keep = np.asarray(proba).max(axis=1) >= min_confidence
    n = int(keep.sum())
    return {"value": float(min_confidence), "unknown": int(len(keep) - n), "coverage": n / len(keep),
            "accuracy_covered": float((np.asarray(pred)[keep] == np.asarray(y)[keep]).mean()) if n else None}


def table_lines(report) -> list:
    """Text lines for the calibration and min-confidence parts of a report (empty when absent)."""
    out = []
    cal = report.get("calibration")
    if cal:
        s, t = cal["scored"], cal["tuning"]
        out.append(f"calibration: temperature {cal['temperature']:.4g} fitted on {cal['source']} "
                   f"(was {cal['previous_temperature']:.4g}); there ECE {t['before']['ece']:.4f} -> "
                   f"{t['after']['ece']:.4f}, Brier {t['before']['brier']:.4f} -> {t['after']['brier']:.4f}; "
                   f"scored images ECE {s['before']['ece']:.4f} -> {s['after']['ece']:.4f}, "
                   f"Brier {s['before']['brier']:.4f} -> {s['after']['brier']:.4f}")
    mc = report.get("min_confidence")
    if mc:
        acc = "n/a" if mc["accuracy_covered"] is None else f"{mc['accuracy_covered']:.4f}"
        out.append(f"min confidence {mc['value']:g}: {mc['unknown']} images unknown, coverage {mc['coverage']:.4f}, "
                   f"accuracy on the rest {acc}")
    return out
