"""`cnncli predict`: model lookup, inputs, formats, thresholds, error rows, streaming, exit codes."""

import contextlib
import csv
import io
import json
import os
import select
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_image_folder
from typer.testing import CliRunner

from cnncli.store import modelfile
from cnncli.commands.cli import app, main
from cnncli.data.images import decode
from cnncli.engine.model import Model
from cnncli.errors import one_line as escape
from cnncli.commands.predict import Decider, parse_band

SIZE = 16


def _classifier(classes=("cat", "dog"), seed=0):
    return modelfile.Classifier(Model("conv4k3-relu-pool2-fc", (1, SIZE, SIZE), len(classes), seed=seed),
                                list(classes), "gray", [0.5], [0.25])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = make_image_folder(root / "data", n_per_class=3, size=SIZE)
    clf = _classifier()
    model = root / "m.safetensors"
    modelfile.save(model, clf)
    three = root / "three.safetensors"
    modelfile.save(three, _classifier(("a", "b", "c")))
    return root, data, clf, model, three


class _Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out.encode(), err.encode()


def _cli(args, cwd=None, env=None):
    """cnncli.commands.cli.main in this process (exit-code mapping included; compiled kernels are reused)."""
    out, err = io.StringIO(), io.StringIO()
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            main(list(args))
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return _Result(exc.value.code, out.getvalue(), err.getvalue())


def _invoke(args, input=None):
    return CliRunner().invoke(app, args, input=input)


def _tsv(text):
    lines = text.splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]


def test_tsv_matches_in_process_probabilities(setup):
    root, data, clf, model, _ = setup
    res = _invoke(["predict", str(data), "-m", str(model), "--top-k", "2"])
    assert res.exit_code == 0, res.output
    rows = _tsv(res.stdout)
    files = sorted(data.rglob("*.png"))
    assert [r["path"] for r in rows] == [str(p) for p in files]
    proba = clf.proba(np.stack([decode(p, SIZE, 1) for p in files]))
    for r, p in zip(rows, proba):
        k = 1 if p[1] >= 0.5 else 0
        assert r["label"] == clf.classes[k]
        assert float(r["probability"]) == pytest.approx(p[k], abs=1e-5)
        assert r["label_2"] == clf.classes[1 - k]
        assert float(r["probability_2"]) == pytest.approx(p[1 - k], abs=1e-5)
        assert r["error"] == ""


def test_bad_and_missing_inputs_give_error_rows_and_exit_1(setup, tmp_path):
    root, data, clf, model, _ = setup
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = next(data.rglob("*.png"))
    res = _cli(["predict", str(good), str(bad), str(tmp_path / "missing.png"), "-m", str(model)])
    assert res.returncode == 1
    rows = _tsv(res.stdout.decode())
    assert [r["label"] != "" for r in rows] == [True, False, False]
    assert rows[2]["error"] == "no such file"
    assert rows[1]["error"]
    err = res.stderr.decode()
    assert str(bad) in err and "missing.png" in err
    ok = _cli(["predict", str(good), "-m", str(model)])
    assert ok.returncode == 0 and ok.stderr == b""


def test_model_from_env_then_current_directory(setup, tmp_path):
    root, data, clf, model, _ = setup
    img = str(next(data.rglob("*.png")))
    res = _cli(["predict", img], cwd=tmp_path, env={"CNNCLI_MODEL": ""})
    assert res.returncode == 66 and b"model.safetensors" in res.stderr
    res = _cli(["predict", img, "--format", "jsonl"], cwd=tmp_path, env={"CNNCLI_MODEL": str(model)})
    assert res.returncode == 0 and json.loads(res.stdout)["label"] in clf.classes
    (tmp_path / "model.safetensors").write_bytes(model.read_bytes())
    res = _cli(["predict", img, "--format", "jsonl"], cwd=tmp_path, env={"CNNCLI_MODEL": ""})
    assert res.returncode == 0 and json.loads(res.stdout)["path"] == img


def test_stdin_nul_separated_names_with_newlines_and_tabs(setup, tmp_path):
    root, data, clf, model, _ = setup
    src = next(data.rglob("*.png")).read_bytes()
    names = [tmp_path / "a\nb.png", tmp_path / "tab\there.png", tmp_path / "plain.png"]
    for n in names:
        n.write_bytes(src)
    stdin = b"\0".join(os.fsencode(n) for n in names) + b"\0"
    res = _invoke(["predict", "-0", "-", "-m", str(model), "--format", "tsv"], input=stdin)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 1 + len(names)
    assert [ln.split("\t")[0] for ln in lines[1:]] == [escape(n) for n in names]
    # Same names through csv and jsonl: one record per line, the same escaped text in every format.
    res = _invoke(["predict", "--null", "-", "-m", str(model), "--format", "jsonl"], input=stdin)
    assert [json.loads(ln)["path"] for ln in res.stdout.splitlines()] == [escape(n) for n in names]
    res = _invoke(["predict", "-0", "-", "-m", str(model), "--format", "csv"], input=stdin)
    assert len(res.stdout.splitlines()) == 1 + len(names)
    assert [r["path"] for r in csv.DictReader(io.StringIO(res.stdout))] == [escape(n) for n in names]


def test_newline_separated_stdin_and_glob(setup):
    root, data, clf, model, _ = setup
    files = sorted(str(p) for p in (data / "dog").glob("*.png"))
    res = _invoke(["predict", "-", "-m", str(model)], input="\n".join(files) + "\n")
    assert [r["path"] for r in _tsv(res.stdout)] == files
    res = _invoke(["predict", str(data / "dog" / "*.png"), "-m", str(model)])
    assert [r["path"] for r in _tsv(res.stdout)] == files
    res = _invoke(["predict", str(data / "nothing*.png"), "-m", str(model)])
    assert res.exit_code == 1 and "no file matches" in res.stdout


def test_threshold_uncertain_and_all_probs(setup):
    root, data, clf, model, _ = setup
    files = sorted(data.rglob("*.png"))
    p1 = clf.proba(np.stack([decode(p, SIZE, 1) for p in files]))[:, 1]
    t = float(np.median(p1))
    res = _invoke(["predict", str(data), "-m", str(model), "--threshold", str(t), "--all-probs", "--format", "jsonl"])
    docs = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [d["label"] for d in docs] == ["dog" if v >= t else "cat" for v in p1]
    assert [d["probabilities"]["dog"] for d in docs] == pytest.approx(p1, abs=1e-5)
    lo, hi = min(float(p1.min()), 0.5), max(float(np.median(p1)), 0.5)  # the band holds the threshold
    res = _invoke(["predict", str(data), "-m", str(model), "--uncertain", f"{lo}:{hi}", "--format", "jsonl"])
    labels = [json.loads(ln)["label"] for ln in res.stdout.splitlines()]
    assert labels.count("uncertain") == int(((p1 >= lo) & (p1 <= hi)).sum()) > 0


def test_stored_threshold_is_the_default(setup, tmp_path):
    root, data, clf, model, _ = setup
    img = next(data.rglob("*.png"))
    p1 = float(clf.proba(decode(img, SIZE, 1)[None])[0, 1])
    for stored, want in ((max(0.0, p1 - 0.01), "dog"), (min(1.0, p1 + 0.01), "cat")):
        c = _classifier()
        c.threshold = stored
        path = tmp_path / f"t{stored}.safetensors"
        modelfile.save(path, c)
        res = _invoke(["predict", str(img), "-m", str(path)])
        assert _tsv(res.stdout)[0]["label"] == want


def test_decider_and_band_parsing():
    d = Decider(["neg", "pos"], threshold=0.3, band=(0.2, 0.35))
    assert d.decide([0.6, 0.4])[:2] == ("pos", 0.4)
    assert d.decide([0.78, 0.22])[0] == "uncertain"
    assert d.decide([0.9, 0.1])[:2] == ("neg", 0.9)
    multi = Decider(["a", "b", "c"])
    label, prob, others = multi.decide([0.2, 0.5, 0.3])
    assert (label, prob, [c for c, _ in others]) == ("b", 0.5, ["c", "a"])
    assert parse_band("0.4:0.6") == (0.4, 0.6)
    for bad in ("0.6:0.4", "x", "0.1:2", "0.5"):
        with pytest.raises(Exception, match="--uncertain"):
            parse_band(bad)


def test_usage_errors(setup):
    root, data, clf, model, three = setup
    img = str(next(data.rglob("*.png")))
    res = _cli(["predict", img, "-m", str(three), "--threshold", "0.7"])
    assert res.returncode == 2 and b"two-class" in res.stderr
    res = _cli(["predict", img, "-m", str(model), "--uncertain", "0.9:0.1"])
    assert res.returncode == 2
    three_out = _invoke(["predict", img, "-m", str(three), "--format", "table"])
    assert three_out.exit_code == 0 and three_out.stdout.count(",") == 2  # top 3 of 3 classes


def test_head_ends_quietly_and_output_streams(setup):
    root, data, clf, model, _ = setup
    cmd = f"{sys.executable} -m cnncli predict {data} {data} {data} -m {model} --batch-size 1 | head -1"
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stderr == b""
    assert res.stdout.startswith(b"path\t")
    # Streaming: results for the first batch arrive while stdin is still open.
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "predict", "-", "-m", str(model), "--batch-size", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        imgs = sorted(data.rglob("*.png"))
        proc.stdin.write(f"{imgs[0]}\n".encode())  # one path, and stdin stays open
        proc.stdin.flush()
        # The row must come without more input: wait for it with a deadline rather than block forever.
        assert select.select([proc.stdout], [], [], 60)[0], "no output while stdin is open"
        assert proc.stdout.readline().startswith(b"path")
        assert proc.stdout.readline().startswith(str(imgs[0]).encode())
        assert proc.poll() is None  # still waiting for more input
        proc.stdin.write(f"{imgs[1]}\n".encode())
        proc.stdin.close()
        rest = proc.stdout.read()
        assert rest.count(b"\n") == 1 and proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_predict_does_not_import_rich_or_plots(setup):
    root, data, clf, model, _ = setup
    img = str(next(data.rglob("*.png")))
    code = ("import sys\nfrom cnncli.commands.cli import main\n"
            f"try:\n    main(['predict', {img!r}, '-m', {str(model)!r}])\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = [m for m in ('rich', 'scipy.stats', 'cnncli.report.metrics', 'cnncli.report.charts', 'matplotlib') if m in sys.modules]\n"
            "print(code, heavy, file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert res.stderr.decode().strip().endswith("0 []"), res.stderr


def test_table_rows_line_up_and_show_uncertain(setup):
    root, data, clf, model, _ = setup
    files = sorted(data.rglob("*.png"))
    p1 = clf.proba(np.stack([decode(p, SIZE, 1) for p in files]))[:, 1]
    band = f"{p1.min()}:{p1.min()}"  # exactly the least positive image is uncertain
    res = _invoke(["predict", *map(str, files), str(data / "gone.png"), "-m", str(model), "--format", "table",
                   "--uncertain", band, "--threshold", f"{p1.min()}"])  # the band must hold the threshold
    lines = res.stdout.splitlines()
    assert len(lines) == len(files) + 1
    starts = {ln.index(str(f)) for ln, f in zip(lines, files)}
    assert len(starts) == 1 and lines[-1].index(str(data)) in starts
    k = int(np.argmin(p1))
    assert lines[k].startswith("uncertain (") and sum(ln.startswith("uncertain") for ln in lines) == 1
    want = f"{p1[0]:.2f} dog" if k != 0 else "uncertain"  # above the threshold: positive
    assert lines[0].startswith(want)


def test_long_runs_decode_in_worker_processes_with_the_same_results(setup, tmp_path):
    """A full first batch switches decoding to spawned worker processes (via `python -m cnncli`, whose entry
    point must not run again in the workers); rows, errors and order match the threaded path exactly."""
    root, data, clf, model, _ = setup
    (tmp_path / "bad.png").write_bytes(b"not an image")
    inputs = [str(data), str(tmp_path / "bad.png")]
    runs = {}
    for batch in ("2", "1000"):  # 2: the first batch is full (processes); 1000: it is not (threads)
        res = subprocess.run([sys.executable, "-m", "cnncli", "predict", *inputs, "-m", str(model),
                              "--batch-size", batch, "--all-probs"], capture_output=True, timeout=120)
        assert res.returncode == 1, res.stderr  # the bad file makes it a partial success
        runs[batch] = res.stdout
    assert runs["2"] == runs["1000"]
    assert runs["2"].count(b"\n") == 1 + 6 + 1 and b"not an image" in runs["2"]
