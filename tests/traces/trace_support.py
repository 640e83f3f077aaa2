"""A real trace: the built-in C program (`kaiser.traces.record`) under valgrind lackey and strace.

The tools must be there (`.ci/run` installs gcc, valgrind and strace when absent): a missing tool
fails the tests that need it, loudly, instead of skipping them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kaiser.traces.record import RecordError, record_trace

ROUNDS = 20  # ~0.9 M lackey lines, 77 system calls


def make_real_trace(directory: Path, rounds: int = ROUNDS) -> tuple[Path, Path]:
    """Compile the program, run it under lackey and under strace; returns (lackey log, strace log)."""
    try:
        got = record_trace(directory, rounds=rounds, strace=True)
    except RecordError as exc:
        pytest.fail(f"{exc}; tests/traces need gcc, valgrind and strace (.ci/run installs them)", pytrace=False)
    assert got.strace is not None
    return got.lackey, got.strace
