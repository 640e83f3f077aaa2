"""The Meltdown core's user-mode translations, on the compiled engine or on the reference Mmu.

Both paths are one logical processor's MMU with the part's TLB geometry: every user load of the
core is one access through its TLBs, in program order, counted (`TlbCounters`), a miss walks and
sets A (SDM Vol. 3A §4.8), and a page fault invalidates the page's entries (§4.10.4.1). They
differ only in speed, and tests/attacks/test_user_mmu.py holds them equal (outcomes, per-probe
timings, counters):

* `reference`: `kaiser.x86.mmu.Mmu`, one `Mmu.hit_pa` or `Mmu.access` a load.
* `engine`: `kaiser.x86.engine.Engine`, the same MMU compiled, stepped on its own copy of memory
  (`stepper`) as the KASLR attack steps it (`kaiser.attacks.timing`). One engine call costs a few
  microseconds however few events it has, so loads of pages already translated are queued and
  stepped together when the core next needs the MMU's answer (a load of a page not translated
  yet, the counters, memory): the TLBs see the same accesses in the same order. Such a load
  cannot fault -- its page translated for a user read before and the tables have not changed
  since (an edit goes through `edit_tables`, which drops what is known) -- so the core needs no
  answer from the engine for it, only the physical address, which is the walker's for that page
  (`translate` without setting A/D; the engine's walk set them). The engine does not report
  physical addresses: a load of a page not known yet is stepped alone, and then its address, or
  its fault, is the walker's for the same tables; an engine that disagrees (a fault the walker
  does not find, or none where it does) raises `AssertionError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import TYPE_CHECKING, Final

from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuState
from kaiser.x86.events import EventBuilder
from kaiser.x86.mmu import Mmu
from kaiser.x86.physmem import PAGE_SIZE, PhysicalMemory
from kaiser.x86.rights import Op
from kaiser.x86.tlb_geometry import TlbGeometry
from kaiser.x86.walker import Fault, translate

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from kaiser.x86.engine import Engine

PATHS: Final = ("engine", "reference")  # as the KASLR probes' (kaiser.attacks.timing)
_FAULTS: Final = [f.name for f in fields(TlbCounters)].index("faults")  # the engine's counter order
_PAGE_SHIFT: Final = PAGE_SIZE.bit_length() - 1
_OFFSET: Final = PAGE_SIZE - 1


class ReferenceTranslations:
    """User reads through the reference `Mmu`, one access a load."""

    def __init__(self, mem: PhysicalMemory, state: CpuState, geometry: TlbGeometry) -> None:
        self.mmu = Mmu(mem, state, geometry=geometry)

    @property
    def state(self) -> CpuState:
        return self.mmu.state

    @property
    def counters(self) -> TlbCounters:
        return self.mmu.counters

    def pa(self, va: int) -> int | Fault:
        """The physical address of a user read of `va`, or its fault."""
        pa = self.mmu.hit_pa(va)
        if pa is not None:
            return pa
        access = self.mmu.access(va)
        if access.fault is not None:
            return access.fault
        assert access.pa is not None
        return access.pa

    def sync(self) -> None:
        """Memory is the MMU's already (A bits set as the walks go)."""

    @contextmanager
    def edit_tables(self) -> Iterator[None]:
        """Edit the page tables inside this block (nothing to do: the Mmu reads `mem` itself)."""
        yield


class EngineTranslations:
    """User reads through the compiled engine, loads of known pages queued (module docstring)."""

    def __init__(self, mem: PhysicalMemory, state: CpuState, geometry: TlbGeometry) -> None:
        from kaiser.x86.engine import Engine  # numba: only when the engine runs

        self.mem = mem
        self.state = state
        self.engine: Engine = Engine(mem, state, geometry=geometry)
        self._step: Callable[[np.ndarray], np.ndarray] = self.engine.stepper()
        self._frames: dict[int, int] = {}  # page number -> frame address, of pages translated for a read
        self._queue: list[int] = []  # loads of known pages the engine has not stepped yet

    @property
    def counters(self) -> TlbCounters:
        self._flush()
        return self.engine.counters

    def _events(self, vas: list[int]) -> np.ndarray:
        events = EventBuilder()
        events.accesses(vas, Op.READ, 3)
        return events.array()

    def _flush(self) -> None:
        if self._queue:
            counts = self._step(self._events(self._queue))
            self._queue = []
            assert not counts[_FAULTS], "a read of a page translated before faulted on the engine"

    def pa(self, va: int) -> int | Fault:
        """The physical address of a user read of `va`, or its fault."""
        frame = self._frames.get(va >> _PAGE_SHIFT)
        if frame is not None:
            self._queue.append(va)
            return frame | (va & _OFFSET)
        self._flush()
        faulted = bool(self._step(self._events([va]))[_FAULTS])
        walk = translate(self.mem, self.state, va, Op.READ, set_ad=False)
        assert faulted == isinstance(walk, Fault), f"the engine and the walker disagree on {va:#x}"
        if isinstance(walk, Fault):
            return walk
        self._frames[va >> _PAGE_SHIFT] = walk.pa & ~_OFFSET
        return walk.pa

    def sync(self) -> None:
        """Step what is queued and write the engine's memory (the A bits its walks set) to `mem`."""
        self._flush()
        self.engine.sync_back()

    @contextmanager
    def edit_tables(self) -> Iterator[None]:
        """Edit the page tables of `mem` inside this block: the engine's memory is written back
        before and taken again after, and the known pages are forgotten."""
        self.sync()
        try:
            yield
        finally:
            self._frames.clear()
            self.engine.reload_memory()


Translations = ReferenceTranslations | EngineTranslations


def translations(mem: PhysicalMemory, state: CpuState, geometry: TlbGeometry, path: str) -> Translations:
    """The core's MMU on `path`."""
    if path == "engine":
        return EngineTranslations(mem, state, geometry)
    if path == "reference":
        return ReferenceTranslations(mem, state, geometry)
    raise ValueError(f"unknown path {path!r}; known: {', '.join(PATHS)}")
