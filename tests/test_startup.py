"""Start-up of a short `cnncli predict`: what a one-image run imports, and option values converted without
pydantic (commands/coercion.py) exactly as typer converts them.

Nothing is timed here (benchmarks/bench_startup.py does that); these tests pin what the time depends on.
"""

import subprocess
import sys

import pytest
from conftest import make_image_folder

from cnncli.commands.cli import app
from cnncli.commands.coercion import LeanCoercion
from cnncli.engine.model import Model
from cnncli.store import modelfile

# Never loaded by a one-image predict: heavy libraries, typer's pydantic conversions, the decode process pool,
# the numba kernels, the modules of other commands, and what only training or writing needs (random draws for
# new weights, temporary files, the host name in a lock).
NOT_LOADED = ("pydantic", "pydantic_core", "typer._adapters", "importlib.metadata", "rich", "numba", "llvmlite",
              "numpy.random", "socket", "tempfile",
              "matplotlib", "onnx", "onnxruntime", "dask", "distributed", "sklearn", "scipy", "multiprocessing",
              "concurrent.futures.process", "cnncli.engine.kernels", "cnncli.commands.cluster",
              "cnncli.commands.train", "cnncli.commands.evaluate", "cnncli.report.metrics")


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    data = make_image_folder(root / "data", n_per_class=1, size=16)
    model = root / "m.safetensors"
    clf = modelfile.Classifier(Model("conv4k3-relu-pool2-fc", (1, 16, 16), 2, seed=0), ["cat", "dog"], "gray",
                               [0.5], [0.25])
    modelfile.save(model, clf)
    return root, str(next(data.rglob("*.png"))), str(model)


def _imported(args, cwd):
    """(exit code, stdout, names of the modules `python -X importtime -m cnncli ARGS` imported)."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnncli", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return res.returncode, res.stdout, names - {"imported package"}


def _loaded(names, roots):
    return sorted(n for n in names if any(n == r or n.startswith(r + ".") for r in roots))


@pytest.mark.parametrize("extra", [[], ["--format", "csv", "--top-k", "2", "--threshold", "0.5", "--batch-size", "8",
                                        "--min-confidence", "0.1", "--uncertain", "0.4:0.6"]])
def test_one_image_predict_loads_only_what_it_needs(one_image, extra):
    root, img, model = one_image
    code, out, names = _imported(["predict", img, "-m", model, *extra], root)
    assert code == 0 and out.count("\n") == 2 and img in out
    # the listing is real: what a prediction cannot do without is in it
    assert {"numpy", "PIL.Image", "typer", "cnncli.commands.predict", "cnncli.store.modelfile"} <= names
    assert _loaded(names, NOT_LOADED) == []


def test_version_and_help_load_no_model_code(tmp_path):
    code, out, names = _imported(["--version"], tmp_path)
    assert code == 0 and out.startswith("cnncli ")
    assert _loaded(names, ("numpy", "PIL", "pydantic", "rich", "cnncli.store", "cnncli.commands.predict")) == []


def _params():
    """(command name, click command, parameter) for every parameter of every cnncli command, the group's own
    included."""
    import typer.main

    out = []

    def walk(cmd, name):
        out.extend((name, cmd, p) for p in cmd.params)
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{name} {sub_name}")

    walk(typer.main.get_command(app), "cnncli")
    return out


SAMPLES = {
    "str": ["a", "", " x ", "model.safetensors", "\udcff.png", "a\x00b", "tcp://h:1", b"bytes", 3],
    "int": ["3", "-4", "0", "-0", "0012", " 3", "3 ", "3.0", "1_000", "+3", "1e3", "abc", "", "-", "9" * 25,
            "\u0663", 5, True, 2.0],
    "float": ["0.5", "1e-3", "-2.5E+2", ".5", "5.", "0", "-0", "inf", "-inf", "nan", " 1", "1_0", "0x10", "", "-",
              "e5", "1e", "+.5", "1.5.2", "--1", "1e400", "-1e400", "1e-400", "0.1000000000000000055511151231257827",
              "\u0663", 3, 0.25, True],
    "Path": ["a.png", "", "dir/x", "\udcff.png", "a\x00b", "-", "~/m.safetensors"],
    "bool": [True, False, "yes", ""],
    "list": [("a", "b"), ["x"], "single", (), ("a\udcff", "")],
}


def _kind(annotation):
    if getattr(annotation, "__origin__", None) is list:
        return "list"
    if isinstance(annotation, type) and issubclass(annotation, __import__("enum").Enum):
        return "enum"
    return getattr(annotation, "__name__", str(annotation))


def _outcome(runtime, value, param, ctx):
    try:
        got = runtime.coerce(value, param=param, ctx=ctx)
    except Exception as exc:  # noqa: BLE001 - the error itself is what is compared
        return "error", type(exc).__name__, getattr(exc, "message", str(exc))
    return "ok", type(got).__name__, repr(got)


def test_option_values_convert_as_typer_converts_them():
    """For every option of every command and a spread of spellings (plain, odd, invalid), the lean conversion
    gives typer's value of typer's type, or typer's error with typer's message."""
    typer_coercion = pytest.importorskip("typer._coercion")
    from typer._click import Context

    compared = 0
    for name, command, param in _params():
        desc = getattr(param, "type_descriptor", None)
        assert desc is not None, f"{name} {param.name}: not a typer parameter"
        kind = _kind(desc.annotation)
        values = SAMPLES.get(kind)
        if kind == "enum":
            members = list(desc.annotation)
            values = [m.value for m in members] + [members[0].value.upper(), members[0], "bogus", ""]
        assert values is not None, f"{name} {param.name}: no samples for {desc.annotation}"
        ctx = Context(command)
        for value in [None, *values]:
            mine = _outcome(LeanCoercion(param), value, param, ctx)
            theirs = _outcome(typer_coercion.build_runtime_param(desc), value, param, ctx)
            assert mine == theirs, (name, param.name, value)
            compared += 1
    assert compared > 500



@pytest.mark.parametrize("args, commands", [
    (["predict", "x.png"], ["predict"]),
    (["eval", "data"], ["eval"]),
    (["--version"], None), (["-h"], None), ([], None), (["predic", "x.png"], None), (["ledger", "export"], None)])
def test_a_run_builds_only_the_command_it_names(args, commands):
    """Only the named command's click object is built; anything else (group options, group help, a typo that
    needs the list of commands for its suggestion, a sub-group) gets the whole app."""
    import typer.main

    from cnncli.commands.entry import _only_command

    built = sorted(typer.main.get_command(_only_command(app, args)).commands)
    assert built == (commands or sorted(typer.main.get_command(app).commands))
    assert len(typer.main.get_command(app).commands) >= 8  # the app itself keeps every command


def test_a_typo_still_gets_the_suggestion(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cnncli", "predic", "x.png"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "Did you mean 'predict'?" in res.stderr


def test_a_batch_predict_binds_blas_without_importing_scipy_linalg(tmp_path):
    """The Winograd kernels call BLAS from compiled code (kernels/blas.py): a batch of 40 images through a
    Winograd layer loads scipy's Cython BLAS module, but not the `scipy.linalg` package (0.24 s of imports)."""
    data = make_image_folder(tmp_path / "data", n_per_class=20, size=16)
    model = tmp_path / "m.safetensors"
    clf = modelfile.Classifier(Model("conv8k3p1-relu-conv8k3p1-relu-pool2-fc", (1, 16, 16), 2, seed=0),
                               ["cat", "dog"], "gray", [0.5], [0.25])
    modelfile.save(model, clf)
    # the extension module is loaded without the import system, so -X importtime cannot see it: list sys.modules
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('MODULES', *sorted(sys.modules), file=sys.stderr))\n"
              "from cnncli.commands.cli import main\n"
              f"sys.argv = ['cnncli', 'predict', {str(data)!r}, '-m', {str(model)!r}, '--no-cache']\n"
              "main()\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.count("\n") == 41
    names = set(res.stderr.split("MODULES", 1)[1].split())
    assert {"scipy.linalg.cython_blas", "numba"} <= names
    assert _loaded(names, ("scipy.linalg",)) == ["scipy.linalg.cython_blas"]
