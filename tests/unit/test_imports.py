"""Import directions, read from the source with ``ast`` (nothing is imported).

Between the packages: ``utils`` (data, metrics, training loop) is the base; ``network`` (backbones,
stand-in pretraining) builds on it; the methods ``spol`` and ``sltnet`` build on both and never on
each other; ``localize`` (``python -m localize``: a trained run of either method on your images) and
the demo's package ``demo_birds`` sit on top (each may import those four, not the other) and
nothing but ``demo.py`` and the tests imports the demo's. Inside ``utils``: the base (``utils/*.py``: config, options,
errors, io, paths) imports no wing; ``utils/data/`` imports only the base; ``utils/evaluation/``
the base and data; ``utils/engine/`` the base, data and evaluation. And no file of the repository
imports, directly or through others, a file that imports it back. Every import counts: module
level, inside functions, relative, and ``importlib.import_module("...")`` / ``__import__("...")``
with a literal name.
"""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("utils", "network", "spol", "sltnet", "localize", "demo_birds")
# what each package may import, besides itself
ALLOWED = {"utils": set(), "network": {"utils"}, "spol": {"utils", "network"}, "sltnet": {"utils", "network"},
           "localize": {"utils", "network", "spol", "sltnet"}, "demo_birds": {"utils", "network", "spol", "sltnet"}}
# the wings of utils and what each may import, besides itself ("base": the files directly in utils/)
WINGS = ("base", "data", "evaluation", "engine")
WING_ALLOWED = {"base": set(), "data": {"base"}, "evaluation": {"base", "data"},
                "engine": {"base", "data", "evaluation"}}
SKIP = {"dataset", "output"}  # data and run folders (they hold no source of the repository)


def import_statements(source: str, module: str, is_package: bool = False) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` for every import in ``source`` (the text of ``module``), anywhere in it:
    ``import a.b`` and ``import_module("a.b")`` / ``__import__("a.b")`` -> ``("a.b", ())``;
    ``from a import b, c`` -> ``("a", ("b", "c"))``, a relative one resolved against the package."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found.append((prefix, tuple(a.name for a in node.names if a.name != "*")))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                found.append((node.args[0].value, ()))
    return found


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Dotted names of every module ``source`` (the text of ``module``) imports, anywhere in it."""
    names = set()
    for prefix, members in import_statements(source, module, is_package):
        names.add(prefix)
        names.update(f"{prefix}.{m}" for m in members)
    return names


@functools.cache  # read once for every test of this file
def package_imports() -> dict[str, dict[str, set[str]]]:
    """package -> {file: the other project packages that file imports}."""
    out = {}
    for package in PACKAGES:
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"no source files under {package}/"
        out[package] = {}
        for path in files:
            rel = path.relative_to(ROOT)
            module = ".".join(rel.with_suffix("").parts)
            is_package = path.name == "__init__.py"
            if is_package:
                module = module.rpartition(".")[0]
            tops = {name.split(".")[0] for name in imported_modules(path.read_text(encoding="utf-8"), module,
                                                                     is_package)}
            out[package][str(rel)] = (tops & set(PACKAGES)) - {package}
    return out


def test_the_parser_sees_every_kind_of_import():
    source = ("import os\n"
              "from utils.io import atomic_write\n"
              "def f():\n"
              "    import spol.model as m\n"
              "    from ..sltnet import losses\n"
              "    return importlib.import_module('network.backbones')\n")
    names = imported_modules(source, "utils.sub.x")
    assert {"os", "utils.io", "spol.model", "network.backbones"} <= names
    assert "utils.sltnet" in names  # two dots from utils.sub.x: the package utils
    assert {n.split(".")[0] for n in imported_modules("from . import common\n", "spol.cam.test")} == {"spol"}
    assert imported_modules("from . import backbones\n", "network", is_package=True) == {"network",
                                                                                         "network.backbones"}


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package):
    bad = {f: sorted(tops - ALLOWED[package]) for f, tops in package_imports()[package].items()
           if tops - ALLOWED[package]}
    assert not bad, f"{package}/ may import only {sorted(ALLOWED[package]) or 'no other package'}: {bad}"


def test_no_import_cycle_between_packages():
    graph = {p: set().union(*package_imports()[p].values()) for p in PACKAGES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for p in PACKAGES:
        if p not in state:
            visit(p, [])
    assert "network" not in graph["utils"]


def test_only_demo_py_and_the_tests_import_the_demo_package():
    """Every other Python file of the repository (scripts, benchmarks, stage scripts) leaves
    ``demo_birds`` alone: the demo sits on top of the layers and nothing builds on it."""
    skip = {"demo_birds", "tests", "dataset", "output"}  # (data and run folders hold no source)
    files = [p for p in ROOT.glob("*.py") if p.name != "demo.py"]
    for folder in sorted(ROOT.iterdir()):
        if folder.is_dir() and folder.name not in skip and not folder.name.startswith("."):
            files += folder.rglob("*.py")
    assert any(p.parts[-3:] == ("spol", "cls", "train.py") for p in files)
    bad = []
    for path in sorted(files):
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts)
        names = imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
        if any(n.split(".")[0] == "demo_birds" for n in names):
            bad.append(str(rel))
    assert not bad, f"only demo.py and the tests may import demo_birds: {bad}"


# ----------------------------------------------------------------------------- files
def repository_modules() -> dict[str, Path]:
    """Dotted name -> file, for every Python file of the repository (a package by its __init__.py)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts)
        modules[module.removesuffix(".__init__") if path.name == "__init__.py" else module] = path
    return modules


def _resolve(name: str, path: Path, modules: dict[str, Path]) -> Path | None:
    """The repository file that ``path`` loads when it imports ``name``: the longest prefix of
    ``name`` that is a module here; else, for a file outside the packages (a benchmark, a test),
    a file of that name in its folder or a folder above it that is no package either (such files
    put their folders on sys.path); else None (the standard library, a third-party package)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return modules[".".join(parts[:n])]
    folder = path.parent
    while folder != ROOT and not (folder / "__init__.py").is_file():
        if (folder / f"{parts[0]}.py").is_file():
            return folder / f"{parts[0]}.py"
        folder = folder.parent
    return None


def imported_files(source: str, path: Path, modules: dict[str, Path]) -> set[Path]:
    """The repository files ``source`` (the text of ``path``) imports, anywhere in it.

    ``import a.b.c`` and ``import_module("a.b.c")``: the file of ``a.b.c`` (or of its longest
    prefix that is a module); ``from a.b import c``: ``c``'s file when ``a.b.c`` is a module,
    else ``a.b``'s (where ``c`` is defined)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    is_package = path.name == "__init__.py"
    if is_package:
        module = module.rpartition(".")[0]
    names = []
    for prefix, members in import_statements(source, module, is_package):
        names += [f"{prefix}.{m}" if f"{prefix}.{m}" in modules else prefix for m in members] or [prefix]
    found = {_resolve(name, path, modules) for name in names}
    return {f for f in found if f is not None and f != path}


@functools.cache
def file_graph() -> dict[Path, set[Path]]:
    modules = repository_modules()
    return {path: imported_files(path.read_text(encoding="utf-8"), path, modules) for path in modules.values()}


def find_cycle(graph: dict) -> list | None:
    """One import cycle of ``graph`` (node -> the nodes it imports) as a path ``[a, b, ..., a]``, or None."""
    state: dict = {}  # 1 = on the current path, 2 = done
    path: list = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ()), key=str):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph, key=str):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def wing_of(path: Path) -> str | None:
    """``base``, ``data``, ``evaluation`` or ``engine`` for a file of ``utils``, else None."""
    rel = path.relative_to(ROOT).parts
    if rel[0] != "utils":
        return None
    return "base" if len(rel) == 2 else rel[1]


def test_imported_files_resolve_modules_names_and_scripts(tmp_path):
    modules = repository_modules()
    path = ROOT / "utils" / "engine" / "stage.py"
    source = ("from utils.engine.rundir import run_cli\n"
              "from utils.engine import distributed\n"
              "from . import seeding\n"
              "def f():\n"
              "    import utils.data.layouts as layouts\n"
              "    return importlib.import_module('utils.evaluation.protocol')\n")
    rel = {str(p.relative_to(ROOT)) for p in imported_files(source, path, modules)}
    assert rel == {"utils/engine/rundir.py", "utils/engine/distributed.py", "utils/engine/seeding.py",
                   "utils/data/layouts.py", "utils/evaluation/protocol.py"}
    bench = ROOT / "benchmarks" / "bench_train.py"  # puts benchmarks/ on sys.path: ``import timing``
    assert imported_files("from timing import interleaved\n", bench, modules) == {ROOT / "benchmarks" / "timing.py"}
    test = ROOT / "tests" / "e2e" / "test_faults.py"  # puts tests/ on sys.path: ``import toy_train``
    assert imported_files("import toy_train\n", test, modules) == {ROOT / "tests" / "toy_train.py"}
    # inside a package a bare name is a top-level module: the standard library's io, not utils/io.py
    assert imported_files("import io\n", ROOT / "utils" / "evaluation" / "handoff.py", modules) == set()


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_utils_has_its_wings_and_nothing_else():
    folders = {p.name for p in (ROOT / "utils").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders == set(WINGS) - {"base"}
    assert {wing_of(p) for p in (ROOT / "utils").rglob("*.py")} == set(WINGS)


@pytest.mark.parametrize("wing", WINGS)
def test_wing_direction(wing):
    bad = {}
    for path, imported in file_graph().items():
        if wing_of(path) == wing:
            wrong = sorted(str(f.relative_to(ROOT)) for f in imported
                           if wing_of(f) not in (None, wing) and wing_of(f) not in WING_ALLOWED[wing])
            if wrong:
                bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, f"utils {wing} may import only {sorted(WING_ALLOWED[wing]) or 'no wing'} of utils: {bad}"


def test_no_import_cycle_between_files():
    graph = file_graph()
    assert len(graph) > 100 and any(graph.values())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(str(p.relative_to(ROOT)) for p in cycle)
