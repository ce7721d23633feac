"""Progress on stderr: `train`'s bar (one plain line per epoch off a terminal) and the bar over the inputs of a
long `predict` or `eval` run (nothing off a terminal: they end with a summary line instead).

The bars redraw with cursor escapes, so they run only on a terminal, never with NO_COLOR or TERM=dumb
(live_terminal). rich is imported only when a bar starts, so a short run never loads it.
"""

import os
import sys
import threading
import time

from cnncli.commands.streams import say
from cnncli.errors import one_line

LONG_RUN = 256  # eval draws its bar from this many images (predict: from a full first batch, also 256 by default)


def live_terminal(quiet=False):
    """True when a bar may be drawn: stderr is a terminal, not TERM=dumb, no NO_COLOR, and not quiet."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr closed or replaced by something without a descriptor
        tty = False
    return tty and not quiet and os.environ.get("TERM") != "dumb" and not os.environ.get("NO_COLOR")


def _stderr_console():
    from rich.console import Console

    # soft_wrap: lines printed above a bar (warnings naming long paths) are never broken by rich, only by the terminal
    return Console(stderr=True, highlight=False, soft_wrap=True,
                   no_color="NO_COLOR" in os.environ and os.environ["NO_COLOR"] != "")


def _transient_bar(*columns):
    """A started rich Progress on stderr that erases itself when stopped. stdout is never redirected through it
    (it carries data); lines written to stderr meanwhile are printed above the bar."""
    from rich.progress import Progress

    bar = Progress(*columns, console=_stderr_console(), transient=True, redirect_stdout=False)
    bar.start()
    return bar


class TrainReporter:
    """Progress for `train`: a rich bar on a terminal, one plain line per epoch otherwise."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.live = live_terminal(quiet)
        self.progress = None
        self.task = None

    def info(self, msg):
        if not self.quiet:
            self._print(msg)

    def warn(self, msg):
        self._print(f"warning: {msg}")  # callers escape paths and class names (one_line) themselves

    def _print(self, msg):
        if self.progress is not None:
            self.progress.console.print(msg, markup=False, highlight=False)
        else:
            say(msg)  # a closed or full stderr loses the line, never the training run

    def batch(self, state, per_epoch, epochs, loss, acc, rate):
        if not self.live:
            return
        if self.progress is None:
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

            self.progress = _transient_bar(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                                           TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} "
                                                      "{task.fields[rate]:.0f} img/s"), TimeRemainingColumn())
            self.task = self.progress.add_task("train", total=per_epoch * epochs, epoch=1, epochs=epochs,
                                               loss=0.0, acc=0.0, rate=0.0)
        self.progress.update(self.task, completed=state.epoch * per_epoch + state.batch, epoch=state.epoch + 1,
                             loss=loss, acc=acc, rate=rate)

    def epoch_end(self, rec, epochs):
        if self.quiet:
            return
        line = (f"epoch {rec['epoch']}/{epochs}: train loss {rec['train_loss']:.4f} "
                f"acc {rec['train_accuracy']:.4f}")
        if "val_accuracy" in rec:
            line += f", val loss {rec['val_loss']:.4f} acc {rec['val_accuracy']:.4f}"
        self._print(line + f", lr {rec['lr']:.2g}, {rec['time']:.0f}s")

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class InputsProgress:
    """The bar over a `predict` or `eval` run's inputs, on stderr, drawn only on a live_terminal().

    The total may be unknown (paths on stdin): then a spinner, the count and the rate. `count_total`
    counts the inputs on a background thread while the run goes on, and the bar gains its total when that
    ends. Thread-safe: rich serialises updates. close() erases the bar, leaving the terminal as it was.
    """

    def __init__(self, what, total=None):
        from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.what, self.total, self.done, self.start = what, total, 0, time.monotonic()
        self.bar = _transient_bar(SpinnerColumn(), TextColumn(what), BarColumn(),
                                  TextColumn("{task.fields[count]}  {task.fields[rate]}"), TimeElapsedColumn())
        self.task = self.bar.add_task(what, total=total, count="", rate="")
        self.update(0)

    def count_total(self, entries):
        """Count the iterable `entries` on a daemon thread (it may be a long folder walk), then set the total."""
        def count():
            n = sum(1 for _ in entries)
            self.total, bar = n, self.bar
            if bar is not None:
                bar.update(self.task, total=n)
                self.update(self.done)

        threading.Thread(target=count, name="count-inputs", daemon=True).start()

    def update(self, done):
        """done: inputs finished so far (rows written, or images decoded)."""
        self.done = done
        bar = self.bar
        if bar is None:
            return
        rate = done / max(time.monotonic() - self.start, 1e-9)
        count = f"{done:,}/{self.total:,}" if self.total is not None else f"{done:,}"
        bar.update(self.task, completed=done, count=count, rate=f"{rate:,.0f} img/s" if done else "")

    def close(self):
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.stop()


def summary_lines(summary):
    """The end-of-run summary of a finished `train` (commands/train.run's dict) as lines of text."""
    per_class = ", ".join(f"{one_line(c)} {n}" for c, n in zip(summary["classes"], summary["images_per_class"]))
    lines = [f"images per class: {per_class}; skipped files: {summary['skipped_files']}"
             + (f" (listed in {one_line(summary['bad_files'])})" if "bad_files" in summary else ""),
             f"epochs: {summary['epochs_run']} ({summary['stop_reason']}), best epoch {summary['best_epoch']}"]
    if "val_accuracy" in summary:
        lines.append(f"validation accuracy: {summary['val_accuracy']:.4f}")
    if "test_accuracy" in summary:
        lines.append(f"test accuracy: {summary['test_accuracy']:.4f}")
    lines.append(f"time: {summary['seconds']:.1f}s")
    lines.append(f"weights: {summary['output']} (history: {summary['history']})")
    return lines
