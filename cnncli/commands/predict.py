"""The `predict` job: image paths in, one result row per input out, streamed batch by batch.

No typer or rich here, and nothing heavy at import time: the command line imports this module only for
`predict`, and the model (numpy, numba kernels) loads inside `run`. Inputs are consumed lazily and results
are written and flushed after every batch, so memory stays flat however many inputs there are.
"""

import json
import sys
import threading
from dataclasses import dataclass

from cnncli.commands.model_path import resolve_model
from cnncli.commands.predict_inputs import iter_inputs, skip_keys
from cnncli.engine.decision import DEFAULT_THRESHOLD, decide
from cnncli.errors import EXIT_OK, EXIT_PARTIAL, NoInputError, UsageError, one_line
from cnncli.report.lines import row
from cnncli.batch.scoring import decode_cached, open_cache, score_decoded

FORMATS = ("table", "tsv", "csv", "jsonl")
UNCERTAIN = "uncertain"
UNKNOWN = "unknown"


@dataclass
class PredictOptions:
    inputs: list
    model: str | None = None
    format: str | None = None  # None: table on a terminal, tsv otherwise
    top_k: int | None = None  # None: 3 in the table, 1 in the machine formats
    all_probs: bool = False
    threshold: float | None = None
    uncertain: tuple | None = None  # (low, high) on the positive-class probability
    null: bool = False  # "-" reads NUL-separated paths
    batch_size: int = 256
    min_confidence: float | None = None  # None: the model's stored value (eval --save-threshold), else never
    tta: bool = False  # average each image's logits with its mirror's
    workers: int = 2
    shard: tuple | None = None  # (i, n): only the inputs of shard i of n (commands/shard.py)
    ledger: str | None = None  # SQLite ledger of what was scored (store/ledger.py)
    new_only: bool = False  # with ledger: print only the inputs scored now
    sort_into: str | None = None  # link or copy images into DIR/<label>/ (commands/sorting.py)
    copy: bool = False
    log_timestamps: bool = False
    summary: bool | None = None  # end-of-run line on stderr; None: when the run was long (a full first batch)
    progress: bool = True  # a bar on stderr over the inputs of a long run, when stderr is a terminal
    scheduler: tuple | None = None  # score on a Dask cluster: commands/cluster.parse_scheduler's value
    no_cache: bool = False  # read and write no decode cache (batch runs use it: predict_extras.cache_where)


def parse_band(text):
    """'LOW:HIGH' -> (low, high) with 0 <= low <= high <= 1; UsageError otherwise."""
    try:
        lo, hi = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise UsageError(f"--uncertain: expected LOW:HIGH (e.g. 0.4:0.6), got {text!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise UsageError(f"--uncertain: need 0 <= LOW <= HIGH <= 1, got {text!r}")
    return lo, hi


def _batches(entries, n):
    batch = []
    for e in entries:
        batch.append(e)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class Decider:
    """Turns a probability row into (label, probability of label, the other classes ranked)."""

    def __init__(self, classes, threshold=None, band=None, stored=False, min_confidence=None):
        self.classes = list(classes)
        self.min_confidence = min_confidence  # below this top probability the row is "unknown", any K
        self.binary = len(self.classes) == 2
        if not self.binary and (threshold is not None or band is not None):
            what = "--threshold" if threshold is not None else "--uncertain"
            raise UsageError(f"{what}: needs a two-class model, this one has {len(self.classes)} classes")
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self.band = band
        # Outside the band the threshold decides, so it must lie inside: else P = 0.7 could be "negative"
        # while P = 0.5 is "uncertain".
        if band is not None and not band[0] <= self.threshold <= band[1]:
            source = ("the threshold stored in the model" if stored else "--threshold") if threshold is not None \
                else "the default threshold"
            raise UsageError(f"--uncertain {band[0]:g}:{band[1]:g}: the band must contain the decision threshold "
                             f"({source} is {self.threshold:g})")

    def decide(self, p):
        """p: probabilities (K,) -> (label, probability, [(class, prob), ...] others by descending prob)."""
        order = sorted(range(len(p)), key=lambda i: -p[i])
        if self.min_confidence is not None and float(p[order[0]]) < self.min_confidence:
            return UNKNOWN, float(p[order[0]]), [(self.classes[i], float(p[i])) for i in order]
        if self.binary and self.band is not None and self.band[0] <= float(p[1]) <= self.band[1]:
            return UNCERTAIN, float(p[1]), [(self.classes[i], float(p[i])) for i in order]
        k = int(decide([p], self.threshold if self.binary else None)[0])  # the rule eval and training use
        return self.classes[k], float(p[k]), [(self.classes[i], float(p[i])) for i in order if i != k]


class Writer:
    """Formats result rows for one output format and writes them to a text stream."""

    def __init__(self, fmt, classes, top_k, all_probs, out, band=False):
        self.fmt, self.classes, self.top_k, self.all_probs, self.out = fmt, list(classes), top_k, all_probs, out
        self.band = band  # rows may say "uncertain (...)" or "unknown (...)", which is wider
        self.width = 0

    def _table_width(self):
        """Width of the result column, fixed for the whole run so that streamed rows line up."""
        if not self.width:
            longest = max(len(c) for c in self.classes)
            self.width = self.top_k * (5 + longest) + 2 * (self.top_k - 1) + (len(UNCERTAIN) + 3 if self.band else 0)
            self.width = min(60, self.width)
        return self.width

    def header(self):
        if self.fmt in ("tsv", "csv"):
            cols = ["path", "label", "probability"]
            for k in range(2, self.top_k + 1):
                cols += [f"label_{k}", f"probability_{k}"]
            if self.all_probs:
                cols += [f"p[{c}]" for c in self.classes] + ["ood_score"]
            cols.append("error")
            self._row(cols)

    def _row(self, cells):
        self.out.write(row(self.fmt, cells))

    def result(self, path, label, prob, others, p, ood):
        """One row: label (a class, "uncertain" or "unknown"), its probability, the other classes ranked,
        every class probability p (K,), and the out-of-distribution score ood (report.ood.energy)."""
        top = others[: self.top_k - 1]
        if self.fmt == "jsonl":
            doc = {"path": one_line(path), "label": label, "probability": round(prob, 6),
                   "top": [[c, round(v, 6)] for c, v in top]}
            if self.all_probs:
                doc["probabilities"] = {c: round(float(v), 6) for c, v in zip(self.classes, p)}
            doc["ood_score"] = round(float(ood), 6)
            self.out.write(json.dumps(doc) + "\n")
        elif self.fmt == "table":
            if label in (UNCERTAIN, UNKNOWN):  # no probability of its own: show the classes it hesitates between
                text = f"{label} (" + ", ".join(f"{v:.2f} {c}" for c, v in others[: self.top_k]) + ")"
            else:
                text = ", ".join(f"{v:.2f} {c}" for c, v in [(label, prob), *top])
            if self.all_probs:
                text += "  [" + " ".join(f"{c}={float(v):.3f}" for c, v in zip(self.classes, p)) + f" ood={ood:.3f}]"
            self.out.write(f"{one_line(text):<{self._table_width()}}  {one_line(path)}\n")
        else:
            cells = [path, label, f"{prob:.6f}"]
            for i in range(self.top_k - 1):
                cells += [top[i][0], f"{top[i][1]:.6f}"] if i < len(top) else ["", ""]
            if self.all_probs:
                cells += [f"{float(v):.6f}" for v in p] + [f"{float(ood):.6f}"]
            self._row(cells + [""])

    def error(self, path, message):
        if self.fmt == "jsonl":
            self.out.write(json.dumps({"path": one_line(path), "error": one_line(message)}) + "\n")
        elif self.fmt == "table":
            self.out.write(f"{'error':<{self._table_width()}}  {one_line(path)}: {one_line(message)}\n")
        else:
            n = 2 + 2 * (self.top_k - 1) + (len(self.classes) + 1 if self.all_probs else 0)
            self._row([path] + [""] * n + [message])


def _submit_decodes(pool, batch, size, channels, workers, resize="crop", cache=None):
    """Start decoding batch [(path, error or None)] in chunks (through the decode cache at cache = (folder, cap)
    unless None); returns [(indices, future)] for _gather."""
    todo = [i for i, (_, err) in enumerate(batch) if err is None]
    step = max(1, -(-len(todo) // (2 * max(1, workers))))  # two chunks per worker keeps both busy
    return [(todo[k:k + step], pool.submit(decode_cached, [batch[i][0] for i in todo[k:k + step]], size, channels,
                                            resize, cache))
            for k in range(0, len(todo), step)]


def _gather(batch, jobs):
    """(per input of batch: its decoded array, or an error message; True when a decode cache entry was written)."""
    decoded, wrote = [err for _, err in batch], False
    for indices, future in jobs:
        results, written = future.result()
        wrote = wrote or written
        for i, result in zip(indices, results):
            decoded[i] = result
    return decoded, wrote


def _in_background(fn):
    """Start fn() on a daemon thread; returns a function that waits for its result (or re-raises its error).

    A daemon thread, not an executor: it may sit blocked reading stdin when the run ends early (a closed pipe,
    Ctrl-C), and executors join their threads at exit, which would hang the process.
    """
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result():
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def _scored_locally(opts, clf, current, batches, full, cache=None):
    """Decode and score predict's batches in this process; yields (batch, decoded, (good, proba, ood)) per batch
    (scoring.score_decoded), in order. Decoding runs in a pool (processes when full: a long run), one batch
    ahead, through the decode cache at cache = (folder, cap) unless None (trimmed to its cap at the end when
    entries were added); the pool is stopped at the end, at once when the consumer stops early."""
    from cnncli.commands.decode_pool import decode_pool, stop_pool

    size, channels, wrote = clf.size, clf.channels, False
    pool = decode_pool(opts.workers, processes=full)
    finished = False
    try:
        def read_ahead():
            batch = next(batches, None)
            return batch, (_submit_decodes(pool, batch, size, channels, opts.workers, clf.resize, cache)
                           if batch else None)

        pending = _submit_decodes(pool, current, size, channels, opts.workers, clf.resize, cache) if current else None
        while current is not None:
            # The next batch is read (and its decoding started) on another thread while this one is
            # classified, so a batch's rows go out as soon as it is done even when more paths are slow
            # to arrive on stdin.
            upcoming = _in_background(read_ahead)
            decoded, written = _gather(current, pending)
            wrote = wrote or written
            yield current, decoded, score_decoded(clf, decoded)
            current, pending = upcoming()
        finished = True
        if wrote:
            open_cache(cache).trim()
    finally:
        stop_pool(pool, finished)


def _scored_on_cluster(opts, client, checksum, current, batches):
    import itertools

    from cnncli.commands.cluster import scored_batches

    return scored_batches(opts.scheduler, client, checksum, itertools.chain([current], batches), opts.tta)


def run(opts, on_error=None, out=None):
    """Classify every input in opts.inputs, writing rows to `out` (default sys.stdout) as each batch finishes.

    on_error(path, message) is called for every input that fails. Returns EXIT_OK when every input was
    classified, EXIT_PARTIAL when some failed. Raises NoInputError when there were no inputs at all, what
    modelfile.load raises for a bad weight file, and with opts.scheduler ClusterError when the Dask scheduler
    cannot be reached or goes away.
    """
    from contextlib import ExitStack

    from cnncli.store import modelfile, weights  # numpy and the kernels load here, not at import
    from cnncli.data.images import bombs_are_errors

    out = sys.stdout if out is None else out
    model_path = resolve_model(opts.model)
    data = weights.read_bytes(model_path)  # read once: a cluster's workers get these very bytes
    clf = modelfile.load_bytes(model_path, data)
    clf.tta = opts.tta
    threshold = opts.threshold if opts.threshold is not None else clf.threshold
    if len(clf.classes) != 2:
        threshold = opts.threshold  # a stored threshold only exists for two classes; Decider refuses others
    min_confidence = opts.min_confidence if opts.min_confidence is not None else clf.min_confidence
    decider = Decider(clf.classes, threshold, opts.uncertain, stored=opts.threshold is None,
                      min_confidence=min_confidence)
    fmt = opts.format or ("table" if out.isatty() else "tsv")
    top_k = opts.top_k if opts.top_k is not None else (3 if fmt == "table" else 1)
    top_k = max(1, min(top_k, len(clf.classes)))
    writer = Writer(fmt, clf.classes, top_k, opts.all_probs, out,
                    band=opts.uncertain is not None or min_confidence is not None)
    from cnncli.commands.predict_extras import Extras, Known, cache_where

    cache_where(opts, 0)  # a bad CNNCLI_CACHE_SIZE fails before the first row, whatever the run's length

    with ExitStack() as stack:
        if opts.scheduler:  # before any row: an unreachable scheduler fails the run without output
            from cnncli.commands.cluster import connect, install_model

            client = stack.enter_context(connect(opts.scheduler))
            checksum = install_model(client, opts.scheduler, str(model_path), data)
        extras = Extras(opts, clf, decider.threshold)  # opens --ledger / --sort-into before any row is written
        writer.header()
        seen = failed = 0
        with bombs_are_errors():
            # --sort-into DIR inside an input folder: its links are this command's outputs, never inputs again.
            skip = skip_keys(opts.sort_into)
            batches = _batches(extras.entries(iter_inputs(opts.inputs, opts.null, skip)), opts.batch_size)
            current = next(batches, None)
            # A full first batch means a long run: decode in worker processes, since decoding small images is
            # mostly Python work that holds the GIL, and threads would share one core. Short runs keep threads,
            # which start at once.
            long_run = current is not None and len(current) >= opts.batch_size
            full = long_run and opts.workers > 1
            if opts.summary is None:
                extras.summary = long_run  # on a terminal, the summary line takes the place of the erased bar
            scored = (_scored_on_cluster(opts, client, checksum, current, batches) if opts.scheduler and current
                      else _scored_locally(opts, clf, current, batches, full,
                                           cache_where(opts, len(current)) if current else None))
            finished, bar = False, None
            try:
                if long_run:
                    from cnncli.commands.predict_extras import progress_bar

                    bar = progress_bar(opts)
                for current, decoded, (good, proba, ood) in scored:
                    rows = dict(zip(good, range(len(good))))
                    for i, (path, _) in enumerate(current):
                        seen += 1
                        if i in rows or isinstance(decoded[i], Known):
                            p = proba[rows[i]] if i in rows else decoded[i].p
                            label, prob, others = decider.decide(p)
                            ood_i = ood[rows[i]] if i in rows else decoded[i].ood
                            writer.result(path, label, prob, others, p, ood_i)
                            extras.row(path, label, prob, p, ood_i, i not in rows)
                        else:
                            failed += 1
                            extras.error(path)
                            writer.error(path, decoded[i])
                            if on_error is not None:
                                on_error(path, decoded[i])
                    out.flush()
                    extras.batch_done()  # after the rows went out: a rerun prints a row at least once
                    if bar is not None:
                        bar.update(seen + extras.counts["skipped"])
                finished = True
            finally:
                if bar is not None:
                    bar.close()  # before the summary line, which takes its place
                scored.close()  # stops the decode pool (at once unless finished)
                extras.close(finished)
    if seen == 0 and not extras.counts["skipped"] and not extras.other_shards:
        raise NoInputError("no input images (give files, folders, glob patterns or - for stdin)")
    return EXIT_PARTIAL if failed else EXIT_OK
