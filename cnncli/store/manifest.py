"""Which files a training run used, on disk beside its weights.

Two JSON files, both written atomically:

- the split manifest `MODEL.split.json`: the training and held-out files of a finished run, written only
  after its weights, and tied to them by the run id stored in both (so `eval` can tell a manifest of
  another run from the one that belongs to the weights);
- the run record `MODEL.ckpt.data.json`, kept with a checkpoint: every file of DATA with a digest of its
  content and the parts (train / val / test) the run drew, so `--resume` continues on exactly the same
  files and can name the ones that were added, removed or changed.

Paths are stored relative to DATA with "/" separators, so both files stay valid when DATA is moved.
"""

from __future__ import annotations

import hashlib
import base64
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cnncli.errors import FormatError, NoInputError
from cnncli.store.atomic import atomic_write_bytes

Item = tuple[Path, int]
MANIFEST_FORMAT = "cnncli-split"
MANIFEST_VERSION = 1
RUN_FORMAT = "cnncli-run-data"
RUN_VERSION = 1
UNREADABLE = "unreadable"


def relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` relative to `root`, with "/" separators."""
    return Path(os.path.relpath(path, root)).as_posix()


def _rel_items(items: Iterable[Item], root: str | os.PathLike) -> list[list]:
    return [[_name_to_json(relative(p, root)), int(label)] for p, label in items]


def _name_to_json(name: str):
    """A file name as valid JSON: the string itself, or, for a name whose bytes are not UTF-8 (os.fsdecode's
    lone surrogates, which strict JSON parsers reject), {"bytes_b64": base64 of its bytes}: lossless."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return {"bytes_b64": base64.b64encode(os.fsencode(name)).decode("ascii")}


def _name_from_json(value) -> str:
    """Inverse of _name_to_json; ValueError for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"bytes_b64"} and isinstance(value["bytes_b64"], str):
        return os.fsdecode(base64.b64decode(value["bytes_b64"], validate=True))
    raise ValueError(f"bad file name {value!r}")


# A key of the run record's "files" map whose name is not UTF-8: NUL, which no file name can hold, then
# "b64:" and the base64 of its bytes. Lossless, and unambiguous with every real name.
_KEY_B64 = "\x00b64:"


def _key_to_json(name: str) -> str:
    value = _name_to_json(name)
    return value if isinstance(value, str) else _KEY_B64 + value["bytes_b64"]


def _key_from_json(key: str) -> str:
    return _name_from_json({"bytes_b64": key[len(_KEY_B64):]}) if key.startswith(_KEY_B64) else key


def _write_json(path: str | os.PathLike, doc: dict) -> str:
    """Write doc atomically; returns the SHA-256 (hex) of the bytes written."""
    data = (json.dumps(doc, ensure_ascii=True, indent=1) + "\n").encode("utf-8")
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _read_json(path: Path, what: str, raw: bytes | None = None) -> dict:
    """The JSON object in `path` (or in `raw`, its bytes already read)."""
    try:
        text = (path.read_bytes() if raw is None else raw).decode("utf-8")
    except FileNotFoundError as exc:
        raise NoInputError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read {what} ({exc})") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"{path}: malformed {what} ({exc})") from exc
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: malformed {what} (not a JSON object)")
    return doc


def _items(rows, n_classes: int, key: str) -> list[tuple[str, int]]:
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], (str, dict))
                and isinstance(row[1], int) and 0 <= row[1] < n_classes):
            raise ValueError(f"bad entry in '{key}': {row!r}")
        out.append((_name_from_json(row[0]), row[1]))
    return out


def _classes(doc: dict) -> list[str]:
    classes = doc["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError("'classes' must be a list of names")
    return classes


def write_manifest(path, root, classes, train_items, val_items, seed, fraction, run_id=None) -> None:
    """Record a train/validation split as JSON, atomically.

    Format (version 1): {"format": "cnncli-split", "version": 1, "run_id": str | null, "classes": [...],
    "seed": int, "val_fraction": float, "train": [[relative/posix/path, class_index], ...], "val": [...]};
    run_id is the id stored in the weight file's training summary. Raises WriteError on failure.
    """
    _write_json(path, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "run_id": run_id,
                       "classes": list(classes), "seed": int(seed), "val_fraction": float(fraction),
                       "train": _rel_items(train_items, root), "val": _rel_items(val_items, root)})


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a manifest written by `write_manifest`; returns the JSON dict with "train"/"val" as lists of
    (relative path str, int) tuples and "run_id" (None in manifests from before run ids).
    Raises NoInputError if missing, FormatError if malformed."""
    path = Path(path)
    doc = _read_json(path, "split manifest")
    try:
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a cnncli split manifest")
        if doc.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported version {doc.get('version')!r}")
        classes = _classes(doc)
        for key in ("train", "val"):
            doc[key] = _items(doc[key], len(classes), key)
        doc.setdefault("run_id", None)
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: malformed split manifest ({exc})") from exc
    return doc


def resolve_items(rel_items: Iterable[tuple[str, int]], root: str | os.PathLike) -> list[Item]:
    """Manifest entries (relative path, label) -> (root / path, label)."""
    root = Path(root)
    return [(root / rel, int(label)) for rel, label in rel_items]


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes, or "unreadable"."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return UNREADABLE
    return h.hexdigest()[:16]


def fingerprint(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> dict[str, str]:
    """{path relative to root: file_digest} for every path (reads each file once)."""
    return {relative(p, root): file_digest(p) for p in paths}


def write_run_data(path, run_id: str, root, classes, parts: Mapping[str, Iterable[Item]],
                   files: Mapping[str, str], drawn: bool) -> str:
    """Record the files of a run for its checkpoint: {"format": "cnncli-run-data", "version": 1, "run_id",
    "classes", "parts": {"train": [[rel, label], ...], "val": [...], "test": [...]}, "drawn": bool (the
    validation part was drawn from the training folders), "files": {rel: digest}} (a rel that is not UTF-8
    is stored as NUL + "b64:" + base64 of its bytes, so the file stays strict JSON). Returns the SHA-256 (hex)
    of the file's bytes, which the checkpoint stores to prove the record is its own. Raises WriteError."""
    return _write_json(path, {"format": RUN_FORMAT, "version": RUN_VERSION, "run_id": run_id, "classes": list(classes),
                       "parts": {k: _rel_items(v, root) for k, v in parts.items()}, "drawn": bool(drawn),
                       "files": {_key_to_json(k): v for k, v in files.items()}})


def read_run_data(path: str | os.PathLike) -> dict:
    """Read `write_run_data`'s file; "parts" come back as lists of (relative path, label), and "sha256" is
    the SHA-256 (hex) of the file's bytes. Raises NoInputError if missing, FormatError if malformed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise NoInputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise FormatError(f"{path}: cannot read checkpoint data record ({exc})") from exc
    doc = _read_json(path, "checkpoint data record", raw)
    doc["sha256"] = hashlib.sha256(raw).hexdigest()
    try:
        if doc.get("format") != RUN_FORMAT or doc.get("version") != RUN_VERSION:
            raise ValueError("not a cnncli checkpoint data record of version 1")
        classes = _classes(doc)
        if not isinstance(doc["run_id"], str) or not isinstance(doc["files"], dict) or not isinstance(
                doc["drawn"], bool):
            raise ValueError("'run_id', 'drawn' or 'files' missing")
        doc["parts"] = {k: _items(v, len(classes), k) for k, v in doc["parts"].items()}
        doc["files"] = {_key_from_json(k): v for k, v in doc["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"{path}: malformed checkpoint data record ({exc})") from exc
    return doc


def describe_changes(saved: Mapping[str, str], current: Mapping[str, str], limit: int = 3) -> str:
    """"" when the two {relative path: digest} maps agree, else e.g. "1 added (cat/new.png), 2 changed
    (dog/a.png, dog/b.png)": what differs, naming up to `limit` files of each kind."""
    kinds = (("added", sorted(set(current) - set(saved))), ("removed", sorted(set(saved) - set(current))),
             ("changed", sorted(k for k in set(saved) & set(current) if saved[k] != current[k])))
    parts = []
    for word, names in kinds:
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
            parts.append(f"{len(names)} {word} ({shown})")
    return ", ".join(parts)
