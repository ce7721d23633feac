"""Shared helpers (no tests here) for the train tests: interrupt an in-process run at an exact point."""

import contextlib
import os
import signal

from cnncli.commands import train as train_job


@contextlib.contextmanager
def interrupt_after_reads(monkeypatch, reads):
    """A real SIGINT sent to this process right after training's stop flag was read `reads` times: the
    signal arrives exactly between one read of the flag and the next."""
    original = train_job.StopRequest.__call__
    count = [0]

    def read(self):
        answer = original(self)
        count[0] += 1
        if count[0] == reads:
            os.kill(os.getpid(), signal.SIGINT)
        return answer

    with monkeypatch.context() as m:
        m.setattr(train_job.StopRequest, "__call__", read)
        yield count
