"""A damaged entry of numba's on-disk kernel cache counts as a miss: the kernel is compiled again and the entry
rewritten, as the decode cache treats its damaged entries.

numba reads a cached kernel lazily, on its first call in a process: `Cache.load_overload` reads the function's
index file (`*.nbi`, a pickle of signatures -> data file names) and then its data file (`*.nbc`, the pickled
machine code). numba itself only forgives a missing data file: a truncated `*.nbc` or junk in a `*.nbi` (a full
disk, a copy cut short, two machines sharing a cache folder) raises UnpicklingError on every call of every
command, for good. `install` wraps the two readers so that any exception while reading counts as "not cached":
numba then compiles the kernel and saves it, overwriting the damaged files. A numba without these internals
(a later version) keeps its own behaviour.
"""

import functools

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
        index_file._load_index = _miss_on_error(index_file._load_index, dict)
    if callable(getattr(cache, "load_overload", None)):
        # A data file cut short, or one whose code cannot be rebuilt: no cached kernel, compile it.
        cache.load_overload = _miss_on_error(cache.load_overload, lambda: None)
