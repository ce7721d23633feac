"""Tests for cnncli.data.folders: layouts, class discovery, splitting, manifest, bulk loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import class_pattern, make_image_folder
from cnncli.errors import BadImageError, DataError, FormatError, NoInputError
from cnncli.data.folders import (
    choose_size,
    labeled_dir,
    list_images,
    load_images,
    scan_dataset,
    scan_labeled,
    stratified_split,
)
from cnncli.data.images import decode
from cnncli.store.manifest import read_manifest, resolve_items, write_manifest


def test_flat_layout_sorted_classes(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("zebra", "ant", "Moose"), n_per_class=3, size=8)
    ds = scan_dataset(root)
    assert ds.layout == "flat" and ds.val is None and ds.test is None
    assert ds.classes == sorted(["zebra", "ant", "Moose"]) == ["Moose", "ant", "zebra"]
    assert len(ds.train) == 9
    for p, label in ds.train:
        assert p.parent.name == ds.classes[label]


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_layout_with_val_aliases(tmp_path, val_name):
    root = make_image_folder(tmp_path / "d", n_per_class=4, size=8, split=True, n_test=2, n_val=3)
    if val_name != "val":
        (root / "val").rename(root / val_name)
    ds = scan_dataset(root)
    assert ds.layout == "split" and ds.classes == ["cat", "dog"]
    assert len(ds.train) == 8 and len(ds.val) == 6 and len(ds.test) == 4
    assert all(val_name in p.parts for p, _ in ds.val)
    assert labeled_dir(root) == root / "test"


def test_split_layout_without_val(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=4, size=8, split=True)
    ds = scan_dataset(root)
    assert ds.val is None and ds.test is not None


def test_split_layout_rejects_extra_folder_and_two_val_folders(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=2, size=8, split=True)
    (root / "cat").mkdir()
    with pytest.raises(DataError, match="also found: cat"):
        scan_dataset(root)
    (root / "cat").rmdir()
    (root / "val").mkdir()
    (root / "valid").mkdir()
    with pytest.raises(DataError, match="more than one validation folder"):
        scan_dataset(root)


def test_nested_hidden_and_junk(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=2, size=8)
    nested = root / "cat" / "sub" / "deeper"
    nested.mkdir(parents=True)
    Image.new("L", (8, 8)).save(nested / "n.PNG")
    (root / "cat" / ".hidden.png").write_bytes(b"x")
    (root / "cat" / ".cache").mkdir()
    Image.new("L", (8, 8)).save(root / "cat" / ".cache" / "c.png")
    (root / "cat" / "notes.txt").write_text("hi")
    (root / "cat" / "Thumbs.db").write_bytes(b"\0")
    (root / ".git").mkdir()
    Image.new("L", (8, 8)).save(root / "loose.png")  # not in a class folder
    ds = scan_dataset(root)
    assert ds.classes == ["cat", "dog"]
    cat = [p for p, lbl in ds.train if lbl == 0]
    assert [p.relative_to(root / "cat").as_posix() for p in cat] == ["img_0000.png", "img_0001.png",
                                                                    "sub/deeper/n.PNG"]


def test_symlink_loop_is_read_once(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=2, size=8)
    os.symlink(root / "cat", root / "cat" / "loop")
    files = list_images(root / "cat")
    assert len(files) == 2


def test_file_order_is_deterministic(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=12, size=8)
    a = scan_dataset(root).train
    b = scan_dataset(root).train
    assert a == b
    cat = [p.name for p, lbl in a if lbl == 0]
    assert cat == sorted(cat)


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(NoInputError, match="no such folder"):
        scan_dataset(tmp_path / "nope")
    f = tmp_path / "f.png"
    f.write_bytes(b"")
    with pytest.raises(NoInputError, match="not a folder"):
        scan_dataset(f)


def test_single_class_and_no_class_errors(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("only",), n_per_class=2, size=8)
    with pytest.raises(DataError, match="at least two class folders.*only 'only'") as err:
        scan_dataset(root)
    assert str(root) in str(err.value)
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(DataError, match="found none"):
        scan_dataset(empty)


def test_empty_class_error_names_folder(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=2, size=8)
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="'empty' has no image files") as err:
        scan_dataset(root)
    assert str(root / "empty") in str(err.value)


def test_unknown_class_in_test_part(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=2, size=8, split=True)
    (root / "test" / "bird").mkdir()
    with pytest.raises(DataError, match="bird"):
        scan_dataset(root)


def test_scan_labeled_matches_by_name(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("dog",), n_per_class=3, size=8)
    items = scan_labeled(root, ["cat", "dog"])
    assert len(items) == 3 and {lbl for _, lbl in items} == {1}


def test_scan_labeled_unknown_class_lists_names(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("cat", "bird"), n_per_class=2, size=8)
    with pytest.raises(DataError) as err:
        scan_labeled(root, ["cat", "dog"])
    msg = str(err.value)
    assert "bird" in msg and "cat, dog" in msg


def test_scan_labeled_uses_test_part_and_errors_without(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=4, size=8, split=True, n_test=2)
    items = scan_labeled(root, ["cat", "dog"])
    assert len(items) == 4 and all("test" in p.parts for p, _ in items)
    import shutil

    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="no test/ or val/"):
        scan_labeled(root, ["cat", "dog"])
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        scan_labeled(empty, ["cat", "dog"])


def _items(counts):
    return [(Path(f"c{c}/{i:03d}.png"), c) for c, n in enumerate(counts) for i in range(n)]


def test_stratified_split_per_class_and_deterministic():
    items = _items([10, 3, 2, 1])
    tr, va = stratified_split(items, 0.2, seed=5)
    assert sorted(tr + va) == sorted(items) and not set(tr) & set(va)
    per = {c: sum(1 for _, lbl in va if lbl == c) for c in range(4)}
    assert per == {0: 2, 1: 1, 2: 1, 3: 0}
    assert (tr, va) == stratified_split(items, 0.2, seed=5)
    assert [it for it in items if it in va] == va  # input order kept
    others = {tuple(stratified_split(items, 0.2, seed=s)[1]) for s in range(10)}
    assert len(others) > 1  # the seed matters


def test_stratified_split_class_independent_of_others():
    a = stratified_split(_items([10, 10]), 0.3, seed=1)[1]
    b = stratified_split(_items([10, 10, 7]), 0.3, seed=1)[1]
    assert [it for it in a if it[1] == 0] == [it for it in b if it[1] == 0]


def test_stratified_split_fraction_zero_and_invalid():
    items = _items([4, 4])
    assert stratified_split(items, 0.0, 0) == (items, [])
    with pytest.raises(ValueError):
        stratified_split(items, 1.0, 0)


def test_manifest_round_trip(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("cat", "chat noir é"), n_per_class=5, size=8)
    ds = scan_dataset(root)
    tr, va = stratified_split(ds.train, 0.2, seed=3)
    man = tmp_path / "split.json"
    write_manifest(man, root, ds.classes, tr, va, seed=3, fraction=0.2)
    m = read_manifest(man)
    assert m["classes"] == ds.classes and m["seed"] == 3 and m["val_fraction"] == 0.2
    assert all(not Path(rel).is_absolute() for rel, _ in m["train"])
    assert resolve_items(m["train"], root) == tr and resolve_items(m["val"], root) == va
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_manifest_malformed(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(FormatError, match="malformed"):
        read_manifest(bad)
    bad.write_text("{not json")
    with pytest.raises(FormatError):
        read_manifest(bad)
    bad.write_text(json.dumps({"format": "cnncli-split", "version": 1, "classes": ["a"], "train": [["x", 3]],
                               "val": []}))
    with pytest.raises(FormatError, match="bad entry"):
        read_manifest(bad)
    with pytest.raises(NoInputError):
        read_manifest(tmp_path / "missing.json")


def test_choose_size(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(28, 28)] * 5 + [(100, 40), (10, 300)]):
        p = tmp_path / f"{i}.png"
        Image.new("L", (w, h)).save(p)
        paths.append(p)
    assert choose_size(paths) == 28
    assert choose_size(paths, cap=16) == 16
    tiny = tmp_path / "tiny.png"
    Image.new("L", (5, 5)).save(tiny)
    assert choose_size([tiny]) == 8
    big = tmp_path / "big.png"
    Image.new("L", (500, 400)).save(big)
    assert choose_size([big], cap=64) == 64
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"nope")
    assert choose_size([junk]) == 32


def test_load_images_gray_auto(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=5, size=12, mode="L")
    ds = scan_dataset(root)
    res = load_images(ds.train, 12, color="auto")
    x, y, kept, bad, ch = res
    assert ch == 1 and x.shape == (10, 1, 12, 12) and x.dtype == np.uint8 and y.dtype == np.int64
    assert bad == [] and kept == ds.train and y.tolist() == [lbl for _, lbl in ds.train]
    for i in (0, 7):
        assert np.array_equal(x[i], decode(ds.train[i][0], 12, 1))
    # the class pattern is visible in the means: class 0 bright left half, class 1 bright top half
    m0, m1 = x[y == 0].mean(0)[0], x[y == 1].mean(0)[0]
    half = 6
    assert m0[:, :half].mean() > m0[:, half:].mean() + 80
    assert m1[:half].mean() > m1[half:].mean() + 80
    assert class_pattern(0, 12)[0, 0] == 1


def test_load_images_auto_widens_on_colour(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=4, size=8, mode="L")
    colour = root / "dog" / "zz_colour.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(colour)
    ds = scan_dataset(root)
    x, y, kept, bad, ch = load_images(ds.train, 8, color="auto", workers=2)
    assert ch == 3 and x.shape == (9, 3, 8, 8)
    i = [p for p, _ in kept].index(colour)
    assert tuple(x[i, :, 0, 0]) == (200, 10, 10)
    assert np.array_equal(x[0, 0], x[0, 1]) and np.array_equal(x[0], np.repeat(decode(kept[0][0], 8, 1), 3, 0))
    gray = load_images(ds.train, 8, color="gray")
    assert gray.channels == 1 and gray.x.shape == (9, 1, 8, 8)
    assert gray.x[i, 0, 0, 0] == decode(colour, 8, 1)[0, 0, 0]
    rgb = load_images(ds.train[:2], 8, color="rgb")
    assert rgb.channels == 3 and np.array_equal(rgb.x[:, 0], rgb.x[:, 2])


def test_load_images_skips_and_reports_bad_files(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=3, size=8)
    (root / "cat" / "broken.png").write_bytes(b"garbage")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    ds = scan_dataset(root)
    seen = []
    res = load_images(ds.train, 8, on_bad=lambda p, r: seen.append((p, r)), classes=ds.classes)
    assert len(res.items) == 6 and res.x.shape[0] == 6 and res.y.shape == (6,)
    assert [p.name for p, _ in res.bad] == ["broken.png", "empty.jpg"]
    assert seen == res.bad
    assert res.bad[1][1] == "empty file"
    assert all(p.name.startswith("img_") for p, _ in res.items)
    assert res.y.tolist() == [lbl for _, lbl in res.items]


def test_load_images_strict_raises_first_bad(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=3, size=8)
    (root / "cat" / "a_broken.png").write_bytes(b"garbage")
    (root / "dog" / "b_broken.png").write_bytes(b"garbage")
    ds = scan_dataset(root)
    with pytest.raises(BadImageError, match="a_broken.png"):
        load_images(ds.train, 8, strict=True)


def test_load_images_class_emptied_by_bad_files(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=2, size=8)
    for p in (root / "dog").iterdir():
        p.write_bytes(b"junk")
    ds = scan_dataset(root)
    with pytest.raises(DataError, match="class 'dog' has no readable images"):
        load_images(ds.train, 8, classes=ds.classes)


def test_load_images_empty_input():
    res = load_images([], 8)
    assert res.x.shape == (0, 1, 8, 8) and res.y.shape == (0,)


def test_load_images_many_workers_keep_order(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), n_per_class=50, size=6)
    ds = scan_dataset(root)
    one = load_images(ds.train, 6, workers=1)
    three = load_images(ds.train, 6, workers=3)
    assert np.array_equal(one.x, three.x) and np.array_equal(one.y, three.y)
