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

A cache that knows what it compiled: numba keys its on-disk cache by the hash of the one file that
defines a function, but the engine's replay is engine_core.py with engine_cache.py and
engine_rules.py inlined into it and constants of bits.py, rights.py and the rest compiled in. An
edit to one of those (a `git pull`) left the old replay in the cache and the engine silently
wrong. So every engine function's cache stamp also carries `ENGINE_FINGERPRINT`, the hash of
every module in `ENGINE_SOURCES` (tests/x86/test_engine_jit.py checks that the list holds every
kaiser module the engine imports): an edit to any of them makes numba compile afresh.

No reference counting (`_nrt=False`): the engine allocates nothing, and numba's NRT would pay
an atomic incref/decref for every array passed to every helper. `nogil`: traces/multireplay.py
replays configurations on threads.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numba
from numba.core import types
from numba.extending import intrinsic

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, every process compiles
    fcntl = None  # type: ignore[assignment]

_OPTIONS: Final[dict[str, Any]] = {"cache": True, "nogil": True, "_nrt": False}  # _nrt: not in the stubs


# The modules whose code or constants the compiled engine holds: the engine's own and every kaiser
# module they import (names under kaiser/x86/).
ENGINE_SOURCES: Final = (
    "engine_core.py",
    "engine_cache.py",
    "engine_rules.py",
    "engine_jit.py",
    "bits.py",
    "cpu.py",
    "events.py",
    "geometry.py",
    "rights.py",
)


def fingerprint(paths: Iterator[Path] | tuple[Path, ...]) -> str:
    """sha256 over the names and contents of `paths`, in order ("" if one cannot be read)."""
    digest = hashlib.sha256()
    try:
        for path in paths:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError:
        return ""
    return digest.hexdigest()


ENGINE_FINGERPRINT: Final = fingerprint(tuple(Path(__file__).parent / name for name in ENGINE_SOURCES))


def _njit(fn: Callable[..., Any], **options: Any) -> Any:
    """numba's `njit(fn)` with `_OPTIONS`, its cache made stale when any engine source changes
    (module docstring): the index stamp becomes (numba's stamp of the defining file,
    `ENGINE_FINGERPRINT`). Where that cannot be done (sources unreadable, a numba whose cache is
    laid out otherwise) the function is not cached at all: compiled each run, never stale."""
    dispatcher = numba.njit(**_OPTIONS, **options)(fn)
    cache_file: Any = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    stamp = getattr(cache_file, "_source_stamp", None)
    if stamp is None or not ENGINE_FINGERPRINT:
        return numba.njit(**{**_OPTIONS, "cache": False}, **options)(fn)
    cache_file._source_stamp = (stamp, ENGINE_FINGERPRINT)
    return dispatcher


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
    dispatcher = _njit(fn)
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
    return _njit(fn, inline="always")


def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:
    """`prefetch(a, i)` in jitted code: a hint that `a[i]` (of a 1-d array) will be read soon
    (LLVM's `llvm.prefetch`, read, keep in all cache levels, data). No effect on any value: the
    data caches use it to start fetching the host line of a set row they will scan after a
    branch the host is likely to mispredict."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        from llvmlite import binding, ir
        from numba.core import cgutils

        ary = context.make_array(signature.args[0])(context, builder, args[0])
        item = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]], wraparound=False)
        ptr = builder.bitcast(item, ir.IntType(8).as_pointer())
        # The intrinsic's name carries its pointer type: i8* before LLVM 15's opaque pointers.
        name = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name
        )
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep everywhere (3), data (1)
        return context.get_dummy_value()

    return types.void(array, index), codegen


prefetch: Final[Any] = intrinsic(_prefetch)  # Any: called from jitted code as prefetch(array, index)
