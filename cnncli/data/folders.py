"""Labeled image folders: finding classes and files, splitting, the split manifest, and bulk loading.

Layouts accepted by `scan_dataset`:

    DATA/<class>/...                        "flat": everything is training data (a validation part is split off)
    DATA/train/<class>/...                  "split": a folder named train/ switches to this layout;
    DATA/val/<class>/... (or valid/, validation/)   optional validation part
    DATA/test/<class>/...                   optional test part

Class names are the sorted (by Unicode code point) names of the class folders of the training part. Files are
found recursively under a class folder (symlinked folders are followed once, loops are skipped); names starting
with "." and files without an image extension (IMAGE_EXTENSIONS, any case) are ignored; image files lying
directly in DATA (or DATA/train) belong to no class and are ignored. File lists are sorted, so every scan of the
same tree gives the same order.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cnncli.store.atomic import atomic_write_bytes
from cnncli.errors import BadImageError, DataError, FormatError, NoInputError
from cnncli.data.images import _decode, bombs_are_errors, has_image_extension, read_size

Item = tuple[Path, int]
VAL_NAMES = ("val", "valid", "validation")
SPLIT_NAMES = ("train", *VAL_NAMES, "test")
MANIFEST_FORMAT = "cnncli-split"
MANIFEST_VERSION = 1


@dataclass
class Dataset:
    """A scanned labeled folder. Items are (path, class index) pairs, sorted by class then path."""

    root: Path
    layout: str  # "flat" or "split"
    classes: list[str]
    train: list[Item]
    val: list[Item] | None = None
    test: list[Item] | None = None


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _subdirs(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of `folder` (symlinks to folders included)."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not _hidden(e.name) and e.is_dir())
    except OSError as exc:
        raise NoInputError(f"{folder}: cannot read folder ({exc.strerror or exc})") from exc


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files under `folder`, recursively, sorted by their path relative to `folder`.

    Hidden names and non-image extensions are skipped; a folder reached twice (symlink loop) is read once.
    """
    folder = Path(folder)
    # Plain strings until the end: Path objects and relative_to() cost more than the scan on 10,000 files.
    prefix = len(os.path.join(os.fspath(folder), ""))
    found: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            raise NoInputError(f"{d}: cannot read folder ({exc.strerror or exc})") from exc
        for e in entries:
            if _hidden(e.name):
                continue
            try:
                if e.is_dir():
                    stack.append(Path(e.path))
                elif has_image_extension(e.name) and e.is_file():
                    found.append((e.path[prefix:].replace(os.sep, "/"), e.path))
            except OSError:
                continue  # vanished or unreadable entry: nothing to list
    found.sort(key=lambda t: t[0])
    return [Path(p) for _, p in found]


def _scan_part(part: Path, classes: list[str], known_to: str, require_each: bool) -> list[Item]:
    """Items of the class folders under `part`, labelled by index in `classes` (the classes `known_to` has)."""
    index = {c: i for i, c in enumerate(classes)}
    names = _subdirs(part)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(
            f"{part}: class folders not known to {known_to}: {', '.join(unknown)} "
            f"(known: {', '.join(classes)})"
        )
    items: list[Item] = []
    for name in names:
        files = list_images(part / name)
        if not files and require_each:
            raise DataError(f"{part / name}: class folder '{name}' has no image files")
        items.extend((p, index[name]) for p in files)
    return items


def _folder(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise NoInputError(f"{root}: no such folder")
    if not root.is_dir():
        raise NoInputError(f"{root}: not a folder (expected DATA/<class>/ or DATA/train/<class>/)")
    return root


def scan_dataset(root: str | os.PathLike) -> Dataset:
    """Find the classes and image files of a labeled folder (layouts in the module docstring).

    Raises NoInputError if `root` does not exist or is not a folder; DataError if there are fewer than two
    class folders, if a training class folder has no image files, if a val/test folder has a class the
    training part does not, or if the split layout has unexpected extra folders.
    """
    root = _folder(root)
    top = _subdirs(root)
    if "train" not in top:
        train_dir, layout = root, "flat"
    else:
        train_dir, layout = root / "train", "split"
        extra = [n for n in top if n not in SPLIT_NAMES]
        if extra:
            raise DataError(
                f"{root}: has a train/ folder, so only train/, val/ (or valid/, validation/) and test/ are "
                f"expected; also found: {', '.join(extra)}"
            )
        vals = [n for n in VAL_NAMES if n in top]
        if len(vals) > 1:
            raise DataError(f"{root}: more than one validation folder ({', '.join(vals)}); keep one")
    classes = _subdirs(train_dir)
    if len(classes) < 2:
        found = f"only '{classes[0]}'" if classes else "none"
        raise DataError(f"{train_dir}: need at least two class folders (<class>/image files), found {found}")
    train = _scan_part(train_dir, classes, "the training data", require_each=True)
    ds = Dataset(root=root, layout=layout, classes=classes, train=train)
    if layout == "split":
        for n in VAL_NAMES:
            if n in top:
                ds.val = _scan_part(root / n, classes, "the training data", require_each=False)
        if "test" in top:
            ds.test = _scan_part(root / "test", classes, "the training data", require_each=False)
    return ds


def labeled_dir(root: str | os.PathLike) -> Path:
    """The folder `eval` reads class folders from: DATA/test/ if DATA has train/ and test/, else its
    val/ (valid/, validation/) part, else DATA itself. Raises NoInputError / DataError."""
    root = _folder(root)
    top = _subdirs(root)
    if "train" not in top:
        return root
    for n in ("test", *VAL_NAMES):
        if n in top:
            return root / n
    raise DataError(f"{root}: has train/ but no test/ or val/ folder to evaluate on (pass {root / 'train'} "
                    "to evaluate on the training data)")


def scan_labeled(root: str | os.PathLike, classes: Sequence[str]) -> list[Item]:
    """(path, index into `classes`) for the class folders of `labeled_dir(root)`, matched to `classes` by name.

    Class folders may be missing or empty; a folder whose name is not in `classes` raises DataError listing
    the unknown and known names; no image files at all raises DataError.
    """
    folder = labeled_dir(root)
    items = _scan_part(folder, list(classes), "the model", require_each=False)
    if not items:
        raise DataError(f"{folder}: no image files in class folders (expected {folder}/<class>/<image>)")
    return items


def stratified_split(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Split items into (train, val), per class, reproducibly for a given seed.

    Each class with n >= 2 images gives round(fraction * n) images to val, at least 1 and at most n - 1;
    a class with one image stays in train. Both lists keep the input order. fraction must be in [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(items):
        by_class.setdefault(int(label), []).append(i)
    val_idx: set[int] = set()
    if fraction > 0:
        for label, idx in by_class.items():
            n = len(idx)
            if n < 2:
                continue
            k = min(max(int(round(fraction * n)), 1), n - 1)
            rng = np.random.default_rng([seed & 0xFFFFFFFF, label])  # per class: independent of other classes
            val_idx.update(idx[j] for j in rng.permutation(n)[:k])
    train = [it for i, it in enumerate(items) if i not in val_idx]
    val = [it for i, it in enumerate(items) if i in val_idx]
    return train, val


def write_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike,
    classes: Sequence[str],
    train_items: Iterable[Item],
    val_items: Iterable[Item],
    seed: int,
    fraction: float,
) -> None:
    """Record a train/validation split as JSON, atomically.

    Format (version 1): {"format": "cnncli-split", "version": 1, "classes": [...], "seed": int,
    "val_fraction": float, "train": [[relative/posix/path, class_index], ...], "val": [...]}; paths are
    relative to `root`, so the manifest stays valid when DATA is moved. Raises WriteError on failure.
    """
    root = Path(root)

    def rel(items: Iterable[Item]) -> list[list]:
        return [[Path(os.path.relpath(p, root)).as_posix(), int(label)] for p, label in items]

    doc = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "classes": list(classes),
        "seed": int(seed),
        "val_fraction": float(fraction),
        "train": rel(train_items),
        "val": rel(val_items),
    }
    atomic_write_bytes(path, (json.dumps(doc, ensure_ascii=True, indent=1) + "\n").encode("utf-8"))


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a manifest written by `write_manifest`; returns the JSON dict with "train"/"val" as lists of
    (relative path str, int) tuples. Raises NoInputError if missing, FormatError if malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NoInputError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read split manifest ({exc})") from exc
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a cnncli split manifest")
        if doc.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported version {doc.get('version')!r}")
        classes = doc["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("'classes' must be a list of names")
        for key in ("train", "val"):
            rows = []
            for rel, label in doc[key]:
                if not isinstance(rel, str) or not isinstance(label, int) or not 0 <= label < len(classes):
                    raise ValueError(f"bad entry in '{key}': {[rel, label]!r}")
                rows.append((rel, label))
            doc[key] = rows
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: malformed split manifest ({exc})") from exc
    return doc


def resolve_items(rel_items: Iterable[tuple[str, int]], root: str | os.PathLike) -> list[Item]:
    """Manifest entries (relative path, label) -> (root / path, label)."""
    root = Path(root)
    return [(root / rel, int(label)) for rel, label in rel_items]


def choose_size(paths: Sequence[str | os.PathLike], cap: int = 64, seed: int = 0) -> int:
    """Default square input size: the median shorter side of the images, clamped to [8, cap].

    Reads only headers, of all images or of a seeded random sample of 200 when there are more. Unreadable
    files are skipped; with no readable file the answer is min(32, cap) (at least 8). Square 28 x 28 images
    (Fashion-MNIST) give 28.
    """
    lo = 8
    cap = max(lo, int(cap))
    paths = list(paths)
    if len(paths) > 200:
        pick = np.random.default_rng(seed).choice(len(paths), 200, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    sides = []
    for p in paths:
        try:
            sides.append(min(read_size(p)))
        except BadImageError:
            continue
    if not sides:
        return max(lo, min(32, cap))
    return int(min(max(statistics.median_low(sides), lo), cap))


class Loaded(NamedTuple):
    """Result of `load_images`; unpacks as (x, y, items, bad, channels)."""

    x: np.ndarray  # uint8 (N, C, size, size)
    y: np.ndarray  # int64 (N,)
    items: list[Item]  # the N items that decoded, in input order
    bad: list[tuple[Path, str]]  # (path, reason) of the files skipped
    channels: int  # C: 1 or 3


def _decode_chunk(paths: list[Path], size: int, rgb: bool) -> list:
    out = []
    for p in paths:
        try:
            out.append(_decode(p, size, rgb))
        except BadImageError as exc:
            out.append(exc)
    return out


def load_images(
    items: Sequence[Item],
    size: int,
    color: str = "auto",
    strict: bool = False,
    on_bad: Callable[[Path, str], None] | None = None,
    workers: int = 2,
    classes: Sequence[str] | None = None,
    allow_lost_classes: bool = False,
) -> Loaded:
    """Decode (path, label) items into uint8 (N, C, size, size) and int64 labels (N,), in input order.

    color: "gray" -> C = 1 (luma), "rgb" -> C = 3, "auto" -> C = 1 only if every decoded image was gray
    (see images.decode_with_info), else 3 with gray images replicated. Bad files are skipped, passed to
    on_bad(path, reason) and returned in `bad`; with strict=True the first bad file (in input order) raises
    BadImageError instead. A class that had items but lost all of them to bad files raises DataError (named
    from `classes` when given) unless allow_lost_classes (eval: such a class just has no support). Decoding
    runs in `workers` threads; memory stays at one byte per kept value (gray images are stored with one
    channel until a colour image is seen).
    """
    if color not in ("auto", "gray", "rgb"):
        raise ValueError(f"color must be auto, gray or rgb, got {color!r}")
    items = list(items)
    n = len(items)
    rgb = color != "gray"
    channels = 3 if color == "rgb" else 1
    x = np.empty((n, channels, size, size), np.uint8)
    keep = np.zeros(n, bool)
    bad: list[tuple[Path, str]] = []
    chunk = 64
    chunks = [[Path(p) for p, _ in items[i : i + chunk]] for i in range(0, n, chunk)]
    with bombs_are_errors(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_decode_chunk, chunks, [size] * len(chunks), [rgb] * len(chunks))
        i = 0
        for res in results:
            for r in res:
                if isinstance(r, BadImageError):
                    if strict:
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise r
                    path = Path(items[i][0])
                    reason = str(r)
                    prefix = f"{path}: "
                    reason = reason[len(prefix):] if reason.startswith(prefix) else reason
                    bad.append((path, reason))
                    if on_bad is not None:
                        on_bad(path, reason)
                else:
                    arr, was_gray = r
                    if color == "auto" and channels == 1 and not was_gray:
                        # First colour image: widen everything stored so far to 3 channels, once.
                        wide = np.empty((n, 3, size, size), np.uint8)
                        wide[:i] = x[:i]
                        x, channels = wide, 3
                    if arr.ndim == 2:
                        x[i] = arr[None]
                    elif channels == 1:
                        x[i, 0] = arr[..., 0]
                    else:
                        x[i] = arr.transpose(2, 0, 1)
                    keep[i] = True
                i += 1
    labels = np.fromiter((int(lbl) for _, lbl in items), np.int64, count=n)
    if bad and not allow_lost_classes:
        had = set(labels.tolist())
        left = set(labels[keep].tolist())
        for lbl in sorted(had - left):
            name = classes[lbl] if classes is not None and lbl < len(classes) else f"#{lbl}"
            lost = int((labels == lbl).sum())
            raise DataError(f"class '{name}' has no readable images ({lost} bad file(s), e.g. "
                            f"{next(p for p, l in items if l == lbl)})")
    if bad:
        x = x[keep]
        labels = labels[keep]
    kept = [it for it, k in zip(items, keep) if k] if bad else items
    return Loaded(x, labels, [(Path(p), int(lbl)) for p, lbl in kept], bad, channels)
