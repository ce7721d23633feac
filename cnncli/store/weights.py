"""cnncli weight files: safetensors with a strict, versioned cnncli schema on top. Never pickle.

A weight file is a safetensors file whose tensors are all float32 (little-endian, C order) and whose
`__metadata__` (a str -> str map) holds:

- "format": the literal "cnncli"
- "format_version": a decimal integer, currently "1"; newer files are refused with an upgrade hint
- "tensor_sha256": hex SHA-256 over the tensors in sorted name order, each contributing
  name \\0 dtype \\0 shape \\0 raw bytes (dtype "F32", shape as comma-joined decimals, e.g. "16,3,3,3")
- every caller key (arch, classes, input, preprocess, train, threshold, ...) as a JSON-encoded string

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
from cnncli.errors import FormatError, NoInputError, WriteError

FORMAT_NAME = "cnncli"
FORMAT_VERSION = 1

MAX_FILE_BYTES = 2 * 1024**3  # larger files are the wrong file or a denial of service, refused before reading
MAX_HEADER_BYTES = 16 * 1024**2  # metadata is small; safetensors' own cap (100 MB) is far looser

RESERVED_KEYS = ("format", "format_version", "tensor_sha256")
_F32 = np.dtype("<f4")


def tensor_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 of float32 tensors as stored: sorted names, each name\\0F32\\0shape\\0little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype=_F32)
        h.update(name.encode("utf-8") + b"\0F32\0")
        h.update(",".join(str(d) for d in arr.shape).encode("ascii") + b"\0")
        h.update(memoryview(arr).cast("B"))
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
        with open(path, "rb") as f:
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
    digest = raw.get("tensor_sha256", "")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise FormatError(f"{path}: missing or malformed tensor_sha256 in metadata")
    meta: dict[str, Any] = {"format": FORMAT_NAME, "format_version": int(version), "tensor_sha256": digest}
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
    Tensor names and shapes are not checked against an architecture here; see check_tensors.
    """
    path = Path(path)
    _stat_input(path)
    return _parse(path, _read_file(path, MAX_FILE_BYTES))


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
    """Metadata (as load returns it) and {name: (dtype, shape)} without reading the tensor data.

    Validates the safetensors structure (via safetensors.safe_open) and the cnncli format/version, but not
    the checksum or finiteness, which need the data; use load() for that.
    """
    path = Path(path)
    st = _stat_input(path)
    try:
        with open(path, "rb") as f:
            n = _header_length(path, f.read(8), st.st_size)
            raw = f.read(n)
    except OSError as exc:
        raise NoInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    header = _parse_header(path, raw)
    meta = _decode_metadata(path, header)
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:  # structural checks, mmap only
            f.keys()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise FormatError(f"{path}: damaged or truncated safetensors file ({_one_line(exc)})") from None
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            specs[name] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: tensor {name[:60]!r} has a malformed header entry") from None
    return meta, specs


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Validated metadata only (format, version, caller keys), without loading tensors; for `cnncli info`."""
    return read_header(path)[0]


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
) -> None:
    """Raise FormatError naming missing, extra and mis-shaped tensors if `tensors` differ from `expected`.

    expected: name -> shape the architecture implies, e.g. {"layers.0.weight": (16, 3, 3, 3)}.
    """
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    shaped = [
        f"{name} has shape {tuple(tensors[name].shape)}, expected {tuple(expected[name])}"
        for name in sorted(set(expected) & set(tensors))
        if tuple(tensors[name].shape) != tuple(expected[name])
    ]
    problems = []
    if missing:
        problems.append("missing " + _listing(missing))
    if extra:
        problems.append("unexpected " + _listing(extra))
    if shaped:
        problems.append(_listing(shaped, 3))
    if problems:
        raise FormatError(f"{path}: tensors do not match the architecture: {'; '.join(problems)}")


def update_metadata(path: str | os.PathLike, changes: Mapping[str, Any]) -> None:
    """Atomically rewrite `path` with some metadata keys set to new values; tensors stay bit-identical.

    Reserved keys (format, format_version, tensor_sha256) cannot be changed (ValueError). The caller should
    hold the output's OutputLock. Raises what load() and save() raise.
    """
    bad = [k for k in changes if k in RESERVED_KEYS]
    if bad:
        raise ValueError(f"cannot change reserved metadata keys: {', '.join(bad)}")
    tensors, meta = load(path)
    meta.update(changes)
    save(path, tensors, meta)

