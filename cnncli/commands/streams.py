"""Standard streams that can be closed, full or gone, turned into documented outcomes.

- A closed stdin, stdout or stderr (`>&-`) gets /dev/null on its file descriptor at start, so no file the
  run opens later (a weight file, a lock) can land on fd 1 or 2 and receive stray output.
- Data on stdout: a failed write is one WriteError ("stdout: ..."), exit 74; a closed stdout is the same on
  the first write. A reader that went away (EPIPE) stays a BrokenPipeError, which callers treat as a normal
  end (`| head -1`).
- Both are UTF-8 whatever the locale says (utf8_streams).
- Messages on stderr: best effort. A closed or full stderr loses the messages, never the run's work.
"""

import errno
import io
import os
import sys

from cnncli.errors import WriteError


def _null_onto(fd):
    null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def reserve_std_fds():
    """Put /dev/null on each of fds 0, 1, 2 that is closed; returns the set of those that were closed."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            _null_onto(fd)
    return closed


def stderr_on_null():
    """A text stream on fd 2 (now /dev/null) for a process started with stderr closed."""
    return io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)


def utf8_streams():
    """Make sys.stdout and sys.stderr write UTF-8 whatever the locale or PYTHONIOENCODING says (under LC_ALL=C
    a file name with a `ü` failed the run with UnicodeEncodeError, under latin-1 it became a non-UTF-8 byte).
    Each stream keeps its error handling and line buffering; one that is UTF-8 already, or not a text file, is
    left alone. File names that are not UTF-8 are escaped before they are written (errors.one_line)."""
    import codecs

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if not encoding or not hasattr(stream, "reconfigure"):
            continue
        try:
            if codecs.lookup(encoding).name != "utf-8":
                stream.reconfigure(encoding="utf-8", errors=stream.errors)
        except (LookupError, OSError, ValueError):  # an unknown codec name, a closed or failing stream: as it was
            pass


def spawn_without_stderr(start):
    """Call start() (which starts a helper process) with fd 2 on /dev/null, so the helper inherits that instead of
    the user's stderr; fd 2 is restored before returning. For helpers whose only messages would be noise."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        return start()
    try:
        sys.stderr.flush()  # what is buffered belongs to the real stderr
    except (OSError, ValueError, AttributeError):
        pass
    try:
        _null_onto(2)
        return start()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def say(msg):
    """Write one message line to stderr; if stderr cannot take it, drop it (and every later one) quietly."""
    try:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        _silence(sys.stderr, 2)


def _silence(stream, fd):
    # Point the descriptor at /dev/null and drop what is buffered, so Python's own flush at exit succeeds.
    try:
        _null_onto(fd)
    except OSError:
        pass
    try:
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass


class DataOut:
    """sys.stdout for a command's data: write and flush raise WriteError (exit 74) when the output is
    closed, full or failing, and BrokenPipeError when the reader went away. Everything else is delegated."""

    def __init__(self, stream, closed=False):
        self._stream, self._closed = stream, closed

    def _failed(self, exc):
        if isinstance(exc, BrokenPipeError) or getattr(exc, "errno", None) == errno.EPIPE:
            raise exc
        _silence(self._stream, 1)
        raise WriteError(f"stdout: write failed ({getattr(exc, 'strerror', None) or exc})") from exc

    def write(self, text):
        if self._closed:
            raise WriteError("stdout is closed: nowhere to write the results")
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._failed(exc)

    def flush(self):
        if self._closed:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            self._failed(exc)

    def isatty(self):
        return not self._closed and self._stream.isatty()

    def __getattr__(self, name):
        return getattr(self._stream, name)
