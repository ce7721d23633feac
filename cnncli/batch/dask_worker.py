"""What Dask workers run for `predict --scheduler` and `eval --scheduler` (the client side is commands/cluster.py).

Imported only by the cluster path (never by a plain predict or eval), and by the workers when they unpickle a
task. A worker receives the weight file's bytes and their SHA-256 through a worker plugin, which the scheduler
hands to every worker, including one that joins or is restarted mid-run; the bytes are checked against the
checksum and parsed once per worker process (cached by checksum), on the first batch. Images are read from
paths, so workers must see the same storage as the client. No typer or rich here.
"""

import hashlib
import threading

from distributed.diagnostics.plugin import WorkerPlugin

from cnncli.batch import scoring
from cnncli.errors import FormatError

_BYTES = {}  # checksum -> (name for messages, weight file bytes), installed by ModelBytes
_MODELS = {}  # (checksum, tta) -> Classifier, loaded on first use
_LOCK = threading.Lock()


def checksum_of(data):
    """Hex SHA-256 of bytes: how a weight file's bytes are named and checked on the cluster."""
    return hashlib.sha256(data).hexdigest()


class ModelBytes(WorkerPlugin):
    """Carries one weight file (bytes, checksum, file name for messages) to every worker of the cluster.

    threads: kernel threads per worker process (local:N shares this machine's cores); None keeps the default.
    """

    idempotent = True  # the same model registered twice (two runs) is installed once

    def __init__(self, label, data, checksum, threads=None):
        self.name = f"cnncli-model-{checksum}"  # Dask's plugin name: one plugin per distinct weight file
        self.label, self.data, self.checksum, self.threads = label, data, checksum, threads

    def setup(self, worker=None):
        _BYTES[self.checksum] = (self.label, self.data)
        if self.threads:
            from cnncli.engine.kernels import set_threads

            set_threads(self.threads)


def classifier(checksum, tta=False):
    """The Classifier whose weight file bytes have this checksum, parsed once per worker process.

    Raises FormatError when the bytes do not match the checksum (damaged on the way) or are no valid weight
    file, RuntimeError when no plugin installed them on this worker.
    """
    with _LOCK:
        clf = _MODELS.get((checksum, tta))
        if clf is not None:
            return clf
        if checksum not in _BYTES:
            raise RuntimeError(f"model {checksum[:12]} is not installed on this worker")
        name, data = _BYTES[checksum]
        if checksum_of(data) != checksum:
            raise FormatError(f"{name}: the weight file's bytes on a worker do not match their SHA-256 "
                              f"{checksum[:12]}... (damaged on the way)")
        from cnncli.store import modelfile

        clf = modelfile.load_bytes(name, data)
        clf.tta = tta
        _MODELS[(checksum, tta)] = clf
        return clf


def score_batch(checksum, paths, tta=False):
    """A Dask task: decode and score a batch of image paths (list of str) with the installed model.

    Returns scoring.score_paths' (reasons, good, proba float32 (G, K), ood float64 (G,)) for the paths.
    """
    return scoring.score_paths(classifier(checksum, tta), paths)


def logits_batch(checksum, paths, tta=False):
    """A Dask task for eval: scoring.logits_paths over one chunk of image paths with the installed model."""
    return scoring.logits_paths(classifier(checksum, tta), paths)
