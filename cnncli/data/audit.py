"""`cnncli check DATA`: an audit of a labeled image folder before anything is trained on it.

Finds every image file under DATA's class folders (DATA/<class>/... or DATA/{train,val,test}/<class>/...),
and reports: exact duplicates (same bytes), near duplicates (fingerprints.near_pairs: resized, re-encoded),
each group marked *cross-split* (a leak: the same picture in training and in validation or test) and/or
*cross-class* (the same picture under two labels); unreadable files; class counts and imbalance; tiny
images; the distribution of sizes, modes and formats. `audit` returns a JSON-able dict; no printing here.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cnncli.data import fingerprints, folders
from cnncli.data.images import ALLOWED_FORMATS, bombs_are_errors, decode
from cnncli.errors import BadImageError, NoInputError

THUMB = 32  # side of the gray thumbnails compared for near duplicates
TINY = 16  # images with a side below this many pixels are listed as tiny
IMBALANCE = 3.0  # largest / smallest class count above this is flagged


def _subfolders(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise NoInputError(f"{folder}: cannot read folder ({exc.strerror or exc})") from exc


def find_files(root) -> tuple[str, list[tuple[Path, str | None, str]]]:
    """(layout, [(path, split or None, class name)]) for every image file in DATA's class folders.

    layout "split" when DATA has a train/ folder (splits train, val/valid/validation, test), else "flat"
    (split None). Other folders next to train/ are ignored here (train reports them). NoInputError when
    DATA is missing or not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoInputError(f"{root}: no such folder" if not root.exists() else f"{root}: not a folder")
    top = _subfolders(root)
    if "train" in top:
        parts = [(root / n, n) for n in folders.SPLIT_NAMES if n in top]
        layout = "split"
    else:
        parts, layout = [(root, None)], "flat"
    found = []
    for folder, split in parts:
        for cls in _subfolders(folder):
            found.extend((p, split, cls) for p in folders.list_images(folder / cls))
    return layout, found


def _inspect(path) -> dict:
    """One file's facts: sha256, and (when readable) width, height, mode, format and a gray thumbnail."""
    out: dict = {"sha256": fingerprints.content_hash(path)}
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as im:
            out.update(width=im.width, height=im.height, mode=im.mode, format=im.format)
        out["thumb"] = decode(path, THUMB, 1)[0]
    except BadImageError as exc:
        out["error"] = str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file; all mean "unreadable"
        out["error"] = f"not an image or unsupported format ({type(exc).__name__})"
    return out


def _group(indices, files, kind) -> dict:
    members = [files[i] for i in indices]
    splits = {s for _, s, _ in members}
    classes = {c for _, _, c in members}
    return {"kind": kind, "cross_split": len(splits) > 1, "cross_class": len(classes) > 1,
            "files": [{"path": str(p), "split": s, "class": c} for p, s, c in members]}


def _stats(values) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else None


def audit(root, tiny: int = TINY, workers: int = 2) -> dict:
    """Audit DATA (see the module docstring). Returns a dict with keys ``root``, ``layout``, ``files``,
    ``counts`` {split or "all": {class: n}}, ``unreadable`` [{path, reason}], ``exact_duplicates`` and
    ``near_duplicates`` [{kind, cross_split, cross_class, files: [{path, split, class}]}], ``imbalance``
    {split: {"ratio", "largest", "smallest", "flagged"}}, ``tiny`` [{path, width, height}], ``sizes``
    {"width", "height": {min, median, max}, "most_common": [["WxH", n], ...]}, ``modes``, ``formats``
    {name: n}, and ``leaks`` / ``conflicts`` (groups that are cross-split / cross-class)."""
    layout, files = find_files(root)
    with bombs_are_errors(), ThreadPoolExecutor(max(1, workers)) as pool:
        facts = list(pool.map(_inspect, [p for p, _, _ in files]))
    counts: dict = {}
    for _, split, cls in files:
        counts.setdefault(split or "all", Counter())[cls] += 1
    exact = [_group(g, files, "exact") for g in fingerprints.exact_groups([f["sha256"] for f in facts])]
    readable = [i for i, f in enumerate(facts) if "thumb" in f]
    dup_of = {i: g[0] for g in fingerprints.exact_groups([f["sha256"] for f in facts]) for i in g[1:]}
    unique = [i for i in readable if i not in dup_of]  # one representative per exact group
    near_idx = []
    if unique:
        pairs = fingerprints.near_pairs(np.stack([facts[i]["thumb"] for i in unique]))
        for g in fingerprints.join_pairs(len(unique), pairs):
            members = [unique[k] for k in g]
            members += [i for i, r in dup_of.items() if r in members]
            near_idx.append(sorted(members))
    near = [_group(g, files, "near") for g in near_idx]
    imbalance = {}
    for split, c in counts.items():
        big, small = c.most_common()[0], c.most_common()[-1]
        ratio = big[1] / small[1]
        imbalance[split] = {"ratio": ratio, "largest": list(big), "smallest": list(small),
                            "flagged": ratio > IMBALANCE}
    sizes = [(f["width"], f["height"]) for f in facts if "width" in f]
    groups = exact + near
    return {
        "root": str(root),
        "layout": layout,
        "files": len(files),
        "counts": {s: dict(sorted(c.items())) for s, c in counts.items()},
        "unreadable": [{"path": str(files[i][0]), "reason": f["error"]} for i, f in enumerate(facts) if "error" in f],
        "exact_duplicates": exact,
        "near_duplicates": near,
        "leaks": sum(g["cross_split"] for g in groups),
        "conflicts": sum(g["cross_class"] for g in groups),
        "imbalance": imbalance,
        "tiny": [{"path": str(files[i][0]), "width": f["width"], "height": f["height"]}
                 for i, f in enumerate(facts) if "width" in f and min(f["width"], f["height"]) < tiny],
        "sizes": {"width": _stats([w for w, _ in sizes]), "height": _stats([h for _, h in sizes]),
                  "most_common": [[f"{w}x{h}", n] for (w, h), n in Counter(sizes).most_common(5)]},
        "modes": dict(Counter(f["mode"] for f in facts if "mode" in f).most_common()),
        "formats": dict(Counter(f["format"] for f in facts if "format" in f).most_common()),
    }


def overlap_warning(name: str, train, other) -> str | None:
    """A warning when images of the `name` part (a folders.Loaded, or None) also appear in training (the
    images as decoded for training, compared with fingerprints.array_overlap), else None."""
    if other is None or len(other.y) == 0:
        return None
    exact, near = fingerprints.array_overlap(train.x, other.x)
    if not exact and not near:
        return None
    return (f"{exact + near} of {len(other.y)} {name} images also appear in the training images ({exact} identical, "
            f"{near} near-identical): the {name} figures will be optimistic; run cnncli check DATA for the files")


def relative(path: str, root) -> str:
    """path relative to root for display, when it lies under root."""
    try:
        return os.path.relpath(path, root) if Path(path).is_relative_to(root) else path
    except ValueError:
        return path
