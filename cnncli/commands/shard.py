"""`--shard I/N`: which inputs this run takes when N runs (machines, cron entries, array jobs) share them.

An input belongs to shard I (0 <= I < N) when the first 8 bytes of SHA-256 over its path's bytes, read as an
unsigned big-endian number, are I modulo N. A hash of the path, not a position in the sorted list: every run
decides for each path on its own, as it streams past, so shards work with `-` (paths on stdin) and with folders
listed lazily, without any run having to read and sort the whole list first. It depends only on the path's
bytes as given, never on the process (Python's hash() is salted per process), so the same list split N ways
on N machines gives each input to exactly one shard, error rows included.
"""

import hashlib
import os

from cnncli.errors import UsageError


def parse_shard(text):
    """'I/N' -> (i, n) with integers 0 <= i < n; UsageError otherwise."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UsageError(f"--shard: expected I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard: need 0 <= I < N, got {text!r}")
    return i, n


def shard_of(path, n):
    """The shard (0 .. n-1) of a path (str, possibly with os.fsdecode surrogates, or os.PathLike)."""
    digest = hashlib.sha256(os.fsencode(os.fspath(path))).digest()
    return int.from_bytes(digest[:8], "big") % n


def take_shard(entries, shard, key=lambda e: e[0], on_other=None):
    """The entries whose key(entry) path falls in shard (i, n); all of them when shard is None. Lazy.
    on_other(entry) is called for each entry of another shard."""
    if shard is None:
        yield from entries
        return
    i, n = shard
    for entry in entries:
        if shard_of(key(entry), n) == i:
            yield entry
        elif on_other is not None:
            on_other(entry)
