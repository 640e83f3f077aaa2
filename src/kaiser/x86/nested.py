"""Nested paging (Intel EPT, AMD NPT): a guest's walk is two-dimensional.

In a guest with EPT (SDM Vol. 3C ch. 29, "VMX Support for Address Translation"; AMD's NPT is the
same scheme, AMD APM Vol. 2 §15.25), CR3 and every address in a guest paging-structure entry is a
*guest-physical* address, and each guest-physical address the walk uses goes through the EPT
paging structures (a host walk) before memory is read: the guest PML4 table's address, the table
each guest entry points to, and the final guest-physical address of the access. A 4-level guest
on a 4-level host reads at most 4 guest entries and 5 x 4 EPT entries: 24 memory references
(Bhargava, Serebrin, Spadini, Manne, "Accelerating two-dimensional page walks for virtualized
systems", ASPLOS 2008, Figure 2).

`HostTable` is the host side, built by the model: an identity map (host-physical =
guest-physical) of the guest's RAM with one page size, 4 KiB, 2 MiB or 1 GiB (CHOSEN: a
hypervisor backs a guest's RAM with whatever host pages it has; what matters for a walk's cost is
the EPT depth, which the page size sets: 4, 3 or 2 entries a host walk, SDM §29.3.2; the
identity keeps guest- and host-physical addresses equal, so the data caches see the same lines
as on bare metal). Its tables are the SDM's format (EPT entry: bits 2:0 read/write/execute,
bits 5:3 memory type on a leaf (6 = write-back), bit 7 "maps a page" above the last level,
bits 51:12 the address; SDM §29.3.2, Tables 29-1 to 29-6) and sit above the guest's RAM in
host-physical memory, every level's tables one after another, so entry `i` of a level is the
`i`-th 8-byte word of that level (its address a pure function of the guest-physical address).
They are computed, not stored: nothing in a guest edits them, and storing 128 MiB of EPT frames
for a 64 GiB guest with 4 KiB host pages would tell nothing more. `HostTable.walk` nevertheless
walks them entry by entry from the EPTP, following each entry's address field as the processor
does; `HostTable.entry` is the value of the word at an address.

`NestedMmu` is `kaiser.x86.mmu.Mmu` in such a guest. What it models:

* The guest walk and its paging-structure caches are the native ones (`Mmu._walk`); with EPT a
  paging-structure-cache entry is a *combined* entry (SDM §29.4.1) holding the host-physical
  address of the next guest table, so the first guest table read after a hit needs no host walk.
* Every other guest table read, and the final guest-physical address of a walk that succeeds, is
  translated by a host walk: `host_walks` and `host_walk_loads` count them (`walk_loads` stays
  the guest entries read). Host-walk loads go through the data caches like guest walk loads.
* The TLB caches combined mappings (linear -> host-physical, SDM §29.4.1); a combined mapping's
  page is the smaller of the guest page and the EPT page (SDM §29.4.2: the processor may use the
  smaller size), cached as a piece of the guest page so INVLPG still drops every piece.
* Not modelled (left out, stated): caches of EPT translations themselves (guest-physical
  mappings and EPT paging-structure caches, SDM §29.4.1; AMD's nested TLB): Intel publishes no
  geometry for them, so every host walk reads all its entries (from the data caches, where they
  mostly hit); EPT violations and misconfigurations (the identity map covers all guest RAM, so a
  guest access never takes one); EPT accessed/dirty flags (EPTP bit 6 = 0: the processor does
  not set them, SDM §29.3.5); VPID/EPTP tags (one guest, one address space of EPT).
* Exits: with EPT, MOV to CR3 does not exit unless "CR3-load exiting" is 1 (SDM Vol. 3C §26.1.3)
  and KVM clears it when EPT is on (arch/x86/kvm/vmx/vmx.c, `enable_ept`); INVLPG and INVPCID do
  not exit either ("INVLPG exiting" = 0 with EPT, "enable INVPCID" = 1), so no event of the
  model's streams exits. The price of an exit is `kaiser.cost.params` (`vm_exit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kaiser.choices import HOST_PAGES
from kaiser.x86.bits import ADDR_MASK_52
from kaiser.x86.cache import KIND_WALK
from kaiser.x86.cache_geometry import CacheHierarchy
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.mmu import Mmu
from kaiser.x86.physmem import PAGE_SIZE, PhysicalMemory, PhysMemError
from kaiser.x86.rights import Op, Rights
from kaiser.x86.tlb import Tlb, TlbEntry, entry_from_walk
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, TlbGeometry
from kaiser.x86.walker import EntryRef, Translation

EPT_SHIFTS: Final = (39, 30, 21, 12)  # EPT PML4E, PDPTE, PDE, PTE: bits 47:39 ... 20:12 (SDM §29.3.2)
EPT_RWX: Final = 0x7  # bits 2:0: read, write, execute allowed
EPT_WB: Final = 6 << 3  # bits 5:3 of a leaf: memory type 6, write-back (SDM §29.3.7)
EPT_PAGE: Final = 1 << 7  # bit 7 of a PDPTE/PDE: the entry maps a page
HOST_ALIGN: Final = 1 << 30  # CHOSEN: the EPT tables start at the first 1 GiB boundary above guest RAM


class HostPageError(ValueError):
    """A host page size the model does not have."""


@dataclass(frozen=True)
class HostWalk:
    """One host (EPT) walk: the host-physical addresses of the EPT entries read, in order, and
    the host-physical address the guest-physical one translates to."""

    entries: tuple[int, ...]
    hpa: int


@dataclass(frozen=True)
class HostTable:
    """The host's EPT: an identity map of `guest_size` bytes of guest RAM with `2**page_shift`
    pages, its tables computed (module docstring)."""

    guest_size: int
    page_shift: int
    eptp: int  # host-physical address of the EPT PML4 table (EPTP bits 51:12)

    @classmethod
    def build(cls, guest_size: int, host_page: str) -> HostTable:
        """The EPT of a guest with `guest_size` bytes of RAM and host pages `host_page` (4k, 2m, 1g)."""
        if host_page not in HOST_PAGES:
            raise HostPageError(f"host page {host_page!r} is not one of {', '.join(HOST_PAGES)}")
        base = -(-guest_size // HOST_ALIGN) * HOST_ALIGN
        return cls(guest_size, HOST_PAGES[host_page], base)

    @property
    def shifts(self) -> tuple[int, ...]:
        """The shift of each EPT level a walk reads, top first: 4 levels for 4 KiB pages, 3 for
        2 MiB, 2 for 1 GiB."""
        return tuple(s for s in EPT_SHIFTS if s >= self.page_shift)

    @property
    def level_bases(self) -> tuple[int, ...]:
        """Host-physical address of each level's first table; a level has one table per
        `2**(shift + 9)` bytes of guest RAM, the levels one after another from the EPTP."""
        out, base = [], self.eptp
        for shift in self.shifts:
            out.append(base)
            base += PAGE_SIZE * -(-self.guest_size // (1 << (shift + 9)))
        return tuple(out)

    @property
    def end(self) -> int:
        """The first host-physical address above the EPT tables."""
        last = self.shifts[-1]
        return self.level_bases[-1] + PAGE_SIZE * -(-self.guest_size // (1 << (last + 9)))

    def entry(self, address: int) -> int:
        """The 64-bit EPT entry at host-physical `address` (0: not present, outside guest RAM)."""
        bases, shifts = self.level_bases, self.shifts
        if address & 7 or not self.eptp <= address < self.end:
            raise PhysMemError(f"{address:#x} is not an EPT entry of this host table")
        depth = max(d for d, b in enumerate(bases) if b <= address)
        i = (address - bases[depth]) >> 3
        shift = shifts[depth]
        if i << shift >= self.guest_size:
            return 0
        if depth == len(shifts) - 1:  # a leaf: identity, host-physical = guest-physical
            return (i << shift) | EPT_RWX | EPT_WB | (EPT_PAGE if shift > 12 else 0)
        return (bases[depth + 1] + PAGE_SIZE * i) | EPT_RWX  # table i of the next level

    def walk(self, gpa: int) -> HostWalk:
        """Translate guest-physical `gpa` as the processor does (SDM §29.3.2): from the EPTP, at
        each level the entry selected by the guest-physical address's bits, its bits 51:12 the
        next table, until an entry with bit 7 set (or the last level) maps the page."""
        if not 0 <= gpa < self.guest_size:
            raise PhysMemError(f"guest-physical {gpa:#x} is outside the guest's RAM (size {self.guest_size:#x})")
        table = self.eptp & ADDR_MASK_52
        read: list[int] = []
        for depth, shift in enumerate(EPT_SHIFTS):
            address = table + 8 * ((gpa >> shift) & 0x1FF)
            value = self.entry(address)
            read.append(address)
            if not value & EPT_RWX:  # pragma: no cover - the identity map covers guest RAM
                raise PhysMemError(f"EPT violation at {gpa:#x}: entry {address:#x} not present")
            if depth == len(EPT_SHIFTS) - 1 or value & EPT_PAGE:
                size = 1 << shift
                return HostWalk(tuple(read), (value & ADDR_MASK_52 & ~(size - 1)) | (gpa & (size - 1)))
            table = value & ADDR_MASK_52
        raise AssertionError("unreachable: the last EPT level is always a leaf")


class NestedMmu(Mmu):
    """`Mmu` in a guest with nested paging over `host` (module docstring)."""

    def __init__(
        self,
        mem: PhysicalMemory,
        state: CpuState,
        host: HostTable,
        *,
        features: CpuFeatures | None = None,
        geometry: TlbGeometry = DEFAULT_GEOMETRY,
        tlb: Tlb | None = None,
        caches: CacheHierarchy | None = None,
    ) -> None:
        super().__init__(mem, state, features=features, geometry=geometry, tlb=tlb, caches=caches)
        self.host = host

    def host_walk(self, gpa: int) -> int:
        """One host walk of `gpa`, counted and its loads through the data caches: the host-physical address."""
        hw = self.host.walk(gpa)
        c = self.counters
        c.host_walks += 1
        c.host_walk_loads += len(hw.entries)
        if self.caches is not None:
            for address in hw.entries:
                self.caches.access(address, KIND_WALK)
        return hw.hpa

    def _walk_loads(self, walked: Sequence[EntryRef], saved: int) -> None:
        """`Mmu._walk`, two-dimensional: before each guest entry is read, the guest-physical
        address of its table goes through a host walk (but the table a paging-structure-cache hit
        gave: a combined entry holds its host-physical address); then the entry is read at its
        host-physical address through the data caches."""
        for depth in range(saved, len(walked)):
            ref = walked[depth]
            hpa = ref.address  # identity: a combined PSC entry's table is its guest-physical one
            if depth > saved or saved == 0:
                hpa = self.host_walk(ref.table) + 8 * ref.index
            if self.caches is not None:
                self.caches.access(hpa, KIND_WALK)

    def _fill(
        self, result: Translation, va: int, op: Op, walked: Sequence[EntryRef], saved: int, prefix: Sequence[Rights]
    ) -> TlbEntry:
        """After a guest walk that succeeded, the final guest-physical address's host walk, then
        the native paging-structure caches, and a TLB entry of the smaller of the two pages."""
        self.host_walk(result.pa)
        self._psc_fill_path(va, walked, saved, prefix)
        state = self.state
        entry = entry_from_walk(result, state)
        if self.host.page_shift < entry.shift:  # a combined mapping: the smaller page (§29.4.2)
            entry = entry.piece(self.host.page_shift, va)
        tlb = self.tlb
        tlb._install(tlb.stlb, entry, va, state.pcid, state.pge)
        return tlb._install(tlb.l1(op), entry, va, state.pcid, state.pge) or entry


def walk_references(guest_levels: int, host_levels: int) -> int:
    """Memory references of a full two-dimensional walk (no paging-structure-cache hit) through
    `guest_levels` guest entries: one host walk per guest table and one for the final address,
    plus the guest entries; 24 for 4 and 4 levels (Bhargava et al.)."""
    return guest_levels + (guest_levels + 1) * host_levels
