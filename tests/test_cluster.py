"""predict --scheduler (Dask): the same bytes as a local run, faults on the cluster, and the optional extra.

One LocalCluster (2 worker processes) is shared by the module; runs that start their own cluster (local:2) or
lose their scheduler start it in a child process. Timeouts are generous: the machine may be loaded.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_helpers import tiny_model
from conftest import make_image_folder
from robust_helpers import child_env, cnncli_child, run_child, run_main

from distributed import Client, LocalCluster

from cnncli.store import weights

SIZE = 16
SLOW = 240  # seconds: a child run or a cluster start-up on a busy two-core machine


@pytest.fixture(scope="module")
def cluster():
    """(scheduler address, Client) of a LocalCluster of 2 worker processes, 1 thread each."""
    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      silence_logs=logging.CRITICAL)
    client = Client(cl, timeout=SLOW)
    client.wait_for_workers(2, timeout=SLOW)
    yield cl.scheduler_address, client
    client.close()
    cl.close()


def _world(tmp_path: Path, n_per_class=12):
    """(data folder with three kinds of bad input, model path, the input arguments)."""
    data = make_image_folder(tmp_path / "data", n_per_class=n_per_class, size=SIZE)
    (data / "cat" / "broken.png").write_bytes(b"not an image")  # undecodable
    (data / "dog" / "empty.png").write_bytes(b"")
    (data / "dog" / "odd\nname.png").write_bytes((data / "dog" / "img_0000.png").read_bytes())
    model = tiny_model(tmp_path / "m.safetensors")
    return data, model, [str(data), str(tmp_path / "missing.png")]


def _stderr_without_summary(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("cnncli: predict: ")]


FORMS = [["--format", "tsv"], ["--format", "csv", "--top-k", "2", "--all-probs"],
         ["--format", "jsonl", "--tta", "--min-confidence", "0.6"],
         ["--format", "table", "--uncertain", "0.3:0.6", "--threshold", "0.45"]]


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f[1])
def test_cluster_output_is_byte_identical_to_a_local_run(tmp_path, capsys, cluster, form):
    data, model, inputs = _world(tmp_path)
    args = ["predict", *inputs, "-m", model, "--batch-size", "5", *form]
    code, out, err = run_main(args, capsys)
    assert code == 1 and out.count("\n") > 20  # error rows make it a partial run
    code2, out2, err2 = run_main([*args, "--scheduler", cluster[0]], capsys)
    assert (code2, out2) == (code, out)
    assert _stderr_without_summary(err2) == _stderr_without_summary(err)


def test_local_2_starts_its_own_cluster_and_prints_the_same_bytes(tmp_path):
    data, model, inputs = _world(tmp_path)
    args = ["predict", *inputs, "-m", model, "--batch-size", "4", "--format", "jsonl", "--all-probs"]
    code, out, err = run_child(args, tmp_path, timeout=SLOW)
    assert code == 1 and len(out.splitlines()) == 2 * 12 + 4
    code2, out2, err2 = run_child([*args, "--scheduler", "local:2"], tmp_path, timeout=SLOW)
    assert (code2, out2) == (code, out), err2
    assert _stderr_without_summary(err2.decode()) == _stderr_without_summary(err.decode())


def test_the_environment_names_the_scheduler_and_none_overrides_it(tmp_path, capsys, cluster, monkeypatch):
    data, model, inputs = _world(tmp_path)
    args = ["predict", *inputs, "-m", model, "--batch-size", "5"]
    code, out, _ = run_main(args, capsys)
    monkeypatch.setenv("CNNCLI_SCHEDULER", cluster[0])
    assert run_main(args, capsys)[:2] == (code, out)
    assert run_main([*args, "--scheduler", "none"], capsys)[:2] == (code, out)
    monkeypatch.setenv("CNNCLI_SCHEDULER", "tcp//nowhere")
    code, out, err = run_main(args, capsys)
    assert code == 2 and out == "" and "CNNCLI_SCHEDULER" in err


def test_shard_ledger_and_sort_into_work_on_the_cluster(tmp_path, capsys, cluster):
    data, model, inputs = _world(tmp_path)
    common = ["predict", *inputs, "-m", model, "--batch-size", "3", "--shard", "1/2"]
    code, out, _ = run_main([*common, "--sort-into", tmp_path / "local"], capsys)
    code2, out2, _ = run_main([*common, "--sort-into", tmp_path / "dask", "--scheduler", cluster[0],
                               "--ledger", tmp_path / "l.sqlite"], capsys)
    assert (code2, out2) == (code, out) and out.count("\n") > 5
    listing = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))  # noqa: E731
    assert listing(tmp_path / "dask") == listing(tmp_path / "local") and listing(tmp_path / "local")
    # the rerun prints every scored row from the ledger, and the same bytes
    code3, out3, err3 = run_main([*common, "--scheduler", cluster[0], "--ledger", tmp_path / "l.sqlite"], capsys)
    assert (code3, out3) == (code, out) and " 0 scored" in err3


class _FakeClient:
    """Just what ordered_results asks of a dask Client: 3 worker threads, a running status."""

    status = "running"

    def nthreads(self):
        return {"w1": 1, "w2": 2}


def test_results_come_back_in_input_order_with_a_bounded_window():
    import random
    from concurrent.futures import ThreadPoolExecutor

    from cnncli.commands.cluster import ordered_results

    rng = random.Random(0)
    state = {"sent": 0, "done": 0, "most": 0}

    def slow_identity(job):
        time.sleep(rng.random() / 200)  # finish out of order
        return job

    with ThreadPoolExecutor(6) as pool:
        def submit(job):
            state["sent"] += 1
            state["most"] = max(state["most"], state["sent"] - state["done"])
            return pool.submit(slow_identity, job)

        jobs = [[k] for k in range(200)]
        got = []
        for job, result in ordered_results(_FakeClient(), ("local", 2), iter(jobs), submit):
            assert result is job
            got.append(job)
            state["done"] += 1
    assert got == jobs and state["most"] == 6  # two per worker thread, never more


def test_bad_or_unreachable_scheduler(tmp_path, capsys):
    data, model, inputs = _world(tmp_path, n_per_class=1)
    code, out, err = run_main(["predict", *inputs, "-m", model, "--scheduler", "http://x"], capsys)
    assert code == 2 and out == "" and "--scheduler" in err
    env = child_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    for command in (["predict", *inputs], ["eval", data]):
        code, out, err = run_child([*command, "-m", model, "--scheduler", "tcp://127.0.0.1:9"], tmp_path,
                                   timeout=SLOW, env=env)
        lines = err.decode().splitlines()
        assert code == 69 and out == b"" and len(lines) == 1 and "tcp://127.0.0.1:9" in lines[0], err


def test_without_dask_the_option_says_how_to_install_it(tmp_path):
    data, model, inputs = _world(tmp_path, n_per_class=1)
    probe = ("import sys\nsys.modules['distributed'] = None\nsys.modules['dask'] = None\n"
             "from cnncli.commands.cli import main\nmain(sys.argv[1:])")
    runs = [(["predict", *inputs], ["--scheduler", "local:2"], child_env()),
            (["predict", *inputs], [], child_env(CNNCLI_SCHEDULER="tcp://h:8786")),
            (["eval", str(data)], ["--scheduler", "tcp://h:8786"], child_env())]
    for command, extra, env in runs:
        res = subprocess.run([sys.executable, "-c", probe, *command, "-m", str(model), *extra],
                             capture_output=True, timeout=SLOW, cwd=tmp_path, env=env)
        lines = res.stderr.decode().splitlines()
        assert res.returncode == 2 and res.stdout == b"" and len(lines) == 1, res.stderr
        assert "pip install 'cnncli[dask]'" in lines[0]


def test_plain_predict_and_eval_never_import_dask(tmp_path):
    data, model, inputs = _world(tmp_path, n_per_class=2)
    probe = ("import sys\nfrom cnncli.commands.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')), "
             "file=sys.stderr)")
    for command, code in ((["predict", *inputs], 1), (["eval", str(data)], 0)):
        res = subprocess.run([sys.executable, "-c", probe, *command, "-m", str(model)], capture_output=True,
                             timeout=SLOW, cwd=tmp_path, env=child_env())
        assert res.stderr.decode().strip().endswith(f"{code} []"), res.stderr


def test_worker_checks_the_model_bytes_against_their_checksum(tmp_path):
    from cnncli.batch import dask_worker
    from cnncli.errors import FormatError

    data = (tiny_model(tmp_path / "m.safetensors")).read_bytes()
    good = dask_worker.checksum_of(data)
    dask_worker.ModelBytes("m.safetensors", data, good).setup()
    assert dask_worker.classifier(good).classes == ["cat", "dog"]
    damaged = bytearray(data)
    damaged[-1] ^= 1
    bad = dask_worker.checksum_of(data + b"x")  # a checksum the bytes do not have
    dask_worker.ModelBytes("m.safetensors", bytes(damaged), bad).setup()
    with pytest.raises(FormatError, match="do not match their SHA-256"):
        dask_worker.classifier(bad)


def _eval_world(tmp_path: Path):
    """(labeled folder with train/val/test parts and two unreadable test files, model path)."""
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=SIZE, split=True, n_test=9, n_val=7)
    (data / "test" / "cat" / "broken.png").write_bytes(b"not an image")
    (data / "test" / "dog" / "empty.png").write_bytes(b"")
    return data, tiny_model(tmp_path / "m.safetensors")


EVAL_FORMS = [["--format", "json", "--errors", "3", "--min-confidence", "0.6", "--tta"],
              ["--format", "table", "--calibrate", "--pick-threshold", "youden", "--save-threshold"],
              ["--format", "json", "--split", "all", "--pick-threshold", "sensitivity=0.8", "--shard", "0/2"]]


@pytest.mark.parametrize("form", EVAL_FORMS, ids=["json", "table-calibrate", "json-all-shard"])
def test_eval_report_is_identical_on_the_cluster(tmp_path, capsys, cluster, form):
    data, model = _eval_world(tmp_path)
    pristine = model.read_bytes()
    args = ["eval", data, "-m", model, *form]
    code, out, err = run_main(args, capsys)
    assert code == 0 and "skipped" in err and out, err
    saved = weights.load(model)[1]
    model.write_bytes(pristine)  # --calibrate / --save-threshold wrote into it: start the second run equal
    code2, out2, err2 = run_main([*args, "--scheduler", cluster[0]], capsys)
    assert (code2, out2, err2) == (code, out, err)
    assert weights.load(model)[1] == saved  # the same values saved (safetensors orders the header at random)


def test_eval_errors_image_is_refused_on_the_cluster(tmp_path, capsys, cluster):
    data, model = _eval_world(tmp_path)
    code, out, err = run_main(["eval", data, "-m", model, "--errors-image", tmp_path / "e.png", "--scheduler",
                               cluster[0]], capsys)
    assert code == 2 and out == "" and "--errors-image" in err and not (tmp_path / "e.png").exists()


def _installed():
    from cnncli.batch import dask_worker

    return sorted(dask_worker._BYTES)


def _processing(dask_scheduler=None):
    return {addr: [str(ts.key) for ts in ws.processing] for addr, ws in dask_scheduler.workers.items()}


def test_killed_worker_batches_run_elsewhere_no_row_lost_or_doubled(tmp_path, capsys, cluster):
    address, client = cluster
    data, model, inputs = _world(tmp_path, n_per_class=120)
    args = ["predict", *inputs, "-m", model, "--batch-size", "2"]
    code, local, _ = run_child(args, tmp_path, timeout=SLOW)
    assert code == 1
    pids = client.run(os.getpid)
    proc = cnncli_child([*args, "--scheduler", address], tmp_path)
    victim, deadline = None, time.monotonic() + SLOW
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        busy = client.run_on_scheduler(_processing)
        victim = next((a for a, keys in busy.items() if any(k.startswith("cnncli-predict") for k in keys)), None)
    assert victim is not None, "no batch was seen running on a worker"
    os.kill(pids[victim], signal.SIGKILL)  # with a batch running on it
    out, err = proc.communicate(timeout=SLOW)
    assert proc.returncode == 1, err
    assert out == local  # every row once, in input order
    client.wait_for_workers(2, timeout=SLOW)  # the nanny restarts it
    from cnncli.batch.dask_worker import checksum_of

    installed = client.run(_installed)  # the restarted worker got the model's bytes too
    assert len(installed) == 2 and all(checksum_of(model.read_bytes()) in v for v in installed.values())


def test_scheduler_lost_mid_run_exits_69_and_keeps_the_rows_written(tmp_path):
    data, model, _ = _world(tmp_path, n_per_class=20)
    paths = sorted(str(p) for p in data.rglob("*.png") if "\n" not in p.name)
    args = ["predict", "-", "-m", model, "--batch-size", "4"]
    proc = subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], input="\n".join(paths).encode(),
                          capture_output=True, cwd=tmp_path, env=child_env(), timeout=SLOW)
    local = proc.stdout.splitlines(keepends=True)
    sched_file = tmp_path / "scheduler.json"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=child_env())
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(sched_file)], **quiet)
    worker = None
    try:
        deadline = time.monotonic() + SLOW
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                   str(sched_file), "--nthreads", "1", "--no-dashboard", "--no-nanny"], **quiet)
        with Client(scheduler_file=str(sched_file), timeout=SLOW) as c:
            c.wait_for_workers(1, timeout=SLOW)
            address = c.scheduler.address
        env = child_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")
        run = subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args), "--scheduler", address],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                               env=env)
        run.stdin.write(("\n".join(paths[:4]) + "\n").encode())
        run.stdin.flush()
        first = [run.stdout.readline() for _ in range(5)]  # the header and the first batch of 4
        scheduler.kill()
        scheduler.wait()
        run.stdin.write(("\n".join(paths[4:]) + "\n").encode())
        run.stdin.close()
        rest, err = run.stdout.read(), run.stderr.read()
        code = run.wait(timeout=SLOW)
    finally:
        for p in (scheduler, worker):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    lines = b"".join(first + [rest]).splitlines(keepends=True)
    assert code == 69, err
    assert 5 <= len(lines) < len(local) and lines == local[:len(lines)]  # whole rows, in order, none doubled
    messages = err.decode().splitlines()  # the bad files' own lines, then one line for the lost scheduler
    errors = [m for m in messages if m.startswith("cnncli: error:")]
    assert errors == messages[-1:] and "lost the scheduler" in errors[0] and address in errors[0], err
