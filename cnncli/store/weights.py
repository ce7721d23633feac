"""cnncli weight files: safetensors with a strict, versioned cnncli schema on top. Never pickle.

A weight file is a safetensors file whose tensors are all float32 (little-endian, C order) and whose
`__metadata__` (a str -> str map) holds:

- "format": the literal "cnncli"
- "format_version": a decimal integer, currently "2"; other versions are refused (newer: upgrade cnncli;
  older: format 1 did not checksum its metadata, so nothing in it can be trusted to be what was trained)
- "tensor_sha256": hex SHA-256 over the tensors in sorted name order, each contributing
  name \\0 dtype \\0 shape \\0 raw bytes (dtype "F32", shape as comma-joined decimals, e.g. "16,3,3,3")
- every caller key (arch, classes, input, preprocess, train, threshold, ...) as a JSON-encoded string
- "metadata_sha256": hex SHA-256 over every other metadata key and its string, in sorted key order, each as
  key \\0 value \\0; it covers tensor_sha256 too, so one digest vouches for the whole file

Loading reads the file into memory once (so a concurrent atomic replace cannot tear what we see), lets the
audited safetensors parser check the structure, then checks the schema, dtypes, checksum and finiteness.
Every problem becomes one FormatError (exit 65) naming the file; a missing path is NoInputError (exit 66).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from cnncli.store.atomic import atomic_write_bytes
from cnncli.errors import FormatError, LockedError, NoInputError, WriteError

FORMAT_NAME = "cnncli"
FORMAT_VERSION = 2

MAX_FILE_BYTES = 2 * 1024**3  # larger files are the wrong file or a denial of service, refused before reading
MAX_HEADER_BYTES = 16 * 1024**2  # metadata is small; safetensors' own cap (100 MB) is far looser

RESERVED_KEYS = ("format", "format_version", "tensor_sha256", "metadata_sha256")
_F32 = np.dtype("<f4")


class ChangedError(LockedError):
    """The file changed between reading it and writing it back (exit 75: retry)."""


def tensor_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 of float32 tensors as stored: sorted names, each name\\0F32\\0shape\\0little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype=_F32)
        h.update(name.encode("utf-8") + b"\0F32\0")
        h.update(",".join(str(d) for d in arr.shape).encode("ascii") + b"\0")
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def metadata_digest(raw: Mapping[str, str]) -> str:
    """Hex SHA-256 of the stored metadata strings except metadata_sha256: sorted keys, each key\\0value\\0."""
    h = hashlib.sha256()
    for key in sorted(raw):
        if key != "metadata_sha256":
            h.update(key.encode("utf-8", "surrogatepass") + b"\0" + raw[key].encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata key {key!r} is not a string")
        if key in RESERVED_KEYS:
            continue  # written by save itself; accepted so that load() -> save() round-trips
        try:
            out[key] = json.dumps(value, allow_nan=False, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata {key!r} is not JSON-serialisable: {exc}") from None
    return out


def save(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Write a weight file atomically (see cnncli.store.atomic): the old file survives any failure or crash.

    tensors: name -> float32 ndarray of any shape (e.g. "layers.0.weight" (16, 3, 3, 3)); all must be finite.
    metadata: key -> JSON-serialisable value (no NaN/Inf floats); reserved keys are ignored and recomputed.
    Raises ValueError for caller bugs (wrong dtype, non-finite values, unserialisable metadata) and
    WriteError (exit 74) when the file cannot be written (disk full, file-size limit, ...).
    """
    arrays: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"bad tensor name {name!r}")
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            raise ValueError(f"tensor {name!r} must be a float32 ndarray, got {getattr(arr, 'dtype', type(arr))}")
        if not np.isfinite(arr).all():
            raise ValueError(f"tensor {name!r} contains non-finite values (NaN or Inf); refusing to save")
        arrays[name] = np.ascontiguousarray(arr, dtype=_F32)
    meta = _encode_metadata(metadata)
    meta["format"] = FORMAT_NAME
    meta["format_version"] = str(FORMAT_VERSION)
    meta["tensor_sha256"] = tensor_digest(arrays)
    meta["metadata_sha256"] = metadata_digest(meta)
    data = safetensors.numpy.save(arrays, metadata=meta)
    if len(data) > MAX_FILE_BYTES:
        raise WriteError(f"{path}: cannot write: model too large ({len(data)} bytes > {MAX_FILE_BYTES} limit)")
    _parse(path, data)  # the bytes must pass our own loader before they may replace a good file
    atomic_write_bytes(path, data)


def _stat_input(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NoInputError(f"{path}: weights file not found") from None
    except OSError as exc:
        raise NoInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise NoInputError(f"{path}: is a directory, not a weights file")
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise FormatError(f"{path}: empty file, not a cnncli weight file")
    if st.st_size > MAX_FILE_BYTES:
        raise FormatError(f"{path}: file too large for a weight file ({st.st_size} bytes > {MAX_FILE_BYTES})")
    return st


def _read_file(path: Path, limit: int) -> bytes:
    try:
        # O_NONBLOCK: a path swapped for a FIFO after _stat_input must not hang the read; fstat refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise NoInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{path}: not a regular file")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise NoInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:  # grew since stat
        raise FormatError(f"{path}: file too large for a weight file (> {limit} bytes)")
    return data


def _header_length(path: Path, prefix: bytes, total: int) -> int:
    """Header length from the first 8 bytes, refusing absurd values before anything is allocated."""
    if len(prefix) < 8:
        raise FormatError(f"{path}: not a safetensors file (only {len(prefix)} bytes)")
    n = int.from_bytes(prefix[:8], "little")
    if n < 2 or n > MAX_HEADER_BYTES:
        raise FormatError(f"{path}: not a safetensors file (implausible header length {n})")
    if 8 + n > total:
        raise FormatError(f"{path}: truncated or not a safetensors file (header runs past the end of the file)")
    return n


def _parse_header(path: Path, raw: bytes) -> dict:
    if not raw.lstrip().startswith(b"{"):
        raise FormatError(f"{path}: not a safetensors file (header is not a JSON object)")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: not a safetensors file (bad header: {_one_line(exc)})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _decode_metadata(path: Path, header: dict) -> dict[str, Any]:
    """Validate format and version, then JSON-decode the caller keys. Returns the full metadata dict."""
    raw = header.get("__metadata__")
    if raw is None or not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not a cnncli weight file (safetensors file without cnncli metadata)")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise FormatError(f"{path}: metadata values must be strings")
    version = raw.get("format_version", "")
    if not (version.isascii() and version.isdigit() and len(version) <= 6):
        raise FormatError(f"{path}: bad format_version {version[:20]!r}")
    if int(version) > FORMAT_VERSION:
        raise FormatError(
            f"{path}: written by a newer cnncli (format {int(version)} > {FORMAT_VERSION}); upgrade cnncli to read it"
        )
    if int(version) < 1:
        raise FormatError(f"{path}: bad format_version {version!r}")
    if int(version) < FORMAT_VERSION:
        raise FormatError(f"{path}: written by an older cnncli (format {int(version)}), whose metadata is not "
                          "covered by a checksum; train it again with this version")
    digests = {}
    for key in ("tensor_sha256", "metadata_sha256"):
        digests[key] = raw.get(key, "")
        if len(digests[key]) != 64 or any(c not in "0123456789abcdef" for c in digests[key]):
            raise FormatError(f"{path}: missing or malformed {key} in metadata")
    if metadata_digest(raw) != digests["metadata_sha256"]:
        raise FormatError(f"{path}: metadata does not match its checksum (file edited or damaged?)")
    meta: dict[str, Any] = {"format": FORMAT_NAME, "format_version": int(version), **digests}
    for key, text in raw.items():
        if key in RESERVED_KEYS:
            continue
        try:
            meta[key] = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise FormatError(f"{path}: metadata {key[:60]!r} is not valid JSON") from None
    return meta


def _parse(path: str | os.PathLike, data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Validate the bytes of a whole weight file; returns (tensors, metadata) as load() does."""
    path = Path(path)
    n = _header_length(path, data[:8], len(data))
    header = _parse_header(path, data[8 : 8 + n])
    meta = _decode_metadata(path, header)
    try:
        flat = safetensors.deserialize(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # SafetensorError, and pyo3's PanicException, which is a BaseException
        raise FormatError(f"{path}: damaged or truncated safetensors file ({_one_line(exc)})") from None
    tensors: dict[str, np.ndarray] = {}
    for name, view in flat:
        if view.get("dtype") != "F32":
            raise FormatError(f"{path}: tensor {name[:60]!r} has dtype {view.get('dtype')}, expected F32 (float32)")
        try:
            arr = np.frombuffer(view["data"], dtype=_F32).reshape(view["shape"])
        except (ValueError, TypeError, KeyError) as exc:
            raise FormatError(f"{path}: tensor {name[:60]!r} is malformed ({_one_line(exc)})") from None
        # deserialize hands out fresh bytearrays, so this is already writable; copy only if it is not
        tensors[name] = arr.astype(np.float32, copy=not arr.flags.writeable)
    if tensor_digest(tensors) != meta["tensor_sha256"]:
        raise FormatError(f"{path}: tensor data does not match its checksum (file damaged?)")
    for name, arr in tensors.items():
        if not np.isfinite(arr).all():
            raise FormatError(f"{path}: tensor {name[:60]!r} contains non-finite values (NaN or Inf)")
    return tensors, meta


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and fully validate a cnncli weight file.

    Returns (tensors, metadata): tensors maps name -> float32 C-contiguous writable ndarray; metadata holds
    the caller's keys JSON-decoded plus "format" (str), "format_version" (int) and "tensor_sha256" (str).
    Raises NoInputError (missing path, a directory, unreadable) or FormatError (anything else wrong).
    Tensor names and shapes are not checked against an architecture here; modelfile does that.
    """
    path = Path(path)
    return _parse(path, read_bytes(path))


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file at path, unparsed (what load() reads): NoInputError / FormatError as load() raises them for
    a missing, unreadable, non-regular, empty or oversized file. Hand the bytes to parse() to validate them."""
    path = Path(path)
    _stat_input(path)
    return _read_file(path, MAX_FILE_BYTES)


def parse(path: str | os.PathLike, data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Validate the bytes of a whole weight file (path only names it in errors); returns what load() does."""
    return _parse(path, data)


def update_metadata(path: str | os.PathLike, changes: Mapping[str, Any], expect: str | None = None,
                    check=None) -> None:
    """Atomically rewrite `path` with some metadata keys set to new values; tensors stay bit-identical.

    expect: the metadata_sha256 the caller's decision was based on; if the file now holds anything else (a
    concurrent `train --overwrite` replaced it), nothing is written and ChangedError (exit 75) is raised.
    Reserved keys (format, format_version, tensor_sha256, metadata_sha256) cannot be changed (ValueError).
    The caller must hold the output's OutputLock, so that the check and the write see the same file.
    check(tensors, new_metadata), if given, runs before anything is written and raises to refuse the result.
    Raises what load() and save() raise.
    """
    bad = [k for k in changes if k in RESERVED_KEYS]
    if bad:
        raise ValueError(f"cannot change reserved metadata keys: {', '.join(bad)}")
    tensors, meta = load(path)
    if expect is not None and meta["metadata_sha256"] != expect:
        raise ChangedError(f"{path}: the weight file was replaced while this command ran (another run wrote it); "
                           "nothing saved, run the command again")
    meta.update(changes)
    if check is not None:
        check(tensors, meta)
    save(path, tensors, meta)

