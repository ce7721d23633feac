"""The one decision rule that turns class probabilities into a predicted class.

Training's accuracy, `eval` and `predict` all call `decide`, so a probability exactly at the threshold is
the same class everywhere. Only numpy is imported: `predict` uses this without loading the kernels.
"""

import numpy as np

DEFAULT_THRESHOLD = 0.5


def decide(proba, threshold=None):
    """Predicted class indices, int64 (N,), from probabilities float (N, K).

    K == 2: class 1 (the positive class) when proba[:, 1] >= threshold (default 0.5), else class 0, so a tie
    at the threshold goes to the positive class. K != 2: the most probable class (the lowest index among
    ties); a threshold is a ValueError there.
    """
    p = np.asarray(proba)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"proba must be (N, K), got shape {p.shape}")
    if p.shape[1] == 2:
        t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        return (p[:, 1] >= t).astype(np.int64)
    if threshold is not None:
        raise ValueError(f"a decision threshold needs exactly two classes, got {p.shape[1]}")
    return np.argmax(p, axis=1).astype(np.int64)
