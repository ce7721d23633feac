"""Where `predict`'s inputs come from: arguments, folders, glob patterns and paths on stdin, all streamed.

Every input becomes a (path, error message or None) entry, lazily and in order, so the first rows go out
before a large folder or a long stdin list has been read to the end, and memory stays flat. Nothing here
imports numpy or the model.
"""

import glob
import os
import sys

from cnncli.data.images import has_image_extension

# Longest path accepted on stdin, in bytes: Linux's PATH_MAX. A longer "path" (say, stdin without a single
# separator) becomes one error row instead of an ever-growing buffer.
PATH_MAX = 4096
_SHOWN = 100  # bytes of an over-long path shown in its error row
_CHUNK = 65536
_GLOB_CHARS = frozenset("*?[")


def _stdin_chunks():
    """Chunks of bytes from stdin as they arrive. The file descriptor is read directly (no buffered reader):
    the reading thread may still be blocked in a read when the process exits, and a buffered object's lock
    held by such a thread aborts Python at shutdown."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    if stream is None:
        return
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests feed a BytesIO)
        fd = None
    while True:
        chunk = os.read(fd, _CHUNK) if fd is not None else stream.read(_CHUNK)
        if not chunk:
            return
        yield chunk


def _stdin_entry(raw, null):
    if not null:
        raw = raw.rstrip(b"\r")
    if not raw:
        return None
    path = os.fsdecode(raw)
    if b"\0" in raw:
        return path, "file name contains a NUL byte"
    return path, None


def stdin_paths(null, chunks=None):
    """(path, error or None) for each path on stdin, one per line (NUL-separated with null=True).

    Undecodable bytes survive via os.fsdecode (surrogateescape). Empty lines are skipped. A path longer than
    PATH_MAX bytes yields (its first bytes + "...", error) and the rest of it is skipped as it arrives, so
    memory and time stay linear in the input whatever it holds.
    """
    sep = b"\0" if null else b"\n"
    pending = bytearray()
    overlong = False
    for chunk in _stdin_chunks() if chunks is None else chunks:
        start = 0
        while start <= len(chunk):
            end = chunk.find(sep, start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not overlong:
                pending += piece
                overlong = len(pending) > PATH_MAX
            if end < 0:
                break
            start = end + 1
            if overlong:
                yield os.fsdecode(bytes(pending[:_SHOWN])) + "...", f"path longer than {PATH_MAX} bytes"
            else:
                entry = _stdin_entry(bytes(pending), null)
                if entry is not None:
                    yield entry
            pending.clear()
            overlong = False
    if overlong:
        yield os.fsdecode(bytes(pending[:_SHOWN])) + "...", f"path longer than {PATH_MAX} bytes"
    elif pending:
        entry = _stdin_entry(bytes(pending), null)
        if entry is not None:
            yield entry


def _listing(folder):
    """The visible entries of one folder as (sort key, path, is_dir), sorted so that a depth-first walk gives
    paths in the order of their text (a folder sorts as name + "/"). Raises OSError when it cannot be read."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    out.append((e.name + "/", e.path, True))
                elif has_image_extension(e.name) and e.is_file():
                    out.append((e.name, e.path, False))
            except OSError:
                continue  # vanished while listing: nothing to classify
    out.sort()
    return out


def skip_keys(*folders):
    """The (st_dev, st_ino) of each existing folder among folders (None entries ignored): walk_images' skip."""
    keys = set()
    for folder in filter(None, folders):
        try:
            st = os.stat(folder)
        except (OSError, ValueError):
            continue
        keys.add((st.st_dev, st.st_ino))
    return keys


def walk_images(folder, skip=()):
    """Yield (path, None) for every image file under folder, recursively, in the order of their paths, and
    (folder path, reason) for each folder that cannot be listed; the walk goes on past it.

    Same files as training folders (hidden names skipped, image extensions only, a folder reached twice
    through symlinks read once), but streamed: only the folders on the current branch are held in memory.
    skip: skip_keys() of folders passed over below folder (predict's --sort-into DIR: its links are
    outputs, not inputs); folder itself is walked even if listed there.
    """
    seen = set()
    stack = []

    def enter(d):
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen or (stack and (st.st_dev, st.st_ino) in skip):
                return None
            seen.add((st.st_dev, st.st_ino))
            stack.append(iter(_listing(d)))
        except OSError as exc:
            return d, f"cannot read folder ({exc.strerror or exc})"
        return None

    failed = enter(folder)
    if failed:
        yield failed
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry[2]:
            failed = enter(entry[1])
            if failed:
                yield failed
        else:
            yield entry[1], None


def _expand(item, skip=()):
    """Entries for one named input (an argument or a path from stdin) that has no error of its own."""
    if os.path.isdir(item):
        yield from walk_images(item, skip)
    elif os.path.exists(item):
        yield item, None
    else:
        yield item, "no such file"


def iter_inputs(args, null=False, skip=()):
    """Yield (path, error message or None) for every input, lazily and in order.

    A file is used whatever its extension; a folder gives its image files recursively (walk_images, passing
    over the sub-folders in skip); an argument that is neither but holds * ? [ is a glob
    pattern (** recursive), expanded sorted; "-" reads paths from stdin (stdin_paths). Anything else yields an
    error entry ("no such file").
    """
    for arg in args:
        if arg == "-":
            for item, err in stdin_paths(null):
                yield from ((item, err),) if err else _expand(item, skip)
        elif not os.path.exists(arg) and _GLOB_CHARS & set(arg):
            found = sorted(glob.iglob(arg, recursive=True))
            if not found:
                yield arg, "no file matches this pattern"
            for p in found:
                yield from _expand(p, skip)
        else:
            yield from _expand(arg, skip)
