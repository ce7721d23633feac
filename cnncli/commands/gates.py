"""The grammar of eval's rule options: `--fail-under METRIC=BAR[,...]` and `--pick-threshold RULE`.

Command-line spelling lives here, next to the other commands; report/metrics.py and report/thresholds.py
compute the numbers and know nothing of options. Parsing happens before any image is decoded, so a typo costs nothing; every
mistake is a UsageError naming the option.
"""

import math
import re

from cnncli.errors import UsageError
from cnncli.report.metrics import BINARY_ONLY_METRICS, INTERVAL_METRICS, PER_CLASS_METRICS, TOP_LEVEL_METRICS

_NAME_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(.*)\])?(?:\.(lo|hi))?$")
_RULE_RE = re.compile(r"^\s*(sensitivity|specificity)\s*=\s*(\S+)\s*$")


def _valid_names():
    return (", ".join([*TOP_LEVEL_METRICS, *(f"{m}[CLASS]" for m in PER_CLASS_METRICS)])
            + "; add .lo or .hi for an interval bound of " + ", ".join(INTERVAL_METRICS))


def _split_top_level(text):
    """Split on commas that are not inside [...], so class names may contain commas."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _metric(name, classes):
    """'recall[cat].lo' -> (canonical name, base, class or None, bound or None); UsageError for a name the
    report cannot have (unknown metric or class, a two-class metric on more classes, a bound without interval)."""
    m = _NAME_RE.match(name)
    base, cls, bound = (m.group(1).lower(), m.group(2), m.group(3)) if m else ("", None, None)
    if (cls is None and base not in TOP_LEVEL_METRICS or cls is not None and base not in PER_CLASS_METRICS
            or bound is not None and base not in INTERVAL_METRICS):
        raise UsageError(f"--fail-under: unknown metric {name!r}; valid: {_valid_names()}")
    if cls is not None and classes is not None and cls not in classes:
        raise UsageError(f"--fail-under: unknown class {cls!r} in {name!r}; classes: {', '.join(map(str, classes))}")
    if base in BINARY_ONLY_METRICS and classes is not None and len(classes) != 2:
        raise UsageError(f"--fail-under: {base} needs exactly two classes, the model has {len(classes)}")
    canonical = (f"{base}[{cls}]" if cls is not None else base) + (f".{bound}" if bound else "")
    return canonical, base, cls, bound


def parse_fail_under(values, classes=None):
    """`--fail-under` values (one string or a list, each `metric=bar[,metric=bar...]`) -> [(metric, bar)].

    A metric is a top-level name (metrics.TOP_LEVEL_METRICS) or per class `precision[CLASS]`, `recall[CLASS]`,
    `f1[CLASS]`; any of metrics.INTERVAL_METRICS may end in `.lo` / `.hi` to gate on a bound of its 95%
    interval (`sensitivity.lo`, `recall[CLASS].lo`). Bars are numbers in [0, 1]. With `classes` (the model's), CLASS must be one of them and
    two-class metrics need two classes. Anything else raises UsageError naming what is valid.
    """
    items = [values] if isinstance(values, str) else list(values)
    gates = []
    for item in items:
        for part in _split_top_level(str(item)):
            part = part.strip()
            if not part:
                continue
            name, sep, bar_text = part.rpartition("=")
            name, bar_text = name.strip(), bar_text.strip()
            if not sep or not name:
                raise UsageError(f"--fail-under: {part!r} is not METRIC=BAR (e.g. accuracy=0.9)")
            canonical = _metric(name, classes)[0]
            try:
                bar = float(bar_text)
            except ValueError:
                raise UsageError(f"--fail-under: {part!r}: bar {bar_text!r} is not a number") from None
            if not (math.isfinite(bar) and 0.0 <= bar <= 1.0):
                raise UsageError(f"--fail-under: {part!r}: bar must be a number in [0, 1]")
            gates.append((canonical, bar))
    if not gates:
        raise UsageError(f"--fail-under: no METRIC=BAR given; valid metrics: {_valid_names()}")
    return gates


def _fmt_pair(value, bar):
    # Enough decimals that a value just under the bar does not print equal to it.
    for d in range(2, 17):
        a, b = f"{value:.{d}f}", f"{bar:.{d}f}"
        if a != b:
            return a, b
    return repr(value), repr(bar)


def check(report, gates):
    """Missed bars as readable strings (`accuracy 0.84 < 0.90`); empty when all passed.

    report: metrics.classification_report's dict; gates: parse_fail_under's list, parsed with the report's
    classes. A metric passes when value >= bar; an undefined one (None, e.g. roc_auc on one-class data) fails.
    """
    failures = []
    for metric, bar in gates:
        _, base, cls, bound = _metric(metric, report["classes"])
        where = report["per_class"][cls] if cls is not None else report
        value = where[base] if bound is None else (where.get("ci", {}).get(base) or {}).get(bound)
        if value is None:
            failures.append(f"{metric} is undefined (nothing to compute it from), needs >= {bar:g}")
        elif not value >= bar:
            a, b = _fmt_pair(float(value), float(bar))
            failures.append(f"{metric} {a} < {b}")
    return failures


def parse_threshold_rule(text):
    """`--pick-threshold` -> (kind, target): ('sensitivity' | 'specificity', X in (0, 1]) or ('youden', None).

    Raises UsageError for anything else."""
    text = str(text).strip()
    if text.lower() == "youden":
        return "youden", None
    m = _RULE_RE.match(text)
    if not m:
        raise UsageError(f"--pick-threshold: unknown rule {text!r}; use sensitivity=X, specificity=X "
                         "(0 < X <= 1) or youden")
    try:
        target = float(m.group(2))
    except ValueError:
        target = math.nan
    if not (0.0 < target <= 1.0):
        raise UsageError(f"--pick-threshold: {text!r}: the target must be a number in (0, 1]")
    return m.group(1), target
