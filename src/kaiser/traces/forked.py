"""A function run in a forked child process, its result (or exception) pickled back.

`kaiser.traces.multireplay` replays groups of configurations side by side this way. Threads did
not scale: half of a configuration's work is Python holding the GIL (booting, compiling system
calls, mapping pages), so two threads spent more CPU than one and overlapped poorly (docs/traces.md).

Forked, not spawned: the child starts with the parent's memory -- imported modules, numba's
loaded functions, an opened trace -- so it imports and compiles nothing. It ends with `os._exit`
after writing its answer: no atexit handler runs and none of the parent's buffered output is
flushed twice (or blocks on a lock another thread of the parent held at the fork). Its CPU time
is `os.wait4`'s (the child's own user and system seconds).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READ_BYTES = 1 << 20  # CHOSEN: a read size for the answer's pipe; any size gives the same bytes


class ChildError(RuntimeError):
    """A child that ended without an answer (killed, or an answer that could not be read)."""


@dataclass
class Child:
    """A forked child: its pid and the read end of the pipe its answer comes through."""

    pid: int
    fd: int
    reaped: bool = False


def start(fn: Callable[[], Any]) -> Child:
    """Fork a child that runs `fn()` and sends back what it returns or raises."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage does not follow a fork ended by _exit)
        os.close(r)
        code = 0
        try:
            try:
                payload = pickle.dumps((True, fn()), pickle.HIGHEST_PROTOCOL)
            except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the parent
                payload = _pickled_error(exc)
            with os.fdopen(w, "wb") as out:
                out.write(payload)
        except BaseException:  # noqa: BLE001 -- the parent reads no answer and says so
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return Child(pid, r)


def _pickled_error(exc: BaseException) -> bytes:
    try:
        return pickle.dumps((False, exc), pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 -- an exception that does not pickle goes back as its text
        return pickle.dumps((False, ChildError(f"{type(exc).__name__}: {exc}")), pickle.HIGHEST_PROTOCOL)


def finish(child: Child) -> tuple[Any, float]:
    """Wait for `child`: what its function returned and the child's CPU seconds; raises what it
    raised, or `ChildError` if it ended without an answer."""
    parts = []
    try:
        while chunk := os.read(child.fd, READ_BYTES):
            parts.append(chunk)
    finally:
        os.close(child.fd)
        child.fd = -1
    _, status, usage = os.wait4(child.pid, 0)
    child.reaped = True
    cpu = usage.ru_utime + usage.ru_stime
    try:
        ok, value = pickle.loads(b"".join(parts))
    except Exception:  # noqa: BLE001 -- empty or cut short: the child died
        raise ChildError(f"replay worker {child.pid} ended without an answer ({_how(status)})") from None
    if not ok:
        raise value
    return value, cpu


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def stop(child: Child) -> None:
    """Kill `child` unless it was already waited for, and reap it."""
    if child.reaped:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)
    if child.fd >= 0:
        os.close(child.fd)
        child.fd = -1
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child.pid, 0)
    child.reaped = True
