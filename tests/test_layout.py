"""The package layout rules (README, "Layout"), checked by reading every module's imports with ast.

Imports inside functions count the same as those at the top: a lazy import is still a dependency.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnncli"
MAX_LINES = 400
KERNELS = "cnncli.engine.kernels"  # the package of numba kernels
JIT_FLAGS = {"cache", "nogil", "fastmath", "parallel", "boundscheck", "error_model", "inline", "looplift"}
NUMBA_DECORATORS = {"njit", "jit", "vectorize", "guvectorize", "stencil", "generated_jit", "jitclass"}


def _module_name(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules():
    """{dotted module name: (path relative to cnncli/, ast tree)} for every module of the package."""
    return {_module_name(p): (p.relative_to(PACKAGE).as_posix(), ast.parse(p.read_text(), str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name, tree):
    """Every module `name` imports, dotted and absolute, anywhere in its tree (functions included).

    `from a.b import c` counts as a.b.c when that is a module of this package, else as a.b."""
    is_pkg = MODULES and PACKAGE.joinpath(*name.split(".")[1:], "__init__.py").exists()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return found


IMPORTS = {name: _imports(name, tree) for name, (_, tree) in MODULES.items()}


def _under(module, *prefixes):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _offenders(select, bad):
    """[(importer, imported)] for the modules chosen by select(name) that import a module bad(imported) holds for."""
    return sorted((name, imp) for name, imps in IMPORTS.items() if select(name) for imp in imps if bad(imp))


def test_the_reader_sees_every_kind_of_import():
    # The checks below are only as good as _imports: pin it on the forms the package uses.
    tree = ast.parse("import numpy as np\nfrom numba import njit\nfrom cnncli.engine import kernels\n"
                     "from cnncli.errors import SpecError\ndef f():\n    from . import layers\n    import typer\n")
    assert _imports("cnncli.engine.model", tree) == {"numpy", "numba", "cnncli.engine.kernels", "cnncli.errors",
                                                     "cnncli.engine.layers", "typer"}
    assert len(MODULES) >= 20 and "cnncli.engine.kernels" in MODULES and "cnncli.commands.cli" in MODULES


def test_engine_never_imports_data_store_report_or_commands():
    assert _offenders(lambda n: _under(n, "cnncli.engine"),
                      lambda i: _under(i, "cnncli.data", "cnncli.store", "cnncli.report", "cnncli.commands")) == []


# What each part may import from the rest of cnncli (README, "Layout"): the imports point one way,
# errors/config <- engine, data <- store <- report <- batch <- commands.
MAY_IMPORT = {
    "engine": {"cnncli.config", "cnncli.errors"},
    "data": {"cnncli.config", "cnncli.errors"},
    "store": {"cnncli", "cnncli.config", "cnncli.errors", "cnncli.engine", "cnncli.data"},
    "report": {"cnncli", "cnncli.config", "cnncli.errors", "cnncli.engine", "cnncli.store"},
    "batch": {"cnncli", "cnncli.config", "cnncli.errors", "cnncli.engine", "cnncli.data", "cnncli.store",
              "cnncli.report"},
}


@pytest.mark.parametrize("part", sorted(MAY_IMPORT))
def test_each_part_imports_only_the_parts_below_it(part):
    allowed = MAY_IMPORT[part] | {f"cnncli.{part}"}
    outside = [a for a in allowed if a != "cnncli"]  # a subpackage allows its modules; "cnncli" only itself

    def against_the_direction(imp):
        return _under(imp, "cnncli") and imp not in allowed and not _under(imp, *outside)

    assert _offenders(lambda n: _under(n, f"cnncli.{part}"), against_the_direction) == []


def test_kernels_import_only_numpy_numba_config_the_standard_library_and_each_other():
    assert len([n for n in MODULES if _under(n, KERNELS)]) >= 5  # the package, not one module

    def outside(imp):
        return not _under(imp, "numpy", "numba", "cnncli.config", KERNELS) \
            and imp.split(".")[0] not in sys.stdlib_module_names

    assert _offenders(lambda n: _under(n, KERNELS), outside) == []


def test_only_the_kernels_import_numba():
    assert _offenders(lambda n: not _under(n, KERNELS), lambda i: _under(i, "numba")) == []


def test_only_commands_import_typer_rich_or_click():
    assert _offenders(lambda n: not _under(n, "cnncli.commands"), lambda i: _under(i, "typer", "rich", "click")) == []


def test_nothing_imports_commands_but_the_entry_point():
    assert _offenders(lambda n: not _under(n, "cnncli.commands") and n != "cnncli.__main__",
                      lambda i: _under(i, "cnncli.commands")) == []


def test_no_module_is_over_400_lines():
    long = {rel: n for rel, _ in MODULES.values() if (n := len((PACKAGE / rel).read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _jit_flags(tree):
    """[(line, flag)] for every JIT flag spelled in tree: a keyword of a numba decorator, or a flag-named keyword
    or dict key anywhere (cache= and inline= count only on numba decorators, where they mean the JIT's)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            flags = JIT_FLAGS if func in NUMBA_DECORATORS else JIT_FLAGS - {"cache", "inline"}
            found += [(node.lineno, k.arg) for k in node.keywords if k.arg in flags]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, k.value) for k in node.keys
                      if isinstance(k, ast.Constant) and k.value in JIT_FLAGS - {"cache", "inline"}]
    return found


def test_the_jit_flag_reader_finds_every_spelling():
    tree = ast.parse("@njit(cache=True)\ndef f(): pass\n@numba.njit(**JIT, fastmath=True)\ndef g(): pass\n"
                     "OPTS = {'parallel': True}\nfunctools.lru_cache(cache=1)\n")
    assert _jit_flags(tree) == [(1, "cache"), (3, "fastmath"), (5, "parallel")]


def test_jit_flags_are_spelled_only_in_config():
    found = [(rel, *hit) for name, (rel, tree) in MODULES.items() if name != "cnncli.config"
             for hit in _jit_flags(tree)]
    assert found == []


def test_every_package_under_cnncli_goes_into_the_wheel():
    # A package missing from the wheel passes an editable install and fails a real one (CI's).
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from setuptools import find_packages

    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(root), **conf.get("packages", {}).get("find", {})))
    on_disk = {".".join(p.relative_to(root).parent.parts) for p in (root / "cnncli").rglob("__init__.py")}
    assert on_disk <= found, sorted(on_disk - found)
