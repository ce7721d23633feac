"""Shared test fixtures: small generated image folders with a learnable, class-dependent pattern.

Use the plain function anywhere in tests (pytest puts tests/ on sys.path):

    from conftest import make_image_folder
    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), n_per_class=20, size=16)

or the `image_folder` fixture, which calls it with keyword arguments and a fresh tmp_path sub-folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def class_pattern(k: int, size: int) -> np.ndarray:
    """Float (size, size) mask in [0, 1] that is bright where class k is bright; distinct for every k."""
    yy, xx = np.mgrid[0:size, 0:size]
    half = size // 2
    shapes = [
        xx < half,  # left half
        yy < half,  # top half
        xx >= half,  # right half
        yy >= half,  # bottom half
        xx > yy,  # upper-right triangle
        xx + yy < size,  # upper-left triangle
    ]
    if k < len(shapes):
        return shapes[k].astype(np.float64)
    period = 2 + (k - len(shapes)) // 2  # then vertical / horizontal stripes of growing period
    axis = xx if k % 2 == 0 else yy
    return ((axis // period) % 2 == 0).astype(np.float64)


def make_image_array(k: int, size: int, rng: np.random.Generator, mode: str = "L") -> np.ndarray:
    """One uint8 image of class k: (size, size) for mode 'L', (size, size, 3) for 'RGB'; pattern plus noise."""
    base = 40 + 170 * class_pattern(k, size) + rng.normal(0, 25, (size, size))
    if mode == "L":
        return np.clip(base, 0, 255).astype(np.uint8)
    tint = np.array([1.0, 0.85, 0.7]) if k % 2 == 0 else np.array([0.7, 0.85, 1.0])
    rgb = base[..., None] * tint + rng.normal(0, 8, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write_class(folder: Path, k: int, n: int, size: int, mode: str, rng: np.random.Generator, ext: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_image_array(k, size, rng, mode), mode).save(folder / f"img_{i:04d}{ext}")


def make_image_folder(
    root: str | Path,
    classes=("cat", "dog"),
    n_per_class: int = 20,
    size: int = 16,
    mode: str = "L",
    split: bool = False,
    n_test: int | None = None,
    n_val: int = 0,
    seed: int = 0,
    ext: str = ".png",
) -> Path:
    """Write a labeled image folder and return its root.

    split=False: root/<class>/img_0000.png ... (n_per_class each).
    split=True:  root/train/<class>/ (n_per_class each), root/test/<class>/ (n_test each, default
                 max(2, n_per_class // 4)) and, if n_val > 0, root/val/<class>/ (n_val each).
    Class k (in the order given) is bright in region k (left half, top half, right half, bottom half, two
    triangles, then stripes) plus Gaussian noise, so a small CNN can learn it; mode 'RGB' adds a class tint.
    Deterministic for a given seed. ext may be '.png', '.bmp', '.tif' (lossless) or '.jpg'.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = list(classes)
    if not split:
        for k, name in enumerate(classes):
            _write_class(root / name, k, n_per_class, size, mode, rng, ext)
        return root
    parts = {"train": n_per_class, "test": n_test if n_test is not None else max(2, n_per_class // 4)}
    if n_val:
        parts["val"] = n_val
    for part, n in parts.items():
        for k, name in enumerate(classes):
            _write_class(root / part / name, k, n, size, mode, rng, ext)
    return root


@pytest.fixture
def image_folder(tmp_path):
    """Factory fixture: image_folder(**kwargs) -> Path of a fresh make_image_folder(...) under tmp_path."""
    counter = iter(range(1_000_000))

    def make(**kwargs) -> Path:
        return make_image_folder(tmp_path / f"data{next(counter)}", **kwargs)

    return make


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory, monkeypatch):
    """Every test runs in a fresh, empty working directory with no $CNNCLI_MODEL, so nothing in the caller's
    folder (a model.safetensors left by README's quick start), environment or decode cache can change a result."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    monkeypatch.delenv("CNNCLI_MODEL", raising=False)
    # the decode cache goes to a fresh folder per test, never the caller's ~/.cache (children inherit it)
    monkeypatch.setenv("CNNCLI_CACHE_DIR", str(tmp_path_factory.mktemp("decode-cache")))
    monkeypatch.delenv("CNNCLI_CACHE_SIZE", raising=False)
