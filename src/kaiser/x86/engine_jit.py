"""The numba decorator of the compiled engine: every jitted function compiled once, cached.

Cold, numba's cost is its frontend (type inference over the IR), not LLVM: a clean clone, CI
and each pytest-xdist worker pay it on the first `Engine` (tools/numba_compile.py measures it
per function). Two things multiplied it:

* `inline="always"` copies a helper's IR into every call site, and numba types the caller with
  all of it: a helper inlined in eleven places is typed eleven times. `inline` is kept for the
  small helpers of the hot path and for helpers with one call site (engine_core.py calls the walk
  and the data caches from one place in the loop); the rest is `jit`, plain functions typed once
  (a call from compiled code passes every array field by field, so not on the per-access path).
* A call from jitted code with a constant argument (`drop(..., -1, True, ...)`) is typed with
  literal types (`Literal[int](-1)`, `Literal[bool](True)`), and numba compiles one
  specialization per distinct set of literals, each at full price. `jit` compiles for the
  arguments' plain types (int64, bool) instead, so a function has one signature for all its
  callers and the literals reach it as values.

No reference counting (`_nrt=False`): the engine allocates nothing, and numba's NRT would pay
an atomic incref/decref for every array passed to every helper. `nogil`: traces/multireplay.py
replays configurations on threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numba
from numba.core import types

_OPTIONS: Final[dict[str, Any]] = {"cache": True, "nogil": True, "_nrt": False}  # _nrt: not in the stubs


def jit(fn: Callable[..., Any]) -> Any:
    """`fn` compiled by numba in nopython mode, cached on disk, once per non-literal signature."""
    dispatcher = numba.njit(**_OPTIONS)(fn)
    compile_for = dispatcher.compile

    def compile_unliteral(sig: Any) -> Any:
        if isinstance(sig, tuple):
            sig = tuple(types.unliteral(t) for t in sig)
        return compile_for(sig)

    dispatcher.compile = compile_unliteral  # numba calls self.compile for every new argument types
    return dispatcher


def inline(fn: Callable[..., Any]) -> Any:
    """`fn` copied into each jitted caller's IR (numba's `inline="always"`): for small helpers on
    the hot path, where a call would pass every array field by field. Each call site is typed
    again with the caller, so keep these small and their call sites few."""
    return numba.njit(inline="always", **_OPTIONS)(fn)
