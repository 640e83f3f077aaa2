"""Package exports imported on first use, so that `kaiser --help` starts without numpy.

A package's `__init__.py` names what it exports once, as imports under `if TYPE_CHECKING:` (so
type checkers and readers see ordinary imports), and ends with::

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

`lazy_exports` reads those imports from the file itself (with `ast`), and the package's
`__getattr__` imports a name's module the first time the name is asked for (PEP 562), then keeps
it in the package so the next lookup is a plain attribute. Nothing of kaiser is imported here.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, exporting what `init_file` imports under
    `if TYPE_CHECKING:` (name -> absolute module)."""
    where = _type_checking_imports(Path(init_file))
    shadowed = sorted(n for n in where if (Path(init_file).parent / f"{n}.py").exists())
    if shadowed:  # importing that submodule would bind the name to the module, not the export
        raise ImportError(f"{init_file}: lazy exports named as a module of the package: {', '.join(shadowed)}")

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__


def _type_checking_imports(init_file: Path) -> dict[str, str]:
    tree = ast.parse(init_file.read_text(encoding="utf-8"), str(init_file))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                    for alias in stmt.names:
                        found[alias.asname or alias.name] = stmt.module
    if not found:
        raise ImportError(f"{init_file}: no imports under 'if TYPE_CHECKING:' to export")
    return found
