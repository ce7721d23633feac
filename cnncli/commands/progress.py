"""Progress for `train` on stderr: a rich bar on a terminal, one plain line per epoch otherwise.

The bar redraws with cursor escapes, so it runs only on a terminal, never with NO_COLOR or TERM=dumb.
"""

import os
import sys

from cnncli.commands.streams import say
from cnncli.errors import one_line


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, no_color="NO_COLOR" in os.environ and os.environ["NO_COLOR"] != "")


class TrainReporter:
    """Progress for `train`: a rich bar on a terminal, one plain line per epoch otherwise."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.live = (sys.stderr.isatty() and not quiet and os.environ.get("TERM") != "dumb"
                     and not os.environ.get("NO_COLOR"))
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
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                                     TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} "
                                                "{task.fields[rate]:.0f} img/s"), TimeRemainingColumn(),
                                     console=_stderr_console(), transient=True)
            self.progress.start()
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
