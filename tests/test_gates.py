"""eval's rule grammar (commands/gates.py): --fail-under METRIC=BAR and --pick-threshold RULE.

The commands drive these through the real `cnncli eval` in tests/test_eval.py; here each form and each
mistake is pinned one by one.
"""

import numpy as np
import pytest

from cnncli.commands import gates
from cnncli.errors import UsageError
from cnncli.report import metrics as m


def test_parse_fail_under_forms():
    got = gates.parse_fail_under(["accuracy=0.9, balanced_accuracy = 0.8", "recall[dog]=0.5,f1[a, b]=0.25"])
    assert got == [("accuracy", 0.9), ("balanced_accuracy", 0.8), ("recall[dog]", 0.5), ("f1[a, b]", 0.25)]
    assert gates.parse_fail_under("roc_auc=1") == [("roc_auc", 1.0)]
    assert gates.parse_fail_under(["macro_f1=0.7", "F1[cat]=0"]) == [("macro_f1", 0.7), ("f1[cat]", 0.0)]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("acc=0.9", "balanced_accuracy"),  # unknown metric: message lists the valid names
        ("accuracy", "METRIC=BAR"),
        ("accuracy=nan", "[0, 1]"),
        ("accuracy=inf", "[0, 1]"),
        ("accuracy=1.5", "[0, 1]"),
        ("accuracy=-0.1", "[0, 1]"),
        ("accuracy=high", "not a number"),
        ("support[dog]=0.5", "unknown metric"),
        ("recall=0.5", "unknown metric"),
        ("", "no METRIC=BAR"),
    ],
)
def test_parse_fail_under_errors(text, fragment):
    with pytest.raises(UsageError) as e:
        gates.parse_fail_under(text)
    assert str(e.value).startswith("--fail-under: ") and fragment in str(e.value) and "\n" not in str(e.value)


def test_parse_fail_under_checks_the_models_classes():
    with pytest.raises(UsageError, match="cat, dog"):
        gates.parse_fail_under("recall[cow]=0.5", classes=["cat", "dog"])
    assert gates.parse_fail_under("recall[cat]=0.5", classes=["cat", "dog"]) == [("recall[cat]", 0.5)]
    with pytest.raises(UsageError, match="roc_auc needs exactly two classes, the model has 3"):
        gates.parse_fail_under("roc_auc=0.5", classes=["a", "b", "c"])


def _report():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9, 0.9, 0.95])
    return m.classification_report(y, np.c_[1 - p1, p1], ["cat", "dog"])


def test_check_pass_and_fail():
    r = _report()
    acc = r["accuracy"]  # 8 / 10
    assert gates.check(r, [("accuracy", acc)]) == []  # equal to the bar passes
    fails = gates.check(r, gates.parse_fail_under("accuracy=0.9,recall[cat]=0.5,roc_auc=0.5"))
    assert fails == [f"accuracy {acc:.2f} < 0.90"]
    fails = gates.check(r, [("recall[dog]", 0.9)])
    assert fails == [f"recall[dog] {r['per_class']['dog']['recall']:.2f} < 0.90"]


def test_check_never_prints_value_equal_to_bar():
    r = {"accuracy": 0.89999, "classes": ["a", "b"]}
    (msg,) = gates.check(r, [("accuracy", 0.9)])
    value, _, bar = msg.split(" ", 1)[1].partition(" < ")
    assert value != bar and float(value) < float(bar)


def test_check_undefined_metric_fails():
    y = np.zeros(4, dtype=int)
    r = m.classification_report(y, np.tile([0.7, 0.3], (4, 1)), ["a", "b"])
    (msg,) = gates.check(r, [("roc_auc", 0.5)])
    assert "undefined" in msg


@pytest.mark.parametrize("text, want", [("youden", ("youden", None)), (" YOUDEN ", ("youden", None)),
                                        ("sensitivity=0.95", ("sensitivity", 0.95)),
                                        ("specificity = 1", ("specificity", 1.0))])
def test_parse_threshold_rule_forms(text, want):
    assert gates.parse_threshold_rule(text) == want


@pytest.mark.parametrize("rule", ["sens=0.9", "sensitivity=1.5", "specificity=0", "sensitivity=abc", "", "yoden",
                                  "sensitivity=nan"])
def test_bad_rules_are_usage_errors(rule):
    with pytest.raises(UsageError) as e:
        gates.parse_threshold_rule(rule)
    assert str(e.value).startswith("--pick-threshold: ") and "\n" not in str(e.value)


def test_interval_bounds_parse_and_gate():
    got = gates.parse_fail_under("accuracy.lo=0.5,Recall[cat].hi=0.25", classes=["cat", "dog"])
    assert got == [("accuracy.lo", 0.5), ("recall[cat].hi", 0.25)]
    for text in ("macro_f1.lo=0.5", "f1[cat].lo=0.5", "accuracy.mid=0.5"):
        with pytest.raises(UsageError, match="unknown metric"):
            gates.parse_fail_under(text, classes=["cat", "dog"])
    r = _report()
    lo, hi = r["ci"]["accuracy"]["lo"], r["ci"]["accuracy"]["hi"]
    assert lo < r["accuracy"] < hi
    # The point value clears a bar between the bounds; the lower bound does not, the upper one does.
    bar = (lo + r["accuracy"]) / 2
    assert gates.check(r, [("accuracy", bar), ("accuracy.hi", bar)]) == []
    (msg,) = gates.check(r, [("accuracy.lo", bar)])
    assert msg.startswith("accuracy.lo ") and " < " in msg
