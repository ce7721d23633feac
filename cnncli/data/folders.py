"""Labeled image folders: finding classes and files, splitting, and bulk loading (the split manifest that
records a split on disk: store/manifest.py).

Layouts accepted by `scan_dataset`:

    DATA/<class>/...                        "flat": everything is training data (a validation part is split off)
    DATA/train/<class>/...                  "split": a folder named train/ (any case) switches to this layout;
    DATA/val/<class>/... (or valid/, validation/)   optional validation part
    DATA/test/<class>/...                   optional test part

Class names are the sorted (by Unicode code point) names of the class folders of the training part. Files are
found recursively under a class folder (symlinked folders are followed once; links back into DATA and loops are
skipped with a warning); names starting
with "." and files without an image extension (IMAGE_EXTENSIONS, any case) are ignored; image files lying
directly in DATA (or DATA/train) belong to no class and are ignored. File lists are sorted, so every scan of the
same tree gives the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cnncli.errors import BadImageError, DataError, NoInputError
from cnncli.data.images import bombs_are_errors, decode, has_image_extension, is_gray, read_size

Item = tuple[Path, int]
VAL_NAMES = ("val", "valid", "validation")
SPLIT_NAMES = ("train", *VAL_NAMES, "test")  # matched in any letter case
# Labels predict writes itself; a class of that name could not be told apart from them (any letter case).
RESERVED_LABELS = ("uncertain", "unknown")


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


def _leads_back(link: str, guard: str) -> str | None:
    """Why the folder symlink `link` must not be followed from inside the folder `guard` (a real path), or None."""
    target = os.path.realpath(link)
    if target == guard or target.startswith(guard + os.sep):
        return "a folder symlink that leads back into the data folder"
    if guard.startswith(target + os.sep) or target == os.sep:
        return "a folder symlink that leads to a folder holding the data folder (a loop)"
    return None


def list_images(folder: str | os.PathLike, root: str | os.PathLike | None = None,
                on_skip: Callable[[Path, str], None] | None = None) -> list[Path]:
    """All image files under `folder`, recursively, sorted by their path relative to `folder`.

    Hidden names and non-image extensions are skipped; a folder reached twice (symlink loop) is read once.
    With `root` (the data folder holding `folder`), folder symlinks that lead back into `root` or to a folder
    above it are not followed: they would add other classes' images (`face/up -> ..`). Each such link, and
    each loop, is passed to on_skip(path, reason).
    """
    folder = Path(folder)
    guard = os.path.realpath(root) if root is not None else None
    # Plain strings until the end: Path objects and relative_to() cost more than the scan on 10,000 files.
    prefix = len(os.path.join(os.fspath(folder), ""))
    found: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [(folder, False)]
    while stack:
        d, via_link = stack.pop()
        try:
            st = d.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                if via_link and on_skip is not None:
                    on_skip(d, "a folder symlink loop (folder already read)")
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
                    link = e.is_symlink()
                    why = _leads_back(e.path, guard) if link and guard is not None else None
                    if why is None:
                        stack.append((Path(e.path), link))
                    elif on_skip is not None:
                        on_skip(Path(e.path), why)
                elif has_image_extension(e.name) and e.is_file():
                    found.append((e.path[prefix:].replace(os.sep, "/"), e.path))
            except OSError:
                continue  # vanished or unreadable entry: nothing to list
    found.sort(key=lambda t: t[0])
    return [Path(p) for _, p in found]


def _scan_part(part: Path, classes: list[str], known_to: str, require_each: bool, root: Path | None = None,
               on_skip: Callable[[Path, str], None] | None = None) -> list[Item]:
    """Items of the class folders under `part`, labelled by index in `classes` (the classes `known_to` has).
    Folder symlinks leading back into `root` are skipped (see list_images)."""
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
        files = list_images(part / name, root=root, on_skip=on_skip)
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


def _split_folders(root: Path, top: list[str]) -> dict[str, str] | None:
    """{"train": name, "val": name, "test": name} of the split folders in `top` (names matched in any letter
    case: Train/ is train/), or None when there is no train folder (the flat layout). Raises DataError for
    extra folders beside train/, or for two folders of one role (train/ and Train/, val/ and valid/)."""
    role = {n: ("val" if n.lower() in VAL_NAMES else n.lower()) for n in top if n.lower() in SPLIT_NAMES}
    if "train" not in role.values():
        return None
    extra = [n for n in top if n not in role]
    if extra:
        raise DataError(
            f"{root}: has a train/ folder, so only train/, val/ (or valid/, validation/) and test/ are "
            f"expected; also found: {', '.join(extra)}"
        )
    found: dict[str, list[str]] = {}
    for name, r in role.items():
        found.setdefault(r, []).append(name)
    for r, names in found.items():
        if len(names) > 1:
            what = "more than one validation folder" if r == "val" else f"more than one {r} folder"
            raise DataError(f"{root}: {what} ({', '.join(names)}); keep one")
    return {r: names[0] for r, names in found.items()}


def split_folders(root: str | os.PathLike) -> dict[str, str] | None:
    """{"train": name, "val": name, "test": name} of DATA's split folders as spelt on disk (any letter case),
    or None for the flat layout. Raises DataError as scan_dataset does for extra or doubled split folders."""
    root = Path(root)
    return _split_folders(root, _subdirs(root))


def scan_dataset(root: str | os.PathLike, on_warn: Callable[[str], None] | None = None) -> Dataset:
    """Find the classes and image files of a labeled folder (layouts in the module docstring).

    Raises NoInputError if `root` does not exist or is not a folder; DataError if there are fewer than two
    class folders, if a class is named like one of predict's own labels (RESERVED_LABELS), if a training
    class folder has no image files, if a val/test folder has a class the training part does not, or if the
    split layout has unexpected extra folders. Folder symlinks leading back into `root` are skipped, each
    with a message to on_warn.
    """
    root = _folder(root)
    splits = _split_folders(root, _subdirs(root))
    train_dir, layout = (root, "flat") if splits is None else (root / splits["train"], "split")
    classes = _subdirs(train_dir)
    if len(classes) < 2:
        found = f"only '{classes[0]}'" if classes else "none"
        raise DataError(f"{train_dir}: need at least two class folders (<class>/image files), found {found}")
    reserved = [c for c in classes if c.lower() in RESERVED_LABELS]
    if reserved:
        raise DataError(f"{train_dir / reserved[0]}: the class name '{reserved[0]}' is reserved for predict's "
                        f"own labels ({', '.join(RESERVED_LABELS)}); rename the folder")

    def on_skip(path: Path, why: str) -> None:
        if on_warn is not None:
            on_warn(f"skipped {path}: {why}")

    kw = dict(root=root, on_skip=on_skip)
    train = _scan_part(train_dir, classes, "the training data", require_each=True, **kw)
    ds = Dataset(root=root, layout=layout, classes=classes, train=train)
    if splits is not None:
        if "val" in splits:
            ds.val = _scan_part(root / splits["val"], classes, "the training data", require_each=False, **kw)
        if "test" in splits:
            ds.test = _scan_part(root / splits["test"], classes, "the training data", require_each=False, **kw)
    return ds


def labeled_dir(root: str | os.PathLike) -> Path:
    """The folder `eval` reads class folders from: DATA/test/ if DATA has train/ and test/, else its
    val/ (valid/, validation/) part, else DATA itself (split names in any letter case). Raises NoInputError /
    DataError."""
    root = _folder(root)
    splits = _split_folders(root, _subdirs(root))
    if splits is None:
        return root
    for r in ("test", "val"):
        if r in splits:
            return root / splits[r]
    raise DataError(f"{root}: has train/ but no test/ or val/ folder to evaluate on (pass {root / splits['train']} "
                    "to evaluate on the training data)")


def scan_labeled(root: str | os.PathLike, classes: Sequence[str]) -> list[Item]:
    """(path, index into `classes`) for the class folders of `labeled_dir(root)`, matched to `classes` by name.

    Class folders may be missing or empty; a folder whose name is not in `classes` raises DataError listing
    the unknown and known names; no image files at all raises DataError. Folder symlinks that lead back into
    `root` are not followed (see list_images), so no image is read under another class's label.
    """
    folder = labeled_dir(root)
    items = _scan_part(folder, list(classes), "the model", require_each=False, root=Path(root))
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
    import statistics  # here: predict loads this module (through modelfile) and never needs it

    return int(min(max(statistics.median_low(sides), lo), cap))


class Loaded(NamedTuple):
    """Result of `load_images`; unpacks as (x, y, items, bad, channels)."""

    x: np.ndarray  # uint8 (N, C, size, size)
    y: np.ndarray  # int64 (N,)
    items: list[Item]  # the N items that decoded, in input order
    bad: list[tuple[Path, str]]  # (path, reason) of the files skipped
    channels: int  # C: 1 or 3


def _decode_chunk(paths: list[Path], size: int, channels: int, resize: str, decoder: Callable = decode) -> list:
    out = []
    for p in paths:
        try:
            out.append(decoder(p, size, channels, resize))
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
    resize: str = "crop",
    decoder: Callable[..., np.ndarray] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Loaded:
    """Decode (path, label) items into uint8 (N, C, size, size) and int64 labels (N,), in input order.

    color: "gray" -> C = 1 (luma), "rgb" -> C = 3, "auto" -> C = 1 only if every decoded image was gray
    (images.is_gray), else 3 with gray images replicated. Bad files are skipped, passed to
    on_bad(path, reason) and returned in `bad`; with strict=True the first bad file (in input order) raises
    BadImageError instead. A class that had items but lost all of them to bad files raises DataError (named
    from `classes` when given) unless allow_lost_classes (eval: such a class just has no support). Decoding
    runs in `workers` threads; `resize` is the decoder's rule (images.RESIZE_RULES); `decoder` replaces
    images.decode (same signature and result: a decode cache's); memory stays at one byte per kept value (gray images are stored with one
    channel until a colour image is seen). on_progress(done) hears the number of
    items decoded so far, after each chunk.
    """
    if color not in ("auto", "gray", "rgb"):
        raise ValueError(f"color must be auto, gray or rgb, got {color!r}")
    items = list(items)
    n = len(items)
    decoded = 1 if color == "gray" else 3
    channels = 3 if color == "rgb" else 1
    x = np.empty((n, channels, size, size), np.uint8)
    keep = np.zeros(n, bool)
    bad: list[tuple[Path, str]] = []
    chunk = 64
    chunks = [[Path(p) for p, _ in items[i : i + chunk]] for i in range(0, n, chunk)]
    with bombs_are_errors(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_decode_chunk, chunks, [size] * len(chunks), [decoded] * len(chunks),
                           [resize] * len(chunks), [decoder or decode] * len(chunks))
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
                    if color == "auto" and channels == 1 and not is_gray(r):
                        # First colour image: widen everything stored so far to 3 channels, once.
                        wide = np.empty((n, 3, size, size), np.uint8)
                        wide[:i] = x[:i]
                        x, channels = wide, 3
                    x[i] = r[:channels]  # r has `decoded` channels, all equal while the run is gray
                    keep[i] = True
                i += 1
            if on_progress is not None:
                on_progress(i)
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
