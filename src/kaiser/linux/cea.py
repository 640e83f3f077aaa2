"""`struct cpu_entry_area`, page by page, and what backs each page in our per-CPU area.

Two eras (facts linux-kpti.md §3.4; docs/real-kernel.md for the measured 6.1 layout):

* **4.15** (4.15-4.19's asm/cpu_entry_area.h): gdt, entry stack, tss (3 pages), the SYSCALL
  trampoline, six IST pages without guards, then room for the Intel debug store (32 pages, left
  unmapped here). 43 pages, 44 with the trampoline.
* **modern** (5.2+, measured on Debian's 6.1): gdt, entry stack, tss (5 pages: x86_hw_tss and
  the I/O bitmaps), `cea_exception_stacks` -- a 4K guard page below each 8K stack for DF, NMI,
  DB, MCE, VC, VC2, then a top guard (VC and VC2 are mapped only for SEV-ES guests) -- the
  debug-store page (RW, Intel CPUs) and 32 debug-buffer PTEs set to PAGE_NONE
  (`percpu_setup_debug_store()`, arch/x86/mm/cpu_entry_area.c). 59 pages: CPU n at
  0xfffffe0000001000 + n * 0x3b000 when slots are fixed.

Our designs that keep entry stubs in the area (two-pgd, fixed-trampoline) get one stub page
right after the TSS, where 4.15 put its trampoline.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Final

from kaiser.x86.physmem import PAGE_SIZE


class Kind(enum.Enum):
    """How a piece is mapped: its PTE flags (all global when PGE is on, cea_set_pte())."""

    RO = "ro"  # PAGE_KERNEL_RO
    RW = "rw"  # PAGE_KERNEL
    STUB = "stub"  # PAGE_KERNEL_RX, backed by the first page of entry text
    NONE = "none"  # PAGE_NONE: not present, A|G kept (pgtable_types.h)
    GUARD = "guard"  # never mapped


PAGE_NONE: Final = 0x120  # _PAGE_ACCESSED | _PAGE_GLOBAL (= _PAGE_PROTNONE), not present


@dataclass(frozen=True)
class Piece:
    """`pages` pages at page `page` of a CPU's area, backed from page `backing` of its per-CPU area."""

    name: str
    page: int
    pages: int
    kind: Kind
    backing: int | None = None


# Our per-CPU area in the direct map (PERCPU_PAGES pages a CPU). Both eras: 0 gdt, 1.. tss,
# 12 pcpu_hot/cpu_tlbstate, 13 the runqueue, 14 irq_stat (kaiser.linux.syscalls's PERCPU_* offsets).
# 4.15: 1-3 tss, 4 KAISER's user-mapped scratch, 5 entry stack, 6-11 IST stacks.
# modern: 1-5 tss, 6 entry stack, 7 debug store, 16-23 the four mapped 8K IST stacks.
PERCPU_PAGES: Final = 24
PERCPU_TSS: Final = 1
IST_NAMES: Final = ("DF", "NMI", "DB", "MCE", "VC", "VC2")  # enum exception_stack_ordering (6.1)
IST_MAPPED: Final = 4  # DF, NMI, DB, MCE; VC and VC2 only under SEV-ES
DEBUG_BUFFER_PAGES: Final = 32  # struct debug_store_buffers: BTS + PEBS buffers, 128K


@dataclass(frozen=True)
class CeaLayout:
    """One CPU's entry area: its pieces in address order and its size in pages."""

    era: str
    pieces: tuple[Piece, ...]

    @property
    def pages(self) -> int:
        last = self.pieces[-1]
        return last.page + last.pages

    def piece(self, name: str) -> Piece:
        for p in self.pieces:
            if p.name == name:
                return p
        raise KeyError(f"no {name!r} in the {self.era} cpu_entry_area")

    def offset(self, name: str) -> int:
        """Byte offset of piece `name` from the CPU's area."""
        return self.piece(name).page * PAGE_SIZE

    @property
    def trampoline(self) -> int | None:
        """Byte offset of the stub (trampoline) page, if the area has one."""
        return next((p.page * PAGE_SIZE for p in self.pieces if p.kind is Kind.STUB), None)

    def stack_top(self, name: str) -> int:
        """Byte offset just above IST stack `name` (what the TSS's IST slot points at)."""
        p = self.piece(f"{name} stack")
        return (p.page + p.pages) * PAGE_SIZE


@functools.cache
def cea_layout(era: str, stub: bool, debug_store: bool = True) -> CeaLayout:
    """The entry area of `era` ("4.15" or "modern"), with a stub page when `stub` (built once;
    every kernel and CPU of that kind shares it). `debug_store=False` is a non-Intel CPU:
    `percpu_setup_debug_store()` returns early unless the vendor is Intel (cpu_entry_area.c), so
    neither the debug-store page nor its PAGE_NONE buffer PTEs exist; the struct keeps its size."""
    pieces = [Piece("gdt", 0, 1, Kind.RO, 0)]
    if era == "4.15":
        pieces += [Piece("entry stack", 1, 1, Kind.RW, 5), Piece("tss", 2, 3, Kind.RO, PERCPU_TSS)]
        page = 5
        if stub:
            pieces.append(Piece("trampoline", page, 1, Kind.STUB))
            page += 1
        # exception_stacks[]: DF, NMI, DB (2 pages: DEBUG_STKSZ), MCE, and one spare -- one run
        for i, name in enumerate(("DF", "NMI")):
            pieces.append(Piece(f"{name} stack", page + i, 1, Kind.RW, 6 + i))
        pieces.append(Piece("IST rest", page + 2, 4, Kind.RW, 8))
        pieces.append(Piece("debug store", page + 6, DEBUG_BUFFER_PAGES, Kind.GUARD))
        return CeaLayout(era, tuple(pieces))
    if era != "modern":
        raise ValueError(f"era must be '4.15' or 'modern', not {era!r}")
    pieces += [Piece("entry stack", 1, 1, Kind.RW, 6), Piece("tss", 2, 5, Kind.RO, PERCPU_TSS)]
    page = 7
    if stub:
        pieces.append(Piece("trampoline", page, 1, Kind.STUB))
        page += 1
    for i, name in enumerate(IST_NAMES):  # ESTACKS_MEMBERS(PAGE_SIZE, EXCEPTION_STKSZ)
        pieces.append(Piece(f"{name} guard", page, 1, Kind.GUARD))
        if i < IST_MAPPED:
            pieces.append(Piece(f"{name} stack", page + 1, 2, Kind.RW, 16 + 2 * i))
        else:
            pieces.append(Piece(f"{name} stack", page + 1, 2, Kind.GUARD))
        page += 3
    pieces.append(Piece("IST top guard", page, 1, Kind.GUARD))
    pieces.append(Piece("debug store", page + 1, 1, Kind.RW if debug_store else Kind.GUARD, 7))
    pieces.append(Piece("debug buffers", page + 2, DEBUG_BUFFER_PAGES, Kind.NONE if debug_store else Kind.GUARD))
    return CeaLayout(era, tuple(pieces))
