"""The one tagging scheme (kaiser.sourced): a tag reads back as it prints, refuses a kind it does
not know, and `untagged_numbers` finds every number no tag covers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaiser.sourced import KINDS, Source, SourceError, chosen, cited, covering, numbers, untagged_numbers

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1).filter(lambda t: t.strip())


@given(st.sampled_from(KINDS), _TEXT, st.sampled_from(["", " [u]", "+derived", " with x (y; z)"]))
def test_a_tag_reads_back_as_it_prints(kind: str, text: str, qualifier: str) -> None:
    tag = Source(kind, text, qualifier)  # type: ignore[arg-type]
    assert Source.parse(str(tag)) == tag


@pytest.mark.parametrize("line", ["GUESSED: 3 cycles", "CITED 3 cycles", "FIT:", "", "cited: lower case"])
def test_a_line_without_a_kind_and_a_source_is_refused(line: str) -> None:
    with pytest.raises(SourceError):
        Source.parse(line)


def test_an_empty_source_is_refused() -> None:
    with pytest.raises(SourceError):
        chosen("  ")


@dataclass(frozen=True)
class _Level:
    size: int
    ways: int
    inclusive: bool


@dataclass(frozen=True)
class _Part:
    clock: float
    levels: tuple[_Level, ...]
    name: str = "x"


def test_numbers_are_found_by_path_and_booleans_and_strings_skipped() -> None:
    part = _Part(3.0, (_Level(64, 8, True), _Level(512, 4, False)))
    assert dict(numbers(part)) == {
        "clock": 3.0,
        "levels.0.size": 64,
        "levels.0.ways": 8,
        "levels.1.size": 512,
        "levels.1.ways": 4,
    }


def test_a_structure_tag_covers_its_numbers_and_no_more() -> None:
    part = _Part(3.0, (_Level(64, 8, True), _Level(512, 4, False)))
    tags = {"levels.0": cited("a manual"), "clock": chosen("round")}
    assert covering(tags, "levels.0.ways") == tags["levels.0"]
    assert covering(tags, "levels.1.ways") is None
    assert untagged_numbers(part, tags) == ["levels.1.size", "levels.1.ways"]
    assert untagged_numbers(part, tags | {"levels": cited("the same manual")}) == []
