"""Opening an image's bytes: a regular file as it is, a pipe, FIFO or device read once into memory."""

from __future__ import annotations

import io
import os
import stat

from cnncli.errors import BadImageError

MAX_STREAM_BYTES = 256 << 20  # what one image read from a pipe or device may take: no image file is near it


def open_source(path: str | os.PathLike, content: bytes | None):
    """An open binary file for `path`, or a memory file over `content` (the bytes a caller already read)."""
    if content is not None:
        if not content:
            raise BadImageError(f"{path}: empty file")
        return io.BytesIO(content)
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            if st.st_size == 0:
                raise BadImageError(f"{path}: empty file")
            return open(path, "rb")
        # A pipe, FIFO or device (/dev/stdin, <(cat img.jpg)): its size says nothing and it can be read only
        # once, so read it whole here, bounded, and decode from memory. Opened without blocking, so a named
        # pipe that no program writes to reads as empty instead of waiting for a writer forever; then read
        # blocking, so a writer that is there (even one still waiting to open it) is read to its end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            os.set_blocking(fd, True)
            data = f.read(MAX_STREAM_BYTES + 1)
        if len(data) > MAX_STREAM_BYTES:
            raise BadImageError(f"{path}: more than {MAX_STREAM_BYTES >> 20} MiB from a pipe or device")
        if not data:
            raise BadImageError(f"{path}: empty file")
        return io.BytesIO(data)
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, or BadImageError("<path>: cannot read file (...)") as `decode` reports it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
