"""Reprs that print addresses in hex: `hex_fields` for the API's result dataclasses.

``Translation(va=4194304, pa=117686272, ...)`` tells a gdb user nothing; ``Translation(va=0x400000,
pa=0x703c000, ...)`` is what they compare with ``info tlb`` or a ptdump. The decorator replaces the
dataclass's generated ``__repr__`` with one that shows the named integer fields (and integers
inside tuples held by them) as ``0x...``; other fields keep their own repr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _hex(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return f"{value:#x}"
    if isinstance(value, tuple):
        inner = ", ".join(_hex(v) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def hex_fields(*names: str) -> Callable[[type[T]], type[T]]:
    """Class decorator (put it above ``@dataclass``): the repr shows fields `names` in hex."""

    def decorate(cls: type[T]) -> type[T]:
        wanted = set(names)
        missing = wanted - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if missing:
            raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(missing))}")

        def __repr__(self: Any) -> str:
            parts = [
                f"{f.name}={_hex(getattr(self, f.name)) if f.name in wanted else repr(getattr(self, f.name))}"
                for f in dataclasses.fields(self)
                if f.repr
            ]
            return f"{type(self).__name__}({', '.join(parts)})"

        cls.__repr__ = __repr__  # type: ignore[method-assign]
        return cls

    return decorate
