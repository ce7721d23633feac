"""`--scheduler`: predict's and eval's batches scored on a Dask cluster, results back in input order.

The client side (the workers' side is cnncli/batch/dask_worker.py). Dask is an optional extra and is imported
only inside these functions, so a plain predict or eval never loads it. The client reads the weight file once
and registers its bytes with the cluster; batches of paths go out as tasks, at most a window of them in flight,
and come back in the order they were sent, so memory stays bounded and rows keep the input order. A batch whose
worker dies is run again by Dask on another worker; its rows are written once, when its result arrives.
"""

import contextlib
import logging
import os
import queue
import re
import threading
import uuid

from cnncli.errors import ClusterError, MissingExtraError, UsageError, one_line

SCHEDULER_ENV = "CNNCLI_SCHEDULER"
INSTALL_HINT = "--scheduler: needs Dask, which is not installed; install it with: pip install 'cnncli[dask]'"
MAX_LOCAL_WORKERS = 256
_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/]+:\d{1,5}$")


def parse_scheduler(value):
    """The --scheduler value, else $CNNCLI_SCHEDULER, as ("local", N), ("address", "tcp://HOST:PORT") or None
    (run in this process: no value, or "none"). UsageError for any other spelling; MissingExtraError (exit 2)
    when a cluster is asked for and Dask is not installed."""
    option = "--scheduler"
    if value is None:
        value, option = os.environ.get(SCHEDULER_ENV) or None, SCHEDULER_ENV
    if value is None or value.strip().lower() == "none":
        return None
    value = value.strip()
    m = re.fullmatch(r"local:(\d+)", value)
    if m and 1 <= int(m.group(1)) <= MAX_LOCAL_WORKERS:
        spec = ("local", int(m.group(1)))
    elif _ADDRESS.match(value):
        spec = ("address", value)
    else:
        raise UsageError(f"{option}: expected tcp://HOST:PORT, tls://HOST:PORT, local:N (1 <= N <= "
                         f"{MAX_LOCAL_WORKERS}) or none, got {one_line(value)!r}")
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise MissingExtraError(INSTALL_HINT)
    return spec


def _name(spec):
    return f"local:{spec[1]}" if spec[0] == "local" else spec[1]


def _quiet_logs():
    """Silence Dask's loggers in this process (each has its own level): cnncli's stderr carries only its own
    messages, one line each. The workers of a tcp cluster log in their own processes."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("distributed", "dask", "tornado")]
    for name in ["distributed", "distributed.client", *names]:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def connect(spec):
    """A dask.distributed Client for spec (parse_scheduler): a LocalCluster of N worker processes started here
    (closed at the end), or the scheduler at the address. ClusterError (exit 69) when it cannot be reached."""
    from distributed import Client, LocalCluster

    _quiet_logs()
    cluster = None
    try:
        if spec[0] == "local":
            cluster = LocalCluster(n_workers=spec[1], threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL + 1)
            client = Client(cluster, set_as_default=False)
        else:
            client = Client(spec[1], set_as_default=False)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"--scheduler {_name(spec)}: cannot reach the scheduler ({one_line(exc)})") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):  # the scheduler may be gone already
            client.close(timeout=5)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def _local_threads(spec):
    """Kernel threads per worker for local:N: this machine's cores shared out, at least 1."""
    if spec[0] != "local":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // spec[1])


def install_model(client, spec, label, data):
    """Register the weight file's bytes with every worker (dask_worker.ModelBytes); returns their checksum."""
    from cnncli.batch.dask_worker import ModelBytes, checksum_of

    checksum = checksum_of(data)
    client.register_plugin(ModelBytes(label, data, checksum, _local_threads(spec)))
    return checksum


def window_size(client):
    """Batches kept in flight: two per worker thread (one running, one queued), at least 2."""
    try:
        threads = sum(client.nthreads().values())  # every worker (scheduler_info lists only the first few)
    except Exception:  # noqa: BLE001 - an estimate only
        threads = 1
    return max(2, 2 * threads)


def lost(spec, exc, done):
    """The ClusterError for a run whose scheduler went away (or whose batch kept killing workers); done: the
    inputs whose results were handed on (predict: written as complete rows)."""
    from distributed import KilledWorker

    what = "a batch killed every worker that ran it" if isinstance(exc, KilledWorker) else "lost the scheduler"
    return ClusterError(f"--scheduler {_name(spec)}: {what} after {done} inputs were done")


def ordered_results(client, spec, jobs, submit):
    """Submit each job of the iterable jobs as a task (submit(job) -> future or None) with a bounded window in
    flight, and yield (job, result or None) in the order of jobs. The jobs are read on a background thread, so
    results go out while the next inputs are still arriving (stdin). Raises ClusterError when the scheduler
    goes away."""
    from distributed import KilledWorker

    window = window_size(client)
    slots = threading.BoundedSemaphore(window)
    ready = queue.Queue()
    stop = threading.Event()
    end = object()

    def feed():
        try:
            for job in jobs:
                slots.acquire()
                if stop.is_set():
                    return
                ready.put((job, submit(job)))
            ready.put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            ready.put((end, exc))

    threading.Thread(target=feed, name="cnncli-cluster-feed", daemon=True).start()
    done = 0
    try:
        while True:
            job, future = ready.get()
            if job is end:
                if future is None:
                    return
                if client.status != "running":  # submitting failed because the scheduler is gone
                    raise lost(spec, future, done) from None
                raise future
            try:
                result = None if future is None else future.result()
            except (KilledWorker, OSError, TimeoutError) as exc:
                raise lost(spec, exc, done) from None
            except Exception as exc:  # noqa: BLE001 - Dask's cancellation types vary between versions
                if client.status not in ("running", "connecting", "newly-created") or future.cancelled():
                    raise lost(spec, exc, done) from None
                raise
            yield job, result
            done += len(job)
            slots.release()  # only now: a batch counts as in flight until its rows are written
    finally:
        stop.set()
        with contextlib.suppress(ValueError):
            slots.release()  # wake the feeder if it waits for a slot, so it sees stop


def scored_batches(spec, client, checksum, batches, tta):
    """predict's batches [(path, error or None or Known)] scored on the cluster, in order.

    Yields (batch, decoded, (good, proba, ood)) as predict's local path does: decoded[i] is the entry's error
    message, its Known ledger hit, or an array marker for a scored image; good, proba, ood as
    scoring.score_decoded gives them over the whole batch.
    """
    from cnncli.batch.dask_worker import score_batch

    run = uuid.uuid4().hex[:12]
    counter = iter(range(1 << 62))

    def submit(batch):
        todo = [i for i, (_, err) in enumerate(batch) if err is None]
        if not todo:
            return None
        return client.submit(score_batch, checksum, [batch[i][0] for i in todo], tta, pure=False,
                             key=f"cnncli-predict-{run}-{next(counter)}")

    for batch, result in ordered_results(client, spec, batches, submit):
        decoded = [err for _, err in batch]
        if result is None:
            yield batch, decoded, ([], None, None)
            continue
        todo = [i for i, (_, err) in enumerate(batch) if err is None]
        reasons, good, proba, ood = result
        for i, reason in zip(todo, reasons):
            decoded[i] = reason
        yield batch, decoded, ([todo[g] for g in good], proba, ood)


class EvalCluster:
    """eval's images decoded and scored on a Dask cluster (a context manager: connects, installs the model).

    spec: parse_scheduler's value; label: the weight file's name for messages; data: its bytes.
    """

    def __init__(self, spec, label, data):
        self.spec, self.label, self.data = spec, label, data
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        with self._stack as stack:
            self.client = stack.enter_context(connect(self.spec))
            self.checksum = install_model(self.client, self.spec, self.label, self.data)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def load(self, items, clf, on_bad, on_progress=None):
        """Score (path, label) items as eval does locally: one task per scoring.eval_chunk(clf) items.

        Returns (folders.Loaded with x None, logits float32 (N, K) of the N items that decoded); on_bad(path,
        reason) is called for each item that did not, in input order; on_progress(done) after each chunk.
        """
        from pathlib import Path

        import numpy as np

        from cnncli.batch.dask_worker import logits_batch
        from cnncli.batch.scoring import eval_chunk
        from cnncli.data.folders import Loaded

        step, run, counter = eval_chunk(clf), uuid.uuid4().hex[:12], iter(range(1 << 62))
        items = list(items)
        chunks = [items[k:k + step] for k in range(0, len(items), step)]

        def submit(chunk):
            return self.client.submit(logits_batch, self.checksum, [str(p) for p, _ in chunk], clf.tta, pure=False,
                                      key=f"cnncli-eval-{run}-{next(counter)}")

        kept, bad, parts = [], [], []
        for chunk, (reasons, logits) in ordered_results(self.client, self.spec, chunks, submit):
            for (path, label), reason in zip(chunk, reasons):
                if reason is None:
                    kept.append((Path(path), int(label)))
                else:
                    bad.append((Path(path), reason))
                    on_bad(Path(path), reason)
            parts.append(logits)
            if on_progress is not None:
                on_progress(len(kept) + len(bad))
        y = np.array([label for _, label in kept], np.int64)
        logits = np.concatenate(parts) if parts else np.zeros((0, len(clf.classes)), np.float32)
        return Loaded(None, y, kept, bad, clf.channels), logits
