"""Crash-safe output: atomic file replacement, a pre-flight writability check, and a per-output lock.

Guarantee of `atomic_write_bytes`: after it returns, `path` holds exactly the new bytes and survives a power
loss; if it fails or the process is killed at any moment, `path` still holds its previous complete contents
(or does not exist, if it did not before). A killed process may leave a stale hidden temp file
`.<name>.XXXXXXXX.tmp` next to the target; readers never look at it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from cnncli.errors import LockedError, OutputError, WriteError

_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EFBIG: "file too large",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "directory does not exist",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EISDIR: "is a directory",
    errno.EIO: "I/O error",
    errno.ELOOP: "is a symbolic link",
}

_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a named pipe (FIFO)",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def _not_replaceable(path: Path) -> str | None:
    """Why `path` must not be replaced by a file (a device, FIFO, socket or directory), or None.

    A regular file or a symlink (the link itself is replaced, never its target) may be replaced; so may a
    path that does not exist. Replacing /dev/null or a FIFO another program reads would break far more than
    cnncli's own output.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _os_reason(exc)
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    return f"is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file; refusing to replace it"


def _os_reason(exc: BaseException) -> str:
    """A short human reason for an OSError (or any exception), e.g. 'disk full'."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return _REASONS.get(exc.errno) or os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


_UMASK_QUERY = threading.Lock()


def _new_file_mode(path: Path) -> int:
    """Mode for the replacement file: keep an existing target's mode, else what open() would give (0666 & ~umask).

    mkstemp creates 0600 files; without this, every saved model would silently become private.
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        with _UMASK_QUERY:  # two threads interleaving set/restore would leave 0o022 as the process umask
            umask = os.umask(0o022)  # os has no read-only umask query; set and restore at once
            os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; filesystems that cannot fsync a directory are tolerated."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Replace the file at `path` with `data` atomically and durably.

    Writes a unique temp file in the same directory (same filesystem, so the rename is atomic), fsyncs it,
    `os.replace`s it onto `path` and fsyncs the directory. durable=False skips both fsyncs: still atomic
    (readers see the old or the new file), but a power loss may lose or empty the file; only for files whose
    readers verify them anyway (decode cache entries). An existing file at `path` is never opened for
    writing, so it cannot be truncated or damaged. If `path` is a symlink, the link itself is replaced.

    Raises WriteError("<path>: cannot write: <reason>") on any failure, after removing the temp file.
    KeyboardInterrupt/SystemExit also remove the temp file but propagate unchanged. Raises OutputError (exit 73)
    without writing anything if `path` is a device, FIFO, socket or directory.
    """
    path = Path(path)
    why = _not_replaceable(path)
    if why is not None:
        raise OutputError(f"{path}: {why}")
    directory = path.parent
    tmp: str | None = None
    try:
        import tempfile  # here: loading a model (predict) never writes

        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _new_file_mode(path))
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            _fsync_dir(directory)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise WriteError(f"{path}: cannot write: {_os_reason(exc)}") from exc


def check_writable_target(path: str | os.PathLike, overwrite: bool) -> None:
    """Fail fast, before long work starts, if `path` cannot be created as an output file.

    Checks that `path` is not empty, a directory or another non-regular file (device, FIFO, socket: never
    replaced, even with `overwrite`), its parent directory exists, `path` does not already exist unless
    `overwrite`, and that a file can really be created in the directory (a temp file is created and removed,
    which also catches read-only mounts and works when running as root, where permission bits are ignored).

    Raises OutputError (exit 73) with a one-line message naming the path.
    """
    if not os.fspath(path):
        raise OutputError("the output file name is empty")
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputError(f"{path}: is a directory (expected a file name)")
    why = _not_replaceable(path)
    if why is not None:
        raise OutputError(f"{path}: {why}")
    if not parent.exists():
        raise OutputError(f"{path}: directory does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"{path}: not a directory: {parent}")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{path}: already exists (use --overwrite)")
    try:
        import tempfile

        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create files in {parent}: {_os_reason(exc)}") from exc


def _describe_holder(text: str) -> str:
    """'pid N on host H, started T' from a lock file's contents, tolerant of empty or garbage contents."""
    try:
        info = json.loads(text)
        pid, host, started = info["pid"], info["host"], info["started"]
    except (ValueError, TypeError, KeyError):
        return "pid unknown"
    return f"pid {pid} on {host}, started {started}"


class OutputLock:
    """Exclusive advisory lock for one output path, held for a whole run (context manager).

    Locks the sibling file f"{path}.lock" with `flock(LOCK_EX | LOCK_NB)` and writes the holder's pid, host,
    start time and command line into it (JSON). If another process holds it, polls until `wait` seconds have
    passed, then raises LockedError (exit 75) naming the holder. The lock is released when the process exits,
    even on SIGKILL, because the kernel drops flock locks with the file descriptor.

    The lock file is removed on release. That is safe only because acquiring re-checks, after the flock
    succeeds, that the locked inode is still the one at the lock path; a process that locked an unlinked
    file retries on the new one. flock is advisory and may not work across hosts on NFS.

    The lock file is opened with O_NOFOLLOW and must be a regular file with a single link: anyone who can
    write the output folder could otherwise plant `OUT.lock` as a symlink or hard link to another file
    (notes.txt, /etc/passwd) and have a cron run truncate it. Such a lock file is refused (OutputError,
    exit 73) and left untouched.
    """

    POLL_SECONDS = 0.1

    def __init__(self, path: str | os.PathLike, wait: float = 0, lock_path: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        # lock_path: one lock for a group of files (a weight file and its sidecars), whatever their spelling
        self.lock_path = Path(lock_path) if lock_path is not None else Path(f"{self.path}.lock")
        self.wait = max(0.0, float(wait))
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise LockedError after `wait` seconds; OutputError if the lock file cannot be made."""
        deadline = time.monotonic() + self.wait
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"{self.path} is being written by another cnncli run ({self._holder()}); "
                        f"lock file {self.lock_path}"
                    ) from None
                time.sleep(self.POLL_SECONDS)
                continue
            except OSError as exc:
                os.close(fd)
                raise OutputError(f"{self.lock_path}: cannot lock: {_os_reason(exc)}") from exc
            if self._still_linked(fd):
                break
            os.close(fd)  # the previous holder removed this inode after we opened it: start over
        self._fd = fd
        import socket  # here, not at import: loading a model (predict) takes no lock

        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "argv": sys.argv,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass  # the holder description is a courtesy; the flock is what excludes
        return self

    def _open(self) -> int:
        """A descriptor for the lock file, created if missing; never through a symlink, never a non-file."""
        # O_NONBLOCK: opening a planted FIFO must not hang; it is refused below anyway.
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.lock_path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{self.lock_path}: lock file is a symbolic link; refusing to use it "
                                  "(remove it if no cnncli run is active)") from None
            raise OutputError(f"{self.lock_path}: cannot create lock file: {_os_reason(exc)}") from exc
        st = os.fstat(fd)
        # st_nlink 0 is a lock file its holder just removed on release: acquire() notices and starts over.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            os.close(fd)
            what = "is not a regular file" if not stat.S_ISREG(st.st_mode) else "has other hard links"
            raise OutputError(f"{self.lock_path}: lock file {what}; refusing to use it "
                              "(remove it if no cnncli run is active)")
        return fd

    def _still_linked(self, fd: int) -> bool:
        try:
            st = os.stat(self.lock_path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _holder(self) -> str:
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return "pid unknown"
        try:
            return _describe_holder(os.read(fd, 4096).decode("utf-8", "replace"))
        except OSError:
            return "pid unknown"
        finally:
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file (while still holding it) and drop the lock. Safe to call twice."""
        if self._fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
