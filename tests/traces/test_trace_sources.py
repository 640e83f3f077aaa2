"""The trace replay's model numbers carry a tag of the one scheme (kaiser.sourced)."""

from __future__ import annotations

from kaiser.sourced import Source
from kaiser.traces import interleave


def test_every_model_number_of_the_replay_is_tagged() -> None:
    numbers = {"PAGE_CACHE_PAGES", "GENERIC_BODY_CYCLES"}
    assert set(interleave.TRACE_SOURCES) == numbers
    for name, tag in interleave.TRACE_SOURCES.items():
        value = getattr(interleave, name)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), name
        assert isinstance(tag, Source) and tag.text.strip(), name
