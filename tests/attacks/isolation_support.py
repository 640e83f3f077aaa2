"""What an attacker module is allowed to see, read off its source, and a port that records what
it asks for: shared by the Meltdown and KASLR isolation tests."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType
from typing import Any


def _tree(module: ModuleType) -> ast.Module:
    return ast.parse(inspect.getsource(module))


def imported_modules(module: ModuleType) -> set[str]:
    """Every module `module` imports (`import x` and `from x import ...`)."""
    imported: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    return imported


def names_used(module: ModuleType) -> set[str]:
    """Every attribute and bare name `module`'s source mentions."""
    tree = _tree(module)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    return names | {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


class RecordingPort:
    """Wraps a real port (a UserProcess) and records every attribute the attacker asks for."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.used: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.used.add(name)
        return getattr(self._inner, name)
