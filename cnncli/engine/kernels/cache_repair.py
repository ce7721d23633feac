"""A damaged entry of numba's on-disk kernel cache counts as a miss: the kernel is compiled again and the entry
rewritten, as the decode cache treats its damaged entries.

numba reads a cached kernel lazily, on its first call in a process: `Cache.load_overload` reads the function's
index file (`*.nbi`, a pickle of signatures -> data file names) and then its data file (`*.nbc`, the pickled
machine code). numba itself only forgives a missing data file: a truncated `*.nbc` or junk in a `*.nbi` (a full
disk, a copy cut short, two machines sharing a cache folder) raises UnpicklingError on every call of every
command, for good. `install` wraps the two readers so that any exception while reading counts as "not cached":
numba then compiles the kernel and saves it, overwriting the damaged files. Before reading, an entry must be a
regular file of at most MAX_ENTRY_BYTES: a FIFO there would block the read for good (past SIGTERM), a symlink to
/dev/zero would be read until memory runs out, a directory fails. And an entry that cannot be written (a
directory in its place) leaves the kernel compiled for this run only. What this cannot catch is an entry
altered in place with valid framing: numba hands its machine code to LLVM, which aborts the process on an
invalid object file; deleting the numba cache folder repairs that (README, Development). A numba without these
internals (a later version) keeps its own behaviour.
"""

import functools
import os
import stat

MAX_ENTRY_BYTES = 64 * 1024 * 1024  # cnncli's cached kernels are tens of KB to a few MB

_INSTALLED = False


def _miss_on_error(read, miss):
    """read, except that an exception while reading returns miss() (an empty index, no cached kernel)."""
    @functools.wraps(read)
    def wrapper(*args, **kwargs):
        try:
            return read(*args, **kwargs)
        except Exception:  # noqa: BLE001 - whatever the damage (unpickling, rebuilding): compile again
            return miss()

    return wrapper


def _readable_entry(path):
    """Raise OSError (numba's "not cached") unless path is a regular file of at most MAX_ENTRY_BYTES; a missing
    file raises FileNotFoundError, as numba expects."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
        raise OSError(f"{path}: not a regular cache file of at most {MAX_ENTRY_BYTES} bytes")


def _checked_index(load_index):
    @functools.wraps(load_index)
    def wrapper(self):
        try:
            _readable_entry(self._index_path)
        except FileNotFoundError:
            return {}
        return load_index(self)

    return wrapper


def _checked_data(load_data):
    @functools.wraps(load_data)
    def wrapper(self, name):
        _readable_entry(self._data_path(name))
        return load_data(self, name)

    return wrapper


def _save_or_skip(save):
    """save, except that an entry that cannot be written leaves the kernel compiled for this run only."""
    @functools.wraps(save)
    def wrapper(*args, **kwargs):
        try:
            return save(*args, **kwargs)
        except OSError:
            return None

    return wrapper


def install():
    """Make damaged numba cache entries count as misses, once per process; a no-op on a numba whose
    numba.core.caching lacks Cache.load_overload or IndexDataCacheFile._load_index."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - a numba that moved its caching module
        return
    index_file, cache = getattr(caching, "IndexDataCacheFile", None), getattr(caching, "Cache", None)
    if index_file is None or cache is None:
        return
    if callable(getattr(index_file, "_load_index", None)):
        # Read before every load and every save: an unreadable index is an empty one, so the save that follows
        # the compilation writes a fresh index instead of failing on the old one.
        index_file._load_index = _miss_on_error(_checked_index(index_file._load_index), dict)
    if callable(getattr(index_file, "_load_data", None)):
        index_file._load_data = _checked_data(index_file._load_data)  # OSError: numba's load() counts a miss
    if callable(getattr(cache, "load_overload", None)):
        # A data file cut short, or one whose code cannot be rebuilt: no cached kernel, compile it.
        cache.load_overload = _miss_on_error(cache.load_overload, lambda: None)
    if callable(getattr(cache, "save_overload", None)):
        cache.save_overload = _save_or_skip(cache.save_overload)
