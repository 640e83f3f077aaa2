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

One compile for many processes: the compile of an engine function holds an exclusive lock on a
file beside numba's cache (`fcntl.flock`), so processes starting cold at once (pytest-xdist
workers, sweep workers, tests/conftest.py's warm-up) compile the engine once and the others load
it from the cache when the lock is theirs (numba looks in its cache before compiling). Without
`fcntl`, or where the lock file cannot be made, each process compiles on its own as before.

No reference counting (`_nrt=False`): the engine allocates nothing, and numba's NRT would pay
an atomic incref/decref for every array passed to every helper. `nogil`: traces/multireplay.py
replays configurations on threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numba
from numba.core import types

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, every process compiles
    fcntl = None  # type: ignore[assignment]

_OPTIONS: Final[dict[str, Any]] = {"cache": True, "nogil": True, "_nrt": False}  # _nrt: not in the stubs


_LOCK_NAME: Final = "kaiser-engine-compile.lock"
_held = threading.local()  # this thread's depth of nested compiles under the lock
_threads = threading.RLock()  # the threads of one process take the file lock one at a time


def lock_path() -> Path:
    """The lock file beside numba's cache of this package (NUMBA_CACHE_DIR, else __pycache__)."""
    root = getattr(numba.config, "CACHE_DIR", "")  # NUMBA_CACHE_DIR; not in numba's stubs
    return Path(root) / _LOCK_NAME if root else Path(__file__).parent / "__pycache__" / _LOCK_NAME


@contextmanager
def compile_lock() -> Iterator[None]:
    """Hold the engine's compile lock (reentrant within a thread: a compile nests its callees')."""
    depth = getattr(_held, "depth", 0)
    if depth or fcntl is None:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth = depth
        return
    with _threads:
        try:
            path = lock_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            _held.depth = 1
            yield
        finally:
            _held.depth = 0
            if fd is not None:
                os.close(fd)  # closing the file releases the lock


def jit(fn: Callable[..., Any]) -> Any:
    """`fn` compiled by numba in nopython mode, cached on disk, once per non-literal signature."""
    dispatcher = numba.njit(**_OPTIONS)(fn)
    compile_for = dispatcher.compile

    def compile_unliteral(sig: Any) -> Any:
        if isinstance(sig, tuple):
            sig = tuple(types.unliteral(t) for t in sig)
            if sig in dispatcher.overloads:  # compiled or loaded already: no lock
                return compile_for(sig)
        with compile_lock():
            return compile_for(sig)

    dispatcher.compile = compile_unliteral  # numba calls self.compile for every new argument types
    return dispatcher


def inline(fn: Callable[..., Any]) -> Any:
    """`fn` copied into each jitted caller's IR (numba's `inline="always"`): for small helpers on
    the hot path, where a call would pass every array field by field. Each call site is typed
    again with the caller, so keep these small and their call sites few."""
    return numba.njit(inline="always", **_OPTIONS)(fn)
