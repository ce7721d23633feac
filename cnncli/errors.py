"""The errors cnncli reports to users, each carrying its documented exit code.

Library code raises these; only the command line turns them into a message and an exit status.
"""

EXIT_OK = 0
EXIT_PARTIAL = 1  # predict: some inputs could not be read
EXIT_USAGE = 2  # bad options (typer/click's own code)
EXIT_GATE = 3  # eval --fail-under: a metric fell below the bar
EXIT_DIVERGED = 4  # training: the loss became NaN or infinite
EXIT_DATA = 65  # bad data: dataset, image folder, or weight file contents
EXIT_NOINPUT = 66  # an input path does not exist or cannot be read
EXIT_UNAVAILABLE = 69  # --scheduler: the Dask scheduler cannot be reached, or went away mid-run
EXIT_INTERNAL = 70  # a bug in cnncli
EXIT_CANTCREAT = 73  # the output cannot be created (missing or read-only directory, exists)
EXIT_IOERR = 74  # writing failed (disk full, file-size limit, I/O error)
EXIT_LOCKED = 75  # another run holds the output's lock; retry later
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class CnnError(Exception):
    """Base class: a one-line, user-facing message and an exit code."""

    exit_code = EXIT_INTERNAL


class UsageError(CnnError):
    """A bad option or argument; raised only by cnncli/commands, where options have names."""

    exit_code = EXIT_USAGE


class DataError(CnnError):
    """A dataset or image folder cannot be used (no classes, empty class, strict mode ...)."""

    exit_code = EXIT_DATA


class BadImageError(DataError):
    """One image file cannot be decoded; the message names the file and the reason."""


class FormatError(DataError):
    """A weight file is not a valid cnncli weight file; the message names the file and the reason."""


class SpecError(DataError):
    """An architecture spec is malformed or does not fit the input shape."""


class NoInputError(CnnError):
    """An input (data folder, weight file, image list) does not exist or cannot be read."""

    exit_code = EXIT_NOINPUT


class MissingExtraError(CnnError):
    """An option needs an optional extra that is not installed (--scheduler needs cnncli[dask])."""

    exit_code = EXIT_USAGE


class ClusterError(CnnError):
    """The Dask scheduler cannot be reached, or went away mid-run (rows already written stay valid)."""

    exit_code = EXIT_UNAVAILABLE


class OutputError(CnnError):
    """The output cannot be created where asked (checked before long work starts)."""

    exit_code = EXIT_CANTCREAT


class WriteError(CnnError):
    """Writing failed (disk full, file-size limit, I/O error); the previous file is intact."""

    exit_code = EXIT_IOERR


class LockedError(CnnError):
    """Another run holds the output's lock; the message names its pid."""

    exit_code = EXIT_LOCKED


class DivergedError(CnnError):
    """The training loss became NaN or infinite; nothing was written."""

    exit_code = EXIT_DIVERGED


class GateError(CnnError):
    """A quality bar was missed (eval --fail-under, check's duplicates, train --fail-on-collapse)."""

    exit_code = EXIT_GATE


def one_line(text) -> str:
    """str(text) with backslash, tab, CR and LF written as \\\\ \\t \\r \\n, other control characters (NUL,
    ESC, DEL ...) and bytes that are not UTF-8 (os.fsdecode's surrogates) as \\xNN: always one line of valid
    UTF-8 without terminal escapes, from which the name can be recovered."""
    s = str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    s = s.translate(_CONTROL)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Control characters left after the named escapes: written \xNN, never raw (a NUL or ESC on stdout).
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if chr(c) not in "\t\n\r"}
