"""Ctrl-C and SIGTERM during `train`: stop cleanly after the current batch, or at once on a second signal.

No typer or rich here; commands/train.py uses it (and tests reach it as train.StopRequest).
"""

import signal


class StopRequest:
    """SIGINT / SIGTERM handling: the first signal asks training to stop after the current batch; a second
    one (or any signal while nothing is running that could save) stops at once."""

    def __init__(self):
        self.signum = None
        self.armed = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame):
        if self.armed and self.signum is None:
            self.signum = signum
            return
        self.signum = signum
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    def __call__(self):
        return self.signum is not None
