"""Where a model number comes from: the one CITED / FIT / CHOSEN tagging of the whole project.

* CITED: taken from a published figure or document as is (the source is named).
* FIT: set so that one named published measurement comes out of the model; that measurement is
  then not counted as a prediction (`kaiser bench published`).
* CHOSEN: no published figure; the value and the reason are stated.

A `Source` is the tag of one number, or of every number of one structure (a TLB level, a cache
level). `untagged_numbers` walks a frozen description (dataclasses, tuples of them) and names
every int/float field no tag covers, so a test can ask that every number says where it is from.
Standard library only: every layer reads it (the import contracts keep it at the bottom).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["CITED", "FIT", "CHOSEN"]
KINDS: Final[tuple[Kind, ...]] = ("CITED", "FIT", "CHOSEN")


class SourceError(ValueError):
    """A tag that is not one of the three kinds, or that names no source."""


@dataclass(frozen=True)
class Source:
    """The tag of a number: its kind, an optional qualifier (`" [u]"`: the source is secondary or
    unverified, `"+derived"`: computed from cited figures), and the source or reason in words.

    `str()` is the form the tables and JSON print: ``KIND<qualifier>: text``."""

    kind: Kind
    text: str
    qualifier: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SourceError(f"tag kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.text.strip():
            raise SourceError(f"a {self.kind} tag must name its source or reason")

    def __str__(self) -> str:
        return f"{self.kind}{self.qualifier}: {self.text}"

    @classmethod
    def parse(cls, line: str) -> Source:
        """The tag a ``KIND<qualifier>: text`` line states (the inverse of `str`)."""
        kind = next((k for k in KINDS if line.startswith(k)), None)
        head, sep, text = line.partition(": ")
        if kind is None or not sep:
            raise SourceError(f"tag {line[:40]!r} does not start 'CITED', 'FIT' or 'CHOSEN' and a ': '")
        return cls(kind, text, head[len(kind) :])


def cited(text: str, qualifier: str = "") -> Source:
    """A CITED tag."""
    return Source("CITED", text, qualifier)


def fit(text: str, qualifier: str = "") -> Source:
    """A FIT tag."""
    return Source("FIT", text, qualifier)


def chosen(text: str, qualifier: str = "") -> Source:
    """A CHOSEN tag."""
    return Source("CHOSEN", text, qualifier)


def numbers(obj: object, path: str = "") -> Iterator[tuple[str, int | float]]:
    """Every int/float field under `obj` (dataclass fields, tuple items), by dotted path
    (``tlb.dtlb.0.entries``). Booleans are switches, not numbers, and are skipped."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if f.name != "sources":
                yield from numbers(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(obj, tuple):
        for i, item in enumerate(obj):
            yield from numbers(item, f"{path}.{i}")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def covering(sources: Mapping[str, Source], path: str) -> Source | None:
    """The tag of the number at `path`: its own, else its nearest tagged enclosing structure's."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        tag = sources.get(".".join(parts[:n]))
        if tag is not None:
            return tag
    return None


def untagged_numbers(obj: object, sources: Mapping[str, Source]) -> list[str]:
    """Paths of the numbers under `obj` that no tag of `sources` covers."""
    return [path for path, _ in numbers(obj) if covering(sources, path) is None]
