"""Event streams: what one logical processor does, as a numpy record array both replay paths read.

One semantics, two speeds: `replay_reference` feeds the events one by one to the readable `Mmu`
(TLBs + the reference walker); the compiled engine (`kaiser.x86.engine`) replays the same array
and must produce identical counters. The Linux layer compiles system calls, interrupts and
context switches into these events; nothing above this module needs to know how they are replayed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from itertools import repeat

import numpy as np

from kaiser.x86.counters import TlbCounters
from kaiser.x86.mmu import Mmu
from kaiser.x86.rights import Op

EVENT_DTYPE = np.dtype([("kind", np.uint8), ("cpl", np.uint8), ("aux", np.uint16), ("a", np.uint64), ("b", np.uint64)])


class Ev(enum.IntEnum):
    """Event kinds. `cpl` is the privilege level the event runs at; `aux` and `a`/`b` per kind."""

    READ = 0  # a = linear address; aux: IMPLICIT (GDT/IDT/TSS), PREFETCH (PREFETCHh)
    WRITE = 1  # a = linear address; aux as READ
    FETCH = 2  # a = linear address
    MOV_CR3 = 3  # a = value written (bit 63 = NOFLUSH)
    INVLPG = 4  # a = linear address
    INVPCID = 5  # aux = type (0..3), b = PCID, a = linear address
    MOV_CR4 = 6  # a = value written
    WRITE_PHYS = 7  # a = physical address (8-byte aligned), b = value: a page-table edit by the kernel


IMPLICIT = 1  # aux flag of READ/WRITE: an implicit supervisor access (SDM Vol. 3A §4.6)
# aux flag of READ: a software prefetch (PREFETCHh, SDM Vol. 2B), `Mmu.access(prefetch=True)`:
# one LASS blocks (judged as an explicit access at the event's CPL) is dropped before any lookup,
# counting nothing; otherwise its translation is made as IMPLICIT says, and a walk that stops at a
# non-present entry is counted and invalidates as a #PF would (none is delivered: it never faults).
PREFETCH = 2
_OPS = (Op.READ, Op.WRITE, Op.FETCH)


class EventBuilder:
    """Accumulates events; `array()` returns them as one EVENT_DTYPE array."""

    def __init__(self) -> None:
        self._rows: list[tuple[int, int, int, int, int]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def access(self, va: int, op: Op, cpl: int, *, implicit: bool = False, prefetch: bool = False) -> None:
        self._rows.append((_OPS.index(op), cpl, (IMPLICIT if implicit else 0) | (PREFETCH if prefetch else 0), va, 0))

    def accesses(self, vas: Iterable[int], op: Op, cpl: int) -> None:
        kind = _OPS.index(op)
        self._rows.extend(zip(repeat(kind), repeat(cpl), repeat(0), vas, repeat(0)))  # rows built in C

    def kernel_rows(self, accesses: Iterable[tuple[int, Op]]) -> list[tuple[int, int, int, int, int]]:
        """The rows `access(va, op, 0)` would append for each (va, op), to keep and `add_rows` again."""
        return [(_OPS.index(op), 0, 0, va, 0) for va, op in accesses]

    def add_rows(self, rows: list[tuple[int, int, int, int, int]]) -> None:
        """Append rows made by `kernel_rows`: a repeated body in one list extend, not one call a row."""
        self._rows.extend(rows)

    def mov_cr3(self, value: int) -> None:
        self._rows.append((Ev.MOV_CR3, 0, 0, value, 0))

    def mov_cr4(self, value: int) -> None:
        self._rows.append((Ev.MOV_CR4, 0, 0, value, 0))

    def invlpg(self, va: int) -> None:
        self._rows.append((Ev.INVLPG, 0, 0, va, 0))

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        self._rows.append((Ev.INVPCID, 0, kind, va, pcid))

    def write_phys(self, pa: int, value: int) -> None:
        self._rows.append((Ev.WRITE_PHYS, 0, 0, pa, value))

    def extend(self, other: EventBuilder) -> None:
        self._rows.extend(other._rows)

    def array(self) -> np.ndarray:
        return np.array(self._rows, dtype=EVENT_DTYPE)


def replay_reference(mmu: Mmu, events: np.ndarray) -> TlbCounters:
    """Replay `events` on `mmu` (the readable path); returns the counters it accumulated."""
    before = mmu.counters.copy()
    for kind, cpl, aux, a, b in events.tolist():
        if kind <= Ev.FETCH:
            if cpl != mmu.state.cpl:
                mmu.set_registers(cpl=cpl)
            mmu.access(a, _OPS[kind], implicit=bool(aux & IMPLICIT), prefetch=bool(aux & PREFETCH))
            continue
        if mmu.state.cpl != 0:
            mmu.set_registers(cpl=0)
        if kind == Ev.MOV_CR3:
            mmu.mov_cr3(a)
        elif kind == Ev.INVLPG:
            mmu.invlpg(a)
        elif kind == Ev.INVPCID:
            mmu.invpcid(aux, b, a)
        elif kind == Ev.MOV_CR4:
            mmu.mov_cr4(a)
        elif kind == Ev.WRITE_PHYS:
            mmu.mem.write_u64(a, b)
        else:
            raise ValueError(f"event kind {kind} is not an Ev")
    return mmu.counters - before
