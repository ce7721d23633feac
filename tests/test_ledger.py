"""`predict --ledger FILE`: score only what the ledger has not seen with this model; crash-safe, shareable."""

import os
import signal
import sqlite3

import numpy as np
from batch_helpers import body, tiny_model, world
from conftest import make_image_array
from PIL import Image
from robust_helpers import cnncli_child, run_child, run_main


def _rows(ledger):
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT content_sha256, model_sha256, path, label, probabilities FROM results").fetchall()


def _add_images(folder, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(make_image_array(1, 16, rng), "L").save(folder / f"new_{seed}_{i}.png")


def test_rerun_scores_only_new_images_and_prints_the_rest_from_the_ledger(tmp_path, capsys):
    data, model = world(tmp_path)
    ledger = tmp_path / "results.sqlite"
    args = ["predict", data, "-m", model, "--ledger", ledger, "--batch-size", "5"]
    code, first, err = run_main(args, capsys)
    assert code == 1 and "24 scored, 0 from the ledger" in err  # 24 images; the broken one is an error row
    assert len(_rows(ledger)) == 24
    code, again, err = run_main(args, capsys)
    assert again == first and "0 scored, 24 from the ledger" in err
    _add_images(data / "dog", 3, seed=7)
    code, new, err = run_main(args + ["--new-only"], capsys)
    new_paths = sorted(line.split("\t")[0] for line in body(new))
    assert new_paths == sorted([str(data / "cat" / "broken_0.png")] + [str(data / "dog" / f"new_7_{i}.png")
                                                                        for i in range(3)])
    assert "3 scored, 0 from the ledger, 24 already in the ledger not shown" in err
    assert len(_rows(ledger)) == 27
    # Printed from the ledger or scored now: the very same rows as a run without a ledger.
    code, plain, _ = run_main(["predict", data, "-m", model, "--batch-size", "5", "--all-probs"], capsys)
    code, mixed, _ = run_main(args + ["--all-probs"], capsys)
    assert mixed == plain


def test_a_new_model_scores_everything_again(tmp_path, capsys):
    data, model = world(tmp_path, bad=0)
    ledger = tmp_path / "l.sqlite"
    run_main(["predict", data, "-m", model, "--ledger", ledger], capsys)
    other = tiny_model(tmp_path / "other.safetensors", seed=5)
    code, out, err = run_main(["predict", data, "-m", other, "--ledger", ledger, "--new-only"], capsys)
    assert code == 0 and len(body(out)) == 24 and "24 scored" in err
    rows = _rows(ledger)
    assert len(rows) == 48 and len({r[1] for r in rows}) == 2


def test_schema_is_queryable_and_export_writes_every_row(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=3, bad=0)
    ledger = tmp_path / "l.sqlite"
    run_main(["predict", data, "-m", model, "--ledger", ledger], capsys)
    with sqlite3.connect(ledger) as db:
        labels = dict(db.execute("SELECT path, label FROM results").fetchall())
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        p = db.execute("SELECT json_extract(probabilities, '$.dog') + json_extract(probabilities, '$.cat') "
                       "FROM results").fetchall()
    assert all(abs(v - 1) < 1e-5 for (v,) in p)
    code, out, _ = run_main(["predict", data, "-m", model], capsys)
    assert labels == {line.split("\t")[0]: line.split("\t")[1] for line in body(out)}
    code, csv_out, _ = run_main(["ledger", "export", ledger, "--format", "csv"], capsys)
    assert code == 0 and csv_out.splitlines()[0].startswith("path,label,probability,")
    assert len(csv_out.splitlines()) == 7


def test_not_a_ledger_and_missing_folder_are_refused(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=1, bad=0)
    code, out, err = run_main(["predict", data, "-m", model, "--ledger", model], capsys)
    assert code == 65 and out == "" and "not a cnncli ledger" in err
    code, out, err = run_main(["predict", data, "-m", model, "--ledger", tmp_path / "no" / "l.sqlite"], capsys)
    assert code == 73 and out == ""
    code, out, err = run_main(["predict", data, "-m", model, "--new-only"], capsys)
    assert code == 2 and "--new-only" in err
    fifo = tmp_path / "fifo.sqlite"
    os.mkfifo(fifo)  # like /dev/null: SQLite would write a -journal file beside it
    code, out, err = run_main(["predict", data, "-m", model, "--ledger", fifo], capsys)
    assert code == 73 and out == "" and "not a regular file" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("fifo")) == ["fifo.sqlite"]


def _kill_after_rows(args, cwd, rows):
    """Start predict, SIGKILL it once `rows` output lines (header included) have appeared."""
    proc = cnncli_child(args, cwd)
    seen = 0
    while seen < rows:
        line = proc.stdout.readline()
        if not line:
            break
        seen += 1
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return proc.returncode


def test_kill_9_at_several_points_then_rerun_loses_and_doubles_nothing(tmp_path):
    data, model = world(tmp_path, n_per_class=20, bad=0)
    ledger = tmp_path / "l.sqlite"
    args = ["predict", data, "-m", model, "--ledger", ledger, "--batch-size", "3"]
    for rows in (1, 5, 14, 27):  # before the first batch, mid-batch, ... , near the end
        assert _kill_after_rows(args, tmp_path, rows) == -signal.SIGKILL
        if os.path.exists(ledger):
            assert len(_rows(ledger)) <= 40
    code, out, err = run_child(args, tmp_path)
    assert code == 0, err
    rows = _rows(ledger)
    assert len(rows) == 40 == len({r[0] for r in rows})
    code, plain, _ = run_child(["predict", data, "-m", model], tmp_path)
    assert out == plain  # the finished run prints every image, as a plain run does


def test_two_concurrent_runs_share_one_ledger(tmp_path):
    data, model = world(tmp_path, n_per_class=20, bad=0)
    ledger = tmp_path / "l.sqlite"
    args = ["predict", data, "-m", model, "--ledger", ledger, "--batch-size", "2"]
    procs = [cnncli_child(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert outs[0][0] == outs[1][0] and len(body(outs[0][0].decode())) == 40
    rows = _rows(ledger)
    assert len(rows) == 40 == len({r[0] for r in rows})


def test_another_programs_database_is_refused_and_left_byte_for_byte_unchanged(tmp_path, capsys):
    data, model = world(tmp_path, n_per_class=2, bad=0)
    for name, table in (("app.db", "users(name)"), ("clash.db", "results(a, b)")):
        db = tmp_path / name
        con = sqlite3.connect(db)
        con.execute(f"create table {table}")
        con.commit()
        con.close()
        before = db.read_bytes()
        code, out, err = run_main(["predict", data, "-m", model, "--ledger", db], capsys)
        assert code == 65 and out == "" and "not a cnncli ledger" in err, err
        assert db.read_bytes() == before  # no table added, not switched to WAL
        assert not (tmp_path / f"{name}-wal").exists()


def _open_and_add(job):
    from cnncli.store.ledger import Ledger

    path, i = job
    try:
        ledger = Ledger(path, "model", ["a", "b"])
        ledger.add([(f"h{i}", "p.png", "a", 0.5, [0.5, 0.5], 0.0, None)])
        ledger.close()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the test reports what went wrong
        return repr(exc)


def test_runs_that_open_a_new_ledger_at_the_same_moment_all_get_it(tmp_path):
    # SQLite reports some lock conflicts of the switch to WAL at once, without its busy timeout: before the
    # retry, about one run in 25 exited 75 "busy (another run held it for 600 s)" a moment after starting.
    import multiprocessing

    results = []
    with multiprocessing.get_context("fork").Pool(6) as pool:
        for k in range(12):
            results += pool.map(_open_and_add, [(str(tmp_path / f"l{k}.sqlite"), i) for i in range(6)], chunksize=1)
    assert results == ["ok"] * len(results), [r for r in results if r != "ok"][:3]
    assert all(len(_rows(tmp_path / f"l{k}.sqlite")) == 6 for k in range(12))
