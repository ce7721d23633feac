"""What `predict` does around scoring for batch runs: --shard, --ledger, --sort-into, the decode cache and the end
summary.

predict.run hands every input through `entries` (shard filter, ledger lookup) and reports every row to `row`;
`batch_done` commits the batch to the ledger, after its rows were written. An input the ledger already knows
comes back as a Known entry holding its stored probabilities, which predict prints (decided again with this
run's threshold) without decoding the image.
"""

import os
import sys
import time

from cnncli.commands.shard import parse_shard, take_shard
from cnncli.commands.streams import say
from cnncli.errors import UsageError, one_line

TIMESTAMP_ENV = "CNNCLI_LOG_TIMESTAMPS"


def batch_options(opts, shard, ledger, new_only, sort_into, copy, log_timestamps, no_progress=False, scheduler=None):
    """Check and set PredictOptions' batch-run fields from the command line's values; UsageError if they clash."""
    opts.progress = not no_progress
    if scheduler is not None or os.environ.get("CNNCLI_SCHEDULER"):  # cluster.SCHEDULER_ENV; else: no cluster
        from cnncli.commands.cluster import parse_scheduler

        opts.scheduler = parse_scheduler(scheduler)
    if new_only and not ledger:
        raise UsageError("--new-only: needs --ledger FILE")
    if copy and not sort_into:
        raise UsageError("--copy: needs --sort-into DIR")
    opts.shard = parse_shard(shard) if shard else None
    opts.ledger, opts.new_only = (str(ledger) if ledger else None), new_only
    opts.sort_into, opts.copy = (str(sort_into) if sort_into else None), copy
    opts.log_timestamps = log_timestamps
    if log_timestamps or ledger or shard or sort_into:
        opts.summary = True


def progress_bar(opts):
    """The bar over a long predict run's inputs (progress.InputsProgress), or None when none may be drawn.

    Its total is counted on the side (the same inputs, listed again, through the same shard) unless paths come
    from stdin, which can be read only once: then it counts up without a total."""
    from cnncli.commands.progress import InputsProgress, live_terminal

    if not (opts.progress and live_terminal()):
        return None
    bar = InputsProgress("predict")
    if "-" not in opts.inputs:
        from cnncli.commands.predict_inputs import iter_inputs, skip_keys

        bar.count_total(take_shard(iter_inputs(opts.inputs, opts.null, skip_keys(opts.sort_into)), opts.shard))
    return bar


SMALL_RUN = 8  # a run whose first batch holds at most this many inputs neither imports nor uses the decode cache


def cache_where(opts, n):
    """(folder, cap) of the decode cache (store/decode_cache.py) for a run whose first batch holds n inputs, or
    None: --no-cache, CNNCLI_CACHE_SIZE=0, or a short run (n <= SMALL_RUN: a one-image predict stays as fast as
    before and imports nothing more). UsageError for a bad CNNCLI_CACHE_SIZE (n = 0 only checks a value set)."""
    if opts.no_cache or (n <= SMALL_RUN and not (n == 0 and os.environ.get("CNNCLI_CACHE_SIZE"))):
        return None
    from cnncli.store import decode_cache

    try:
        cache, _ = decode_cache.open_cache(True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return (str(cache.root), cache.cap) if cache is not None and n > SMALL_RUN else None


class Known:
    """An input whose probabilities (list of K floats) and OOD score come from the ledger."""

    __slots__ = ("p", "ood")

    def __init__(self, p, ood):
        self.p, self.ood = p, ood


def stamp(msg, timestamps):
    """msg, prefixed with the UTC time when timestamps are on (--log-timestamps or CNNCLI_LOG_TIMESTAMPS=1)."""
    if timestamps:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + msg
    return msg


def timestamps_wanted(option):
    return bool(option) or os.environ.get(TIMESTAMP_ENV, "") not in ("", "0")


class Extras:
    """State of one predict run's batch options (opts: PredictOptions; clf: the loaded Classifier)."""

    def __init__(self, opts, clf, threshold):
        self.shard, self.new_only = opts.shard, opts.new_only
        self.threshold = threshold if len(clf.classes) == 2 else None
        self.timestamps = timestamps_wanted(opts.log_timestamps)
        self.ledger = self.sorter = None
        if opts.ledger:
            from cnncli.store.ledger import Ledger

            self.ledger = Ledger(opts.ledger, clf.digest, clf.classes)
        if opts.sort_into:
            from cnncli.commands.sorting import Sorter

            self.sorter = Sorter(opts.sort_into, copy=opts.copy)
        self.hashes = {}  # path -> content hash of inputs sent to be scored
        self.pending = []
        self.other_shards = 0  # inputs given that belong to another --shard: an empty shard is no error
        self.counts = {"rows": 0, "errors": 0, "scored": 0, "from_ledger": 0, "skipped": 0}
        self.start = time.monotonic()
        self.summary = opts.summary

    def _other_shard(self, entry):
        self.other_shards += 1

    def entries(self, stream):
        """(path, error or None or Known) for this run's inputs, in order."""
        for path, err in take_shard(stream, self.shard, on_other=self._other_shard):
            if self.ledger is not None and err is None:
                from cnncli.store.ledger import file_sha256

                try:
                    h = file_sha256(path)
                except (OSError, ValueError):  # decoding will report it as an error row
                    yield path, None
                    continue
                hit = self.ledger.lookup(h)
                if hit is not None:
                    if self.new_only:
                        self.counts["skipped"] += 1
                        continue
                    yield path, Known(*hit)
                    continue
                self.hashes[path] = h
            yield path, err

    def row(self, path, label, prob, p, ood, known):
        """One classified input (p: probabilities (K,), ood: its OOD score); known: it came from the ledger."""
        self.counts["rows"] += 1
        self.counts["from_ledger" if known else "scored"] += 1
        if self.ledger is not None and not known and path in self.hashes:
            self.pending.append((self.hashes.pop(path), one_line(path), label, prob, p, ood, self.threshold))
        if self.sorter is not None:
            self.sorter.place(path, label)

    def error(self, path):
        self.counts["rows"] += 1
        self.counts["errors"] += 1
        self.hashes.pop(path, None)

    def batch_done(self):
        if self.ledger is not None:
            self.ledger.add(self.pending)
        self.pending = []

    def close(self, finished):
        if self.ledger is not None:
            self.ledger.close()
        if finished and self.summary:
            say(stamp(self.summary_line(), self.timestamps))

    def summary_line(self):
        c, secs = self.counts, max(time.monotonic() - self.start, 1e-9)
        line = f"cnncli: predict: {c['rows']} rows, {c['errors']} errors"
        if self.ledger is not None:
            line += f", {c['scored']} scored, {c['from_ledger']} from the ledger"
            if self.new_only:
                line += f", {c['skipped']} already in the ledger not shown"
        return line + f", {c['rows'] / secs:.0f} img/s, {secs:.1f} s"
