"""`predict --sort-into DIR [--copy]`: images linked or copied into DIR/<label>/, never moved or replaced."""

import os

import pytest
from batch_helpers import body, world
from robust_helpers import run_main, tree_hashes


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.parametrize("copy", [False, True])
def test_sort_into_links_or_copies_by_label_and_is_idempotent(tmp_path, capsys, copy):
    data, model = world(tmp_path, n_per_class=4, bad=1)
    before = tree_hashes(data)
    out_dir = tmp_path / "sorted"
    args = ["predict", data, "-m", model, "--sort-into", out_dir, "--uncertain", "0.499:0.501"] + (
        ["--copy"] if copy else [])
    code, out, _ = run_main(args, capsys)
    assert code == 1  # the broken file: an error row, and nothing sorted for it
    rows = [line.split("\t") for line in body(out)]
    labels = {r[0]: r[1] for r in rows if not r[-1]}
    first = _listing(out_dir)
    assert len(first) == len(labels) == 8
    # cat/img_0000.png and dog/img_0000.png share a name: the one listed second gets ~2, whatever its label.
    for path, label in labels.items():
        name = os.path.basename(path)
        candidates = [out_dir / label / name, out_dir / label / name.replace(".png", "~2.png")]
        assert any(c.exists() and c.read_bytes() == open(path, "rb").read() for c in candidates), path
        if not copy:
            assert any(c.exists() and os.path.samefile(c, path) for c in candidates)
    if copy:
        assert all(os.stat(out_dir / p).st_nlink == 1 for p in first)
    code, out2, _ = run_main(args, capsys)
    assert out2 == out and _listing(out_dir) == first  # a rerun adds nothing
    assert tree_hashes(data) == before  # the user's files are where and what they were


def test_sort_into_never_replaces_a_file_and_clashes_are_deterministic(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=2, bad=0)
    out_dir = tmp_path / "sorted"
    code, out, _ = run_main(["predict", data, "-m", model], capsys)
    rows = [line.split("\t") for line in body(out)]
    path, label = rows[0][0], rows[0][1]
    (out_dir / label).mkdir(parents=True)
    squatter = out_dir / label / os.path.basename(path)
    squatter.write_bytes(b"mine")
    for _ in range(2):
        code, _, err = run_main(["predict", data, "-m", model, "--sort-into", out_dir, "--copy"], capsys)
        assert code == 0, err
    assert squatter.read_bytes() == b"mine"
    assert (out_dir / label / os.path.basename(path).replace(".png", "~2.png")).read_bytes() == open(path, "rb").read()
    assert len(_listing(out_dir)) == 5


def test_sort_into_a_file_is_refused(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=1, bad=0)
    (tmp_path / "f").write_text("x")
    code, out, err = run_main(["predict", data, "-m", model, "--sort-into", tmp_path / "f"], capsys)
    assert code == 73 and out == "" and "--sort-into" in err
    code, out, err = run_main(["predict", data, "-m", model, "--copy"], capsys)
    assert code == 2 and "--copy" in err
