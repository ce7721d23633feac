"""The user's environment cannot break or slow the real command: BLAS stays single-threaded whatever
OPENBLAS_NUM_THREADS says, a NUMBA_NUM_THREADS numba cannot use is ignored, CNNCLI_DEBUG=false means off,
stdout and stderr are UTF-8 under any locale; plus --threads' range and --scheduler's help text."""

import json
import subprocess
import sys

import pytest

from conftest import make_image_folder
from cnncli.engine.model import Model
from cnncli.store import modelfile
from robust_helpers import child_env, run_child

# `python -m cnncli ARGS` (so cnncli.config runs first, as in the real command) that reports, when it exits, the
# BLAS libraries loaded in the process and their thread counts, and the BLAS variable it ran with.
BLAS_PROBE = """
import atexit, json, os, runpy, sys

OUT = sys.argv.pop(1)

def report():
    from threadpoolctl import threadpool_info
    blas = [[i.get("internal_api"), i["num_threads"]] for i in threadpool_info() if i["user_api"] == "blas"]
    with open(OUT, "w") as f:
        json.dump({"env": os.environ.get("OPENBLAS_NUM_THREADS"), "blas": blas}, f)

atexit.register(report)
sys.argv[0] = "cnncli"
runpy.run_module("cnncli", run_name="__main__", alter_sys=True)
"""


def _model(path, size=28):
    clf = modelfile.Classifier(Model("tiny", (1, size, size), 2, seed=1), ["cat", "dog"], "gray", [0.3], [0.35])
    modelfile.save(path, clf)
    return path


def test_blas_runs_one_thread_in_train_whatever_openblas_num_threads_says(tmp_path):
    pytest.importorskip("threadpoolctl")  # installed with scikit-learn, a test dependency
    data = make_image_folder(tmp_path / "d", n_per_class=8, size=12)
    report = tmp_path / "blas.json"
    env = child_env(OPENBLAS_NUM_THREADS="8", OMP_NUM_THREADS="8", MKL_NUM_THREADS="8")
    # the report's path is argv[1]; the probe takes it out before cnncli reads the command line
    done = subprocess.run([sys.executable, "-c", BLAS_PROBE, str(report), "train", str(data), "--arch", "tiny",
                           "--epochs", "1", "--threads", "1", "-q", "-o", str(tmp_path / "m.safetensors")],
                          cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(report.read_text())
    assert seen["env"] == "1"  # decode workers and other children inherit it
    assert seen["blas"], "training loaded no BLAS library"
    assert all(n == 1 for _, n in seen["blas"]), seen["blas"]  # was min(8, CPUs) threads each


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_a_numba_num_threads_numba_cannot_use_is_ignored(value, tmp_path):
    model = _model(tmp_path / "m.safetensors")
    images = make_image_folder(tmp_path / "imgs", n_per_class=5, size=28)  # 10 images: the numba kernels
    code, out, err = run_child(["predict", "-m", model, images], tmp_path, env=child_env(NUMBA_NUM_THREADS=value))
    assert code == 0, err  # was 70 (ValueError from numba's import) for 0 and -1
    assert b"Traceback" not in err and b"NUMBA_NUM_THREADS" not in err, err  # abc: numba's warning, traceback
    assert len(out.decode().splitlines()) == 1 + 10


@pytest.mark.parametrize("value", ["false", "No", "OFF", "0", ""])
def test_cnncli_debug_false_no_off_keep_tracebacks_off(value, tmp_path):
    code, out, err = run_child(["info", "nonexist.safetensors"], tmp_path, env=child_env(CNNCLI_DEBUG=value))
    assert code == 66 and out == b""
    assert b"Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_cnncli_debug_on_shows_the_traceback(value, tmp_path):
    code, _, err = run_child(["info", "nonexist.safetensors"], tmp_path, env=child_env(CNNCLI_DEBUG=value))
    assert code == 66 and b"Traceback" in err


LOCALES = {"C locale": {"LC_ALL": "C", "PYTHONUTF8": "0"}, "latin-1": {"PYTHONIOENCODING": "latin-1"},
           "ascii": {"PYTHONIOENCODING": "ascii"}}


@pytest.mark.parametrize("locale", LOCALES.values(), ids=LOCALES.keys())
def test_stdout_and_stderr_are_utf8_whatever_the_locale(locale, tmp_path):
    model = _model(tmp_path / "m.safetensors")
    make_image_folder(tmp_path / "imgs", n_per_class=1, size=28)
    (tmp_path / "names").mkdir()
    (tmp_path / "imgs" / "cat" / "img_0000.png").rename(tmp_path / "names" / "ü.png")
    env = child_env(**locale)
    if "LC_ALL" in locale:
        env.pop("PYTHONIOENCODING", None)
    code, out, err = run_child(["predict", "-m", model, "names/ü.png", "imgs/dog/img_0000.png"], tmp_path, env=env)
    assert code == 0, err  # was 70 (UnicodeEncodeError) for C and ascii
    rows = out.decode("utf-8").splitlines()  # latin-1 wrote the byte 0xFC: not UTF-8
    assert len(rows) == 3 and rows[1].startswith("names/ü.png\t"), rows
    # a message on stderr names the file in UTF-8 too
    code, out, err = run_child(["info", "ü.safetensors"], tmp_path, env=env)
    assert code == 66 and out == b""
    assert "ü.safetensors" in err.decode("utf-8") and len(err.splitlines()) == 1, err


def test_threads_states_its_range(tmp_path):
    data = make_image_folder(tmp_path / "d", n_per_class=2, size=12)
    for value in ("0", "1025"):
        code, out, err = run_child(["train", data, "--threads", value], tmp_path)
        assert code == 2 and out == b"", err
        assert f"--threads: must be between 1 and 1024, got {value}".encode() in err  # said "at least 1" for 1025
    code, out, _ = run_child(["train", "--help"], tmp_path, env=child_env(COLUMNS="80", NO_COLOR="1"))
    assert code == 0 and b"1-1024" in out


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize("env", [{"COLUMNS": "80", "NO_COLOR": "1"}, {"COLUMNS": "200"}, {"TYPER_USE_RICH": "0"}],
                         ids=["80-no-color", "200", "plain"])
def test_scheduler_help_names_the_dask_extra(command, env, tmp_path):
    code, out, err = run_child([command, "--help"], tmp_path, env=child_env(**env))
    assert code == 0, err
    text = out.decode()
    assert "'cnncli[dask]'" in text and "\\[" not in text  # rich markup ate [dask]: "pip install 'cnncli'"


def test_numba_disable_jit_does_not_break_training(tmp_path):
    """numba's debugging switch ran the kernels as Python, where the training regions' atomic chunk counter does
    not exist (exit 70); cnncli ignores it and trains as always."""
    data = make_image_folder(tmp_path / "d", n_per_class=8, size=12)
    out = tmp_path / "m.safetensors"
    code, _, err = run_child(["train", str(data), "--arch", "tiny", "--epochs", "1", "-q", "-o", str(out)], tmp_path,
                             env=child_env(NUMBA_DISABLE_JIT="1"))
    assert code == 0, err
    assert out.is_file()
