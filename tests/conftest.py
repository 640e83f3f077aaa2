"""Suite-wide settings. Hypothesis's per-example deadline (200 ms by default) is a timed assertion
that fails on a loaded machine, not on a wrong answer: off for every property test. Speed is
reported by `kaiser bench`, never asserted.

A parallel run (pytest-xdist, `make test`) compiles the numba engine once: the controller starts
`kaiser.x86.engine.warm_up` in a process of its own, which holds the engine's compile lock
(`kaiser.x86.engine_jit`) until the engine is in numba's cache, and the test files that build an
engine run last, so that the workers spend that time on the rest and then load the engine
instead of each compiling it (cold, as CI runs it, the compile is about half a minute of CPU).
Only the order and the wait change: any test file passes alone and in any order."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("kaiser", deadline=None)
settings.load_profile("kaiser")

# Test files (prefixes of their paths under tests/) whose tests build an Engine, directly or
# through the cost model, an attack, a trace replay or a command: scheduled after the others.
ENGINE_FILES = (
    "x86/test_engine",
    "attacks/",  # KASLR probes and Meltdown's core (attacks/user_mmu.py) step the engine
    "cost/",
    "traces/",
    "cli/test_bench",
    "cli/test_demo",
    "cli/test_width",
    "fuzz/test_fuzz_inputs",
    "test_docs.py",
    "api/test_designs",
    "api/test_syscalls",
    "record/test_replay",
    "sweep/",
    "report/",
)
_WARM_UP = (
    "from kaiser.x86.engine_jit import compile_lock\n"
    "with compile_lock():\n"
    "    from kaiser.x86.engine import warm_up\n"
    "    warm_up()\n"
)


def _engine_late(item: pytest.Item) -> bool:
    rel = os.path.relpath(str(item.path), os.path.dirname(__file__)).replace(os.sep, "/")
    return rel.startswith(ENGINE_FILES)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The engine's test files after the others (a stable sort: each file keeps its order)."""
    items.sort(key=_engine_late)


def pytest_configure(config: pytest.Config) -> None:
    """In the controller of a parallel run, compile the engine once in a process of its own."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    config._kaiser_warm_up = subprocess.Popen(  # type: ignore[attr-defined]
        [sys.executable, "-c", _WARM_UP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    proc: Any = getattr(config, "_kaiser_warm_up", None)
    if proc is not None and proc.poll() is None:
        proc.wait()
