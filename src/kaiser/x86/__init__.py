"""The x86-64 paging model: physical memory, entry bits, page-table editing, the walker, the MMU.

Drive it from a notebook::

    from kaiser.x86 import PhysicalMemory, PageTable, CpuState, translate, Op, PTE
    mem = PhysicalMemory(64 << 30)                 # sparse: costs only touched frames
    pt = PageTable(mem)                            # 4-level; FIVE_LEVEL for LA57
    pt.map(0x400000, 0x200000, 0x1000, PTE.US)     # user, read-only, executable
    translate(mem, CpuState(cr3=pt.cr3(), cpl=3), 0x400000, Op.WRITE)  # -> Fault(#PF, error 0x7)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaiser.lazy import lazy_exports

if TYPE_CHECKING:
    from kaiser.x86.bits import CR0, CR4, EFER, PFEC, PTE, RFLAGS, describe, describe_entry, make_cr3, make_entry
    from kaiser.x86.counters import TlbCounters
    from kaiser.x86.cpu import CpuFeatures, CpuState
    from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL, AddressError, PagingMode, mode_for
    from kaiser.x86.mmu import Access, Mmu
    from kaiser.x86.pagetable import Leaf, PageTable, PagingError
    from kaiser.x86.physmem import FrameKind, PhysicalMemory, PhysMemError
    from kaiser.x86.rights import Op, Rights
    from kaiser.x86.tlb import Tlb
    from kaiser.x86.walker import EntryRef, Fault, Translation, translate


__all__ = [
    "CR0",
    "CR4",
    "EFER",
    "FIVE_LEVEL",
    "FOUR_LEVEL",
    "PFEC",
    "PTE",
    "RFLAGS",
    "Access",
    "AddressError",
    "CpuFeatures",
    "CpuState",
    "EntryRef",
    "Fault",
    "FrameKind",
    "Leaf",
    "Mmu",
    "Op",
    "PageTable",
    "PagingError",
    "PagingMode",
    "PhysMemError",
    "PhysicalMemory",
    "Rights",
    "Tlb",
    "TlbCounters",
    "Translation",
    "describe",
    "describe_entry",
    "make_cr3",
    "make_entry",
    "mode_for",
    "translate",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
