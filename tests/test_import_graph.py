"""The import graph of src/kaiser, read with `ast`: no upward import, no module cycle.

import-linter (`make lint`) checks the same contracts on the imports it sees; this test builds the
graph itself so that it also sees what a stricter scan does:

- imports at module level, inside functions and methods, and under `if TYPE_CHECKING:` (a type is
  a dependency on the module that defines it, and a TYPE_CHECKING import upward is still a layer
  violation a reader has to know about);
- `import a.b`, `from a import b` (b a module or a name), relative imports (`from . import x`);
- `from kaiser.pkg import Name` where `kaiser.pkg` exports `Name` lazily (kaiser/lazy.py): at run
  time the package's `__getattr__` imports the module that defines `Name`, so the edge goes to that
  module;
- module names given to `importlib.import_module` as string constants (cli/app.py's COMMANDS).

Layers are pyproject's `[tool.importlinter]` layers contract, top to bottom, with the bottom
modules of its forbidden contract (and kaiser.lazy, which imports nothing of kaiser either) below
all of them.

A lazy package `__init__` names its exports as imports under `if TYPE_CHECKING:`; those are edges
from the package to its own submodules. They are checked against the layers but left out of the
cycle check: the `__init__` executes none of them when imported, and a submodule that imports a
lazily exported name gets its edge to the defining module (above), never to the `__init__`, so no
import can run through a package `__init__` back into the submodule that started it. Eager imports
in an `__init__` (report/__init__.py's `load`) are ordinary edges and are cycle-checked.
"""

from __future__ import annotations

import ast
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "kaiser"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of src/kaiser, by dotted name (a package by its `__init__`)."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def lazy_exports(package: str) -> dict[str, str]:
    """What a lazy package `__init__` exports (name -> defining module), read as kaiser/lazy.py
    reads it; empty for a package that does not call lazy_exports."""
    if package not in modules() or not _is_package(package):
        return {}
    source = modules()[package].read_text(encoding="utf-8")
    if "lazy_exports(" not in source:
        return {}
    found: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                    for alias in stmt.names:
                        found[alias.asname or alias.name] = stmt.module
    return found


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _lazy_init_edges(importer: str) -> set[str]:
    return set(lazy_exports(importer).values()) if _is_package(importer) else set()


@cache
def edges(importer: str) -> frozenset[str]:
    """The kaiser modules `importer` imports, anywhere in its file."""
    return scan(importer, modules()[importer].read_text(encoding="utf-8"))


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def scan(importer: str, source: str) -> frozenset[str]:
    """The kaiser modules `source`, read as module `importer`, imports: each target, and the
    packages above a target whose `__init__` Python runs on the way (not the importer's own)."""
    tree = ast.parse(source)
    found: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules():
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(importer, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules():
                    found.add(full)
                elif alias.name in lazy_exports(base):
                    found.add(lazy_exports(base)[alias.name])
                elif base in modules():
                    found.add(base)
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            dynamic = True
    if dynamic:  # importlib.import_module("kaiser.x.y") with the name as a constant
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules():
                found.add(node.value)
    found |= {a for target in found for a in _ancestors(target) if a in modules()} - _ancestors(importer)
    found -= {importer, "kaiser"}  # kaiser/__init__.py imports nothing of kaiser (a test below)
    return frozenset(found)


def layer_order() -> list[list[str]]:
    """The layers, top first: pyproject's layers contract, then the bottom modules."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    contracts = config["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    (bottom,) = [c["source_modules"] for c in contracts if c["type"] == "forbidden"]
    order = [[m.strip() for m in layer.split(":")] for layer in layers]
    return [*order, [*bottom, "kaiser.lazy"]]


def layer_of(module: str) -> int | None:
    """Index of `module`'s layer (0 is the top); None for the root package `kaiser`."""
    for index, layer in enumerate(layer_order()):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    return None


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if m != "kaiser" and layer_of(m) is None] == []


def test_the_scan_sees_what_it_must() -> None:
    # the kinds of import the docstring promises, each on a known example of the tree
    assert "kaiser.cli.dump" in edges("kaiser.cli.app")  # a string given to importlib.import_module
    assert "kaiser.x86.bits" in lazy_exports("kaiser.x86").values()
    assert "kaiser.lazy" in edges("kaiser.x86")
    assert lazy_exports("kaiser.linux") == {}  # not a lazy package
    assert len(modules()) > 100


def test_the_scan_sees_every_kind_of_import() -> None:
    source = """
from typing import TYPE_CHECKING
import kaiser.x86.bits
from kaiser.linux import kernel
from . import layout
from .pti import PtiPart
from kaiser.x86 import PTE
if TYPE_CHECKING:
    from kaiser.cost.model import CostModel
def late():
    from kaiser.api.process import boot
    import numpy
"""
    found = scan("kaiser.linux.mm", source)
    assert found == {
        "kaiser.x86.bits",
        "kaiser.x86",
        "kaiser.linux.kernel",
        "kaiser.linux.layout",
        "kaiser.linux.pti",
        lazy_exports("kaiser.x86")["PTE"],
        "kaiser.cost.model",
        "kaiser.cost",
        "kaiser.api.process",
        "kaiser.api",
    }
    assert scan("kaiser.cli.app", "import importlib\nM = 'kaiser.cli.dump'\nimportlib.import_module(M)\n") == {
        "kaiser.cli.dump"
    }


def test_the_root_package_imports_nothing_of_kaiser() -> None:
    assert edges("kaiser") == frozenset()


def test_no_upward_import() -> None:
    upward = []
    for importer in modules():
        mine = layer_of(importer)
        if mine is None:
            continue
        for target in sorted(edges(importer)):
            theirs = layer_of(target)
            if theirs is not None and theirs < mine:
                upward.append(f"{importer} -> {target}")
    assert upward == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:  # Tarjan's algorithm, iterative
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_tarjan_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(len(c) for c in _strongly_connected(graph)) == [1, 3]


def test_no_module_cycle() -> None:
    graph = {m: set(edges(m)) - _lazy_init_edges(m) for m in modules()}
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert cycles == []
