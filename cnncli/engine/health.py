"""Signs that a training run collapsed, as warnings a person can act on.

A run that predicts one class for every image, or whose loss is far above chance, still ends with exit 0 and a
weight file; these checks make it say so. Pure functions over the history and labels: no printing here.
"""

import math

import numpy as np

from cnncli.errors import GateError

# The first epoch's mean training loss above this multiple of chance (ln K) means the first steps blew up.
FIRST_LOSS_LIMIT = 2.0


# "(nearly) every validation image": the share of predictions that one class must take to count as collapse.
ONE_CLASS_SHARE = 0.9


def collapse_warnings(history, val_labels, val_predictions, num_classes, lr):
    """Warnings (list of one-line strings, empty when healthy) for a finished run.

    history: the per-epoch records (dicts with 'train_loss'); val_labels and val_predictions: int arrays (N,)
    of the validation set's classes and the kept weights' predicted classes, or None without validation;
    lr: the peak learning rate used. Collapse on validation needs all of: at least two classes present
    (with one, "always guess the largest class" is no baseline), one class predicted for at least
    ONE_CLASS_SHARE of the images, and an accuracy no better than always guessing the largest class.
    """
    out = []
    chance = math.log(num_classes)
    if history and history[0]["train_loss"] > FIRST_LOSS_LIMIT * chance:
        out.append(f"first-epoch loss {history[0]['train_loss']:.3g} is far above chance ({chance:.3g} = ln "
                   f"{num_classes}): the first steps blew up, most likely a learning rate too high for this input "
                   f"size; try --lr {lr / 4:g} or --clip-norm 1")
    if val_labels is not None and len(val_labels) and val_predictions is not None:
        labels, predicted = np.asarray(val_labels), np.asarray(val_predictions)
        counts = np.bincount(labels, minlength=num_classes)
        majority = counts.max() / counts.sum()
        accuracy = float((predicted == labels).mean())
        one_class = np.bincount(predicted, minlength=num_classes).max() / len(predicted)
        if (counts > 0).sum() >= 2 and one_class >= ONE_CLASS_SHARE and accuracy <= majority + 1e-9:
            out.append(f"validation accuracy {accuracy:.4f} is no better than always guessing the largest "
                       f"class ({majority:.4f}): the model has collapsed to (nearly) one class; likely causes are a "
                       f"learning rate too high, too few epochs or imbalanced classes; try --lr {lr / 4:g}, more "
                       f"--epochs or --class-weights auto")
    return out


def check_collapse(history, val_labels, val_predictions, num_classes, lr, fail=False):
    """collapse_warnings(...) for a run about to be saved; with `fail`, any warning raises GateError (exit 3)
    naming --fail-on-collapse, before the caller writes the weight file."""
    found = collapse_warnings(history, val_labels, val_predictions, num_classes, lr)
    if found and fail:
        raise GateError(f"--fail-on-collapse: training collapsed ({found[0].split(':')[0]}); "
                        "the weight file was not written")
    return found
