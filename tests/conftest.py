"""Suite-wide settings. Hypothesis's per-example deadline (200 ms by default) is a timed assertion
that fails on a loaded machine, not on a wrong answer: off for every property test. Speed is
reported by `kaiser bench`, never asserted."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("kaiser", deadline=None)
settings.load_profile("kaiser")
