"""`--shard I/N` for predict and eval: the N shards together give exactly one row per input, error rows too."""

import pytest
from batch_helpers import body, world
from robust_helpers import run_main

from cnncli.commands.shard import parse_shard, shard_of


@pytest.mark.parametrize("n", [1, 3])
def test_predict_shards_concatenate_to_the_whole_run(tmp_path, capsys, n):
    data, model = world(tmp_path, bad=2)
    (data / "dog" / "bad\nname.png").write_bytes(b"")  # an error row with an escaped name
    code, whole, _ = run_main(["predict", data, "-m", model, "--batch-size", "5"], capsys)
    assert code == 1
    parts = []
    for i in range(n):
        code, out, err = run_main(["predict", data, "-m", model, "--shard", f"{i}/{n}", "--batch-size", "5"], capsys)
        assert code in (0, 1), err
        parts.append(body(out))
    merged = [line for part in parts for line in part]
    assert sorted(merged) == sorted(body(whole))
    assert len(merged) == len(set(merged)) == 2 * 12 + 3
    assert sum(1 for line in merged if line.split("\t")[-1]) == 3  # all three error rows, once each
    for part in parts:  # each shard keeps input order
        assert part == [line for line in body(whole) if line in set(part)]
    if n == 3:
        assert all(part for part in parts)


def test_shard_of_is_stable_and_spreads():
    # A fixed value: the partition must not change between processes, versions or machines.
    assert shard_of("data/cat/img_0000.png", 1000) == shard_of(b"data/cat/img_0000.png".decode(), 1000)
    counts = [0] * 4
    for k in range(400):
        counts[shard_of(f"img_{k}.png", 4)] += 1
    assert min(counts) > 60


def test_shard_of_is_the_documented_hash():
    import hashlib

    path = "photos/\udcff.png"  # a non-UTF-8 byte, as os.fsdecode gives it
    want = int.from_bytes(hashlib.sha256(b"photos/\xff.png").digest()[:8], "big") % 7
    assert shard_of(path, 7) == want


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_is_a_usage_error(tmp_path, capsys, bad):
    data, model = world(tmp_path, n_per_class=1, bad=0)
    code, out, err = run_main(["predict", data, "-m", model, "--shard", bad], capsys)
    assert code == 2 and out == "" and "--shard" in err
    with pytest.raises(Exception):
        parse_shard(bad)


def test_eval_shards_cover_every_image_once(tmp_path, capsys):
    import json

    data, model = world(tmp_path, bad=0)
    code, out, _ = run_main(["eval", data, "-m", model, "--format", "json"], capsys)
    whole = json.loads(out)
    total = [[0, 0], [0, 0]]
    for i in range(3):
        code, out, err = run_main(["eval", data, "-m", model, "--format", "json", "--shard", f"{i}/3"], capsys)
        assert code == 0, err
        rep = json.loads(out)
        assert rep["source"].endswith(f"shard {i}/3")
        m = rep["confusion_matrix"]["matrix"]
        total = [[total[r][c] + m[r][c] for c in range(2)] for r in range(2)]
    assert total == whole["confusion_matrix"]["matrix"]


def test_an_empty_shard_of_inputs_that_exist_is_no_error(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=1, bad=0)
    files = sorted(str(p) for p in data.rglob("*.png"))
    empty = next(i for i in range(8) if all(shard_of(f, 8) != i for f in files))
    code, out, err = run_main(["predict", *files, "-m", model, "--shard", f"{empty}/8"], capsys)
    assert code == 0 and body(out) == [], err  # the header only: the shard has nothing to do
    (tmp_path / "empty").mkdir()
    code, out, err = run_main(["predict", tmp_path / "empty", "-m", model, "--shard", "0/8"], capsys)
    assert code == 66  # no inputs at all is still the error it always was


def test_an_eval_shard_that_holds_no_image_exits_0_with_nothing_on_stdout(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=1, bad=0)
    files = sorted(str(p) for p in data.rglob("*.png"))
    empty = next(i for i in range(8) if all(shard_of(f, 8) != i for f in files))
    full = shard_of(files[0], 8)
    code, out, err = run_main(["eval", data, "-m", model, "--shard", f"{empty}/8", "--fail-under", "accuracy=0.99"],
                              capsys)
    assert code == 0 and out == "" and f"shard {empty}/8: no image falls in this shard" in err, err
    code, out, err = run_main(["eval", data, "-m", model, "--shard", f"{full}/8", "--format", "json"], capsys)
    assert code == 0 and f"shard {full}/8" in out, err  # a shard with images still gets its report
