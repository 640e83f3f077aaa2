"""The system calls the model prices, and the Linux names a trace's calls map onto them.

`kaiser.linux.syscalls.SYSCALLS` holds the modelled bodies (their kernel-side references and their
own cycles); `kaiser.traces.interleave.MODELLED_AS` maps the names valgrind and strace print
(``pread64``, ``writev``, ...) onto the body that stands in for them; any other traced call gets
the generic body (`GENERIC_REFS`, `GENERIC_BODY_CYCLES`), and a call whose shipped recording
exists can be priced from the recorded kernel side instead (`kaiser.record.replay`). This module
puts the three together for whoever lists or explains them; each table keeps its one home.

The per-call hook a trace replay compiles a traced call with is
`kaiser.traces.interleave.EntrySyscalls.syscall_events` (a `SyscallHook`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser.linux.syscalls import SYSCALLS
from kaiser.record.replay import recording_path
from kaiser.traces.interleave import GENERIC_BODY_CYCLES, MODELLED_AS


@dataclass(frozen=True)
class ModelledSyscall:
    """One modelled body: its name and number, the Linux names priced with it, its own cycles,
    what its kernel-side references stand for, and whether a recording of it is shipped."""

    name: str
    nr: int
    linux_names: tuple[str, ...]
    body_cycles: float
    kernel_source: str
    recorded: bool


def catalogue(kernel: str = "6.1") -> list[ModelledSyscall]:
    """Every modelled body in `SYSCALLS` order; `recorded`: a shipped recording of `kernel` has it."""
    out = []
    for name, spec in SYSCALLS.items():
        names = tuple(sorted(n for n, body in MODELLED_AS.items() if body == name))
        out.append(
            ModelledSyscall(
                name=name,
                nr=spec.nr,
                linux_names=names,
                body_cycles=spec.body_cycles,
                kernel_source=spec.kernel_source,
                recorded=recording_path(kernel, name) is not None,
            )
        )
    return out


def priced_as(linux_name: str) -> str:
    """How a traced call named `linux_name` is priced: the modelled body's name, or ``generic``
    (GENERIC_BODY_CYCLES and the generic references) when the model has none for it."""
    return MODELLED_AS.get(linux_name, "generic")


__all__ = ["GENERIC_BODY_CYCLES", "ModelledSyscall", "catalogue", "priced_as"]
