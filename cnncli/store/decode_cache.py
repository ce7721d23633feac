"""A persistent cache of decoded images, so a second `train` on the same folder starts without decoding.

Where: `$CNNCLI_CACHE_DIR` if set, else `$XDG_CACHE_HOME/cnncli/decoded` (default `~/.cache/cnncli/decoded`).
How much: `$CNNCLI_CACHE_SIZE` bytes at most (a number with an optional K, M or G suffix, powers of 1024;
default 2G; 0 turns the cache off); when a run has written entries and the folder holds more, the least
recently used entries (oldest modification time: a hit touches its entry) are removed until it fits.

An entry is keyed by the SHA-256 of the file's bytes, every decode setting that changes the pixels (size,
channels, resize rule, the JPEG draft margin, the decoder's revision, Pillow's version) and cnncli's version,
so an edited file, other settings or another release never hit an old entry. It holds the key and a SHA-256 of
its pixels: a corrupt, truncated or foreign entry fails the check and the image is decoded again, never used.
Entries are written whole under a temporary name and renamed into place (store/atomic.py), so a concurrent
reader sees a complete entry or none. The bytes that are hashed are the bytes that are decoded (one read).
Tiny images (is_tiny: at most 32x32 source pixels) are decoded directly: caching them does not pay.

Entry layout: MAGIC (8 bytes), key (32), channels, height, width (uint16 little-endian each), SHA-256 of the
pixels (32), then the uint8 (C, H, W) pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import threading
import time
from pathlib import Path

import numpy as np
import PIL
import PIL.Image

from cnncli import __version__
from cnncli.data import images
from cnncli.errors import OutputError, WriteError
from cnncli.store.atomic import atomic_write_bytes

MAGIC = b"cnncdc01"
_HEAD = struct.Struct("<8s32s3H32s")
DEFAULT_CAP = 2 * 1024**3
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
STALE_TEMP_SECONDS = 3600  # a temp file this old belongs to a run that died while writing it


def default_dir(env=None) -> Path:
    """The cache folder: CNNCLI_CACHE_DIR, else XDG_CACHE_HOME/cnncli/decoded (if absolute), else
    ~/.cache/cnncli/decoded."""
    env = os.environ if env is None else env
    if env.get("CNNCLI_CACHE_DIR"):
        return Path(env["CNNCLI_CACHE_DIR"])
    xdg = env.get("XDG_CACHE_HOME") or ""
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and ignored (it would put the cache in the cwd).
    base = Path(xdg) if os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "cnncli" / "decoded"


def parse_bytes(text: str | None, name: str = "CNNCLI_CACHE_SIZE", default: int = DEFAULT_CAP) -> int:
    """Bytes from a size setting's text ("2G", "500M", "65536", "0"); None or "" gives `default`.
    Raises ValueError naming the setting for anything else."""
    if text is None or not text.strip():
        return default
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    number = t[:-1] if unit else t
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value * _UNITS[unit] < 2**62):
        raise ValueError(f"{name}: expected bytes with an optional K, M or G suffix (e.g. 2G), got {text!r}")
    return int(value * _UNITS[unit])


def settings_key(size: int, channels: int, resize: str) -> bytes:
    """Everything besides the file's bytes that decides the pixels `images.decode` gives, as bytes."""
    return json.dumps({"size": size, "channels": channels, "resize": resize, "draft": images.DRAFT_MARGIN,
                       "min_side": images.MIN_SIDE, "decoder": images.DECODER_REVISION,
                       "pillow": PIL.__version__, "cnncli": __version__}, sort_keys=True).encode()


class DecodeCache:
    """The cache folder `root` holding at most `cap` bytes. `decode` has images.decode's signature and
    result; hits and misses are counted (`hits`, `decoded`). Writing never fails a run: the first error turns
    writing off and leaves its reason in `off_reason`."""

    def __init__(self, root: str | os.PathLike, cap: int = DEFAULT_CAP):
        self.root = Path(root)
        self.cap = int(cap)
        self.hits = self.decoded = self.written = 0
        self.off_reason: str | None = None
        self._lock = threading.Lock()

    def key(self, content: bytes, size: int, channels: int, resize: str) -> bytes:
        """The 32-byte key of `content` decoded with these settings."""
        h = hashlib.sha256(settings_key(size, channels, resize))
        h.update(hashlib.sha256(content).digest())
        return h.digest()

    def _path(self, key: bytes) -> Path:
        hexkey = key.hex()
        return self.root / hexkey[:2] / hexkey[2:]

    def get(self, key: bytes) -> np.ndarray | None:
        """The verified uint8 (C, H, W) pixels stored under `key`, or None (missing, damaged or foreign)."""
        path = self._path(key)
        blob = _read_entry(path)
        if blob is None or len(blob) < _HEAD.size:
            return None
        magic, stored_key, c, h, w, digest = _HEAD.unpack_from(blob)
        pixels = memoryview(blob)[_HEAD.size:]
        if (magic != MAGIC or stored_key != key or len(pixels) != c * h * w
                or hashlib.sha256(pixels).digest() != digest):
            return None
        try:
            os.utime(path)  # least recently USED: a hit counts as a use
        except OSError:
            pass
        return np.frombuffer(blob, np.uint8, offset=_HEAD.size).reshape(c, h, w)

    def put(self, key: bytes, pixels: np.ndarray) -> None:
        """Store uint8 (C, H, W) pixels under `key`; on any error stop writing (off_reason says why)."""
        if self.off_reason is not None:
            return
        data = np.ascontiguousarray(pixels, np.uint8)
        body = data.tobytes()
        blob = _HEAD.pack(MAGIC, key, *data.shape, hashlib.sha256(body).digest()) + body
        path = self._path(key)
        try:
            # private: the entries are the user's pictures, and whoever can write here could plant others
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            atomic_write_bytes(path, blob, durable=False)  # entries verify themselves: no fsync needed
        except (OSError, WriteError, OutputError) as exc:  # e.g. a folder planted where the entry goes
            with self._lock:
                self.off_reason = self.off_reason or (str(exc) if isinstance(exc, (WriteError, OutputError))
                                                      else f"{path.parent}: {exc.strerror or exc}")
            return
        with self._lock:
            self.written += 1

    def decode(self, path, size: int, channels: int, resize: str = "crop") -> np.ndarray:
        """images.decode(path, size, channels, resize), from the cache when a verified entry exists. A path that
        is not a regular file (a FIFO, a device, a link to one: predict takes any path) is decoded directly, so
        the whole-file read that the key needs never blocks or runs without end; so is a tiny image (is_tiny)."""
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except (OSError, ValueError):
            regular = False  # images.decode names the problem
        content = images.read_bytes(path) if regular else None
        if content is None or is_tiny(content):  # no key, no entry
            pixels = images.decode(path, size, channels, resize, content=content)
            with self._lock:
                self.decoded += 1
            return pixels
        key = self.key(content, size, channels, resize)
        found = self.get(key)
        if found is not None:
            with self._lock:
                self.hits += 1
            return found
        pixels = images.decode(path, size, channels, resize, content=content)
        with self._lock:
            self.decoded += 1
        self.put(key, pixels)
        return pixels

    def trim(self) -> int:
        """Remove least recently used entries until the folder holds at most `cap` bytes (and temp files of
        runs that died an hour ago or more); returns the bytes removed. Errors are ignored: another run may
        be trimming too."""
        entries, total, now = [], 0, time.time()
        try:
            subdirs = [d for d in os.scandir(self.root) if len(d.name) == 2 and d.is_dir(follow_symlinks=False)]
        except OSError:
            return 0
        for sub in subdirs:
            try:
                with os.scandir(sub.path) as it:
                    for e in it:
                        st = e.stat(follow_symlinks=False)
                        if e.name.startswith("."):
                            if now - st.st_mtime > STALE_TEMP_SECONDS:
                                _unlink(e.path)
                            continue
                        if len(e.name) != 62 or not stat.S_ISREG(st.st_mode) or not _is_entry(e.path):
                            continue  # not ours: a cache folder may have been pointed at other files
                        used = max(st.st_size, st.st_blocks * 512)  # what the disk gives, not only the bytes
                        entries.append((st.st_mtime, e.path, used))
                        total += used
            except OSError:
                continue
        removed = 0
        entries.sort()
        for _, p, used in entries:
            if total - removed <= self.cap:
                break
            if _unlink(p):
                removed += used
        return removed


# Images of at most TINY_PIXELS source pixels are never cached: a 28x28 PNG (Fashion-MNIST) decodes in about the
# time reading its entry takes, and writing the entry costs 6x its decode (README, "The decode cache"). Only files
# of at most TINY_FILE bytes are checked (a 32x32 image takes 4 KiB uncompressed at 8-bit RGBA), so a larger file
# costs no header parse; a rare larger tiny file (16-bit, padded) is just cached as before.
TINY_PIXELS = 32 * 32
TINY_FILE = 8192


def is_tiny(content: bytes) -> bool:
    """True when `content` (a file's bytes) is an image of an allowed format with at most TINY_PIXELS pixels,
    read from its header alone. Anything else (larger, or not an image: the decoder reports that) is False."""
    if len(content) > TINY_FILE:
        return False
    try:
        with PIL.Image.open(io.BytesIO(content), formats=images.ALLOWED_FORMATS) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001 - any header Pillow refuses: the decoder names the problem
        return False
    return width * height <= TINY_PIXELS


# The largest entry there can be: 3 channels of the largest input side train allows (1024 px), plus the header.
MAX_ENTRY_BYTES = _HEAD.size + 3 * 1024 * 1024


def _read_entry(path, limit: int = MAX_ENTRY_BYTES) -> bytes | None:
    """The first bytes (at most `limit`) of the entry file at `path`, or None unless it is a regular file (not a
    symbolic link, FIFO, device or folder someone planted there) of at most MAX_ENTRY_BYTES: a planted entry
    never makes cnncli block, follow a link or read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            blob = f.read(limit + 1)
        return blob[:limit] if len(blob) <= MAX_ENTRY_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _is_entry(path) -> bool:
    """True when the file at `path` could be an entry: it starts with MAGIC (trim removes nothing else)."""
    return _read_entry(path, len(MAGIC)) == MAGIC


def _unlink(path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def open_cache(enabled: bool, env=None) -> tuple[DecodeCache | None, str]:
    """(the cache train, eval and batch predict use, or None, and a line saying where it is or why it is off).
    ValueError for a bad CNNCLI_CACHE_SIZE."""
    env = os.environ if env is None else env
    if not enabled:
        return None, "decode cache off (--no-cache)"
    cap = parse_bytes(env.get("CNNCLI_CACHE_SIZE"))
    if cap == 0:
        return None, "decode cache off (CNNCLI_CACHE_SIZE=0)"
    root = default_dir(env)
    return DecodeCache(root, cap), f"decode cache {root}"
