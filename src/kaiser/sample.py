"""A small, fixed address space to look at before the Linux model exists: the demo's subject.

It maps a user program (text RX, data RW NX, stack RW NX), a 1 GiB kernel direct map built from
the largest pages that fit, and a kernel text page, in one 4- or 5-level tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser.x86.bits import PTE
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL, GiB, MiB
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import FrameKind, PhysicalMemory


@dataclass(frozen=True)
class Region:
    """A named range of the sample space."""

    name: str
    va: int
    size: int
    flags: int


def sample_regions(la57: bool = False) -> tuple[Region, ...]:
    """The regions of the sample space, at Linux-like addresses (no KASLR)."""
    direct = 0xFF11000000000000 if la57 else 0xFFFF888000000000  # page_offset_base, mm.rst
    user = PTE.US
    return (
        Region("user text", 0x400000, 16 << 12, user),
        Region("user data", 0x600000, 8 << 12, user | PTE.RW | PTE.NX),
        Region("user stack", 0x7FFFFFFDE000, 33 << 12, user | PTE.RW | PTE.NX),
        Region("direct map", direct, GiB + 6 * MiB, PTE.RW | PTE.G | PTE.NX),
        Region("kernel text", 0xFFFFFFFF81000000, 2 * MiB, PTE.G),
    )


def build_sample(la57: bool = False, ram: int = 4 * GiB) -> tuple[PhysicalMemory, PageTable, tuple[Region, ...]]:
    """Build the sample space in a fresh machine; returns memory, the tree and its regions."""
    mem = PhysicalMemory(ram)
    pt = PageTable(mem, FIVE_LEVEL if la57 else FOUR_LEVEL, tag="sample")
    regions = sample_regions(la57)
    for region in regions:
        if region.name == "direct map":
            pa = 0  # the direct map maps physical memory from 0, like Linux's
        else:
            pa = mem.alloc(FrameKind.DATA, region.name, count=region.size >> 12, align=512)
        pt.map(region.va, pa, region.size, region.flags)
    return mem, pt, regions
