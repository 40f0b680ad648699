"""Import directions between the packages, read from the source with ``ast`` (nothing is imported).

``utils`` (data, metrics, training loop) is the base; ``network`` (backbones, stand-in pretraining)
builds on it; the methods ``spol`` and ``sltnet`` build on both and never on each other; the demo's
package ``demo_birds`` sits on top (it may import all four) and nothing but ``demo.py`` and the
tests imports it. Every
import counts: module level, inside functions, relative, and ``importlib.import_module("...")``
/ ``__import__("...")`` with a literal name.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "network", "spol", "sltnet", "demo_birds")
# what each package may import, besides itself
ALLOWED = {"utils": set(), "network": {"utils"}, "spol": {"utils", "network"}, "sltnet": {"utils", "network"},
           "demo_birds": {"utils", "network", "spol", "sltnet"}}


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Dotted names of every module ``source`` (the text of ``module``) imports, anywhere in it."""
    names = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.add(prefix)
            names.update(f"{prefix}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


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
