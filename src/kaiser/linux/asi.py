"""Address Space Isolation (ASI): a nonsensitive kernel half, sensitive memory never mapped in it.

The design is the 2024-26 series by Brendan Jackman et al. (facts/successors.md, "ASI"; the
2024 RFC's `arch/x86/mm/asi.c` and its page-allocator integration posted Sep 2025,
"[PATCH 00/21] mm: ASI direct map management"):

- One global `asi_global_nonsensitive_pgd` holds the kernel's nonsensitive mappings. Its
  `asi_global_init()` maps the kernel image (`__START_KERNEL.._end`, text and static data), the
  fixmap and every CPU's static per-CPU data with `asi_map` (new tables of its own, entries equal
  to the kernel's), and shares the CPU entry area and espfix (`asi_clone_p4d`) and the vmemmap
  (`asi_clone_pgd`) by their upper-level entries; vmalloc space is shared the same way (the
  2024 series' "Map vmalloc/vmap data as nonsensitive"), the LDT slot per mm as under PTI.
- The direct map in it is (un)mapped per allocation at pageblock granularity: a pageblock becomes
  nonsensitive as a whole (the Sep 2025 series' migratetype fallback "restricted to requiring a
  whole pageblock") and is then `asi_map`ped; it is unmapped when it is given back. Which memory
  is sensitive is decided at allocation time: `__GFP_SENSITIVE` marks it, everything else is
  nonsensitive (the "denylist" model of the 2024 RFC cover letter), and `GFP_USER` carries
  `__GFP_SENSITIVE` -- so user pages, the page cache and pipe buffers (GFP_HIGHUSER) are
  sensitive, and so is every page table and every frame the model allocates without asking
  for a nonsensitive one here.
- Each process gets an order-1 PGD pair (`PGD_ALLOCATION_ORDER`, as the ASI pgd is allocated in
  `asi_init`): the first page is the mm's own full PGD, the second its ASI PGD, whose kernel half
  is copied from the nonsensitive PGD (`asi_init`: `set_pgd(asi->pgd + i,
  asi_global_nonsensitive_pgd[i])` for the kernel half) and whose user half mirrors the mm's on
  every top-level write (`__asi_init_user_pgds`, re-synced on `set_pgd`). CR3 bit 12 picks the
  full or the ASI table, as in Chartre's "PTI with ASI" (2020).
- `asi_enter` on the return to user loads the ASI CR3 with an ASI PCID (the ASI class in bits
  9-10, below PTI's bit 11); a kernel access to memory the ASI tables lack faults and `asi_exit`
  switches to the full tables (the "ASI fault": only page faults cause an exit, Shahid 2022);
  `asi_exit` also runs on demand before a context switch ("mm: asi: Switch to unrestricted
  address space before a context switch"). The L1D flush of `asi_enter` (Shahid 2022: L1D flush /
  MDS clear on asi_enter; Jackman: "taints" decide the flushes) is priced in kaiser.cost.params.

Pageblocks: `pageblock_order` is `HPAGE_PMD_ORDER` = PMD_SHIFT - PAGE_SHIFT = 21 - 12 = 9 on
x86-64 with 4 KiB pages (include/linux/pageblock-flags.h with CONFIG_HUGETLB_PAGE;
arch/x86/include/asm/pgtable_types.h PMD_SHIFT 21), so a pageblock is 512 frames, 2 MiB, and
the ASI direct map of a nonsensitive pageblock is one 2 MiB PMD leaf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from kaiser.linux.asid import CpuTlbState, write_cr3
from kaiser.linux.cea import PERCPU_PAGES
from kaiser.linux.layout import Layout
from kaiser.x86.bits import ADDR_MASK_52, CR3_NOFLUSH, PTE, PTE_PAT_4K
from kaiser.x86.events import EventBuilder
from kaiser.x86.pagetable import Leaf, PageTable, PagingError
from kaiser.x86.physmem import PAGE_SIZE, FrameKind, PhysicalMemory

PAGEBLOCK_ORDER: Final = 9  # pageblock_order = HPAGE_PMD_ORDER on x86-64, 4 KiB pages (see above)
PAGEBLOCK_FRAMES: Final = 1 << PAGEBLOCK_ORDER
PAGEBLOCK_SIZE: Final = PAGEBLOCK_FRAMES * PAGE_SIZE  # 2 MiB
ASI_PCID_SHIFT: Final = 9  # the ASI class index lives in PCID bits 9-10 (Jackman's series, successors.md)
ASI_PCID_MASK: Final = 3 << ASI_PCID_SHIFT
# CHOSEN: the model has one ASI class (a bare-metal process's restricted space), index 1; 0 means
# "no ASI" so that a restricted PCID never equals the kernel's.
ASI_CLASS: Final = 1
ASI_USER_PGTABLE_BIT: Final = 12  # CR3 bit 12 picks the ASI table of the pair (Chartre 2020)
NONSENSITIVE_TAG: Final = "asi nonsensitive"
_LARGE_FLAGS: Final = int(PTE.PAT_LARGE)


def asi_pcid(kernel_pcid: int) -> int:
    """The restricted PCID of an mm: its kernel PCID with the ASI class in bits 9-10."""
    if kernel_pcid & ~0x1FF:
        raise ValueError(f"kernel PCID {kernel_pcid:#x} does not fit below the ASI bits 9-10")
    return kernel_pcid | ASI_CLASS << ASI_PCID_SHIFT


def asi_cr3(kernel_cr3: int, *, pcid: bool) -> int:
    """The ASI CR3 of a PGD pair from its full (kernel) CR3: bit 12 set, and with PCID the ASI
    class in bits 9-10 (bit 63, NOFLUSH, is the caller's to add)."""
    value = kernel_cr3 | 1 << ASI_USER_PGTABLE_BIT
    return value | ASI_CLASS << ASI_PCID_SHIFT if pcid else value


def asi_set_user_pgtbl(asi_pt: PageTable, index: int, value: int) -> int:
    """Mirror a write to the mm's PGD slot `index` into its ASI PGD (`__asi_init_user_pgds` and
    the re-sync on every user-half `set_pgd`): user-half entries land unchanged, and -- unlike
    PTI's `__pti_set_user_pgtbl` -- the full table's copy is not changed either (no NX: the user
    never runs on the ASI pair's full half by design, and ASI does not rely on it faulting)."""
    if index < 256:
        asi_pt.set_entry(asi_pt.root + 8 * index, value, 0)
    return value


def _depth_of_size(pt: PageTable, size: int) -> int:
    for depth, level in enumerate(pt.levels):
        if level.span == size:
            return depth
    raise PagingError(f"no level maps {size:#x}-byte pages")


def _leaf_value(leaf: Leaf, va: int, size: int) -> int:
    """The entry mapping `size` bytes at `va` with `leaf`'s frame offset and rights: equal to the
    leaf when it has that size, else its flags moved to the smaller page (PAT: bit 12 in a large
    leaf, bit 7 in a 4 KiB PTE; SDM Vol. 3A Tables 4-15..4-20)."""
    if size == leaf.size:
        return leaf.entry
    pa = leaf.pa + (va - leaf.va)
    flags = leaf.entry & ~ADDR_MASK_52 & ~int(PTE.PS)
    pat = bool(leaf.entry & _LARGE_FLAGS) if leaf.size > PAGE_SIZE else bool(leaf.entry & PTE_PAT_4K)
    flags &= ~_LARGE_FLAGS
    if size > PAGE_SIZE:
        return pa | flags | int(PTE.PS) | (_LARGE_FLAGS if pat else 0)
    return pa | flags | (int(PTE_PAT_4K) if pat else 0)


def asi_map(src: PageTable, dst: PageTable, start: int, end: int) -> int:
    """`asi_map`: give `dst` (an ASI table) the mappings `src` has in [start, end), in tables of
    its own (never shared), each entry equal to `src`'s; a large `src` page the range cuts is
    mapped at the largest size that fits inside the range. Returns the entries written."""
    written = 0
    for leaf in list(src.leaves(start, end)):
        va, stop = max(leaf.va, start), min(leaf.va + leaf.size, end)
        while va < stop:
            size = next(s for s in (leaf.size, 2 << 20, PAGE_SIZE) if s <= leaf.size and not va % s and va + s <= stop)
            depth = _depth_of_size(dst, size)
            slot = dst.entry_slot(va, depth, create=True)
            assert slot is not None
            value = _leaf_value(leaf, va, size)
            old = dst.mem.read_u64(slot)
            if old & PTE.P and old != value:
                raise PagingError(f"asi_map: {va:#018x} is already mapped differently ({old:#x})")
            dst.set_entry(slot, value, depth)
            written += 1
            va += size
    return written


def asi_clone_range(src: PageTable, dst: PageTable, start: int, end: int) -> int:
    """Share `src`'s upper-level entries covering [start, end) with `dst` (`asi_clone_pgd` /
    `asi_clone_p4d`): at each place the highest entry whose span lies inside the range is copied,
    so later mappings under it are seen by both; entries of a slot the range shares with other
    regions are copied one level down. Returns the entries copied."""
    copied = 0
    addr = start
    while addr < end:
        for depth, level in enumerate(src.levels):
            span = level.span
            base = addr & ~(span - 1)
            slot = src.entry_slot(addr, depth)
            value = src.mem.read_u64(slot) if slot is not None else 0
            if not value & PTE.P:
                addr = min(base + span, end)
                break
            if base >= start and base + span <= end:
                dslot = dst.entry_slot(addr, depth, create=True)
                assert dslot is not None
                dst.set_entry(dslot, value, depth)
                copied += 1
                addr = base + span
                break
            if depth == len(src.levels) - 1 or value & PTE.PS:
                raise PagingError(f"asi_clone_range: a {span:#x}-byte page at {base:#018x} straddles the range")
    return copied


@dataclass
class Pageblock:
    """A nonsensitive pageblock: its first frame and which of its 512 frames are handed out."""

    pa: int
    used: list[bool] = field(default_factory=lambda: [False] * PAGEBLOCK_FRAMES)

    def find(self, count: int) -> int | None:
        run = 0
        for i, taken in enumerate(self.used):
            run = 0 if taken else run + 1
            if run == count:
                return i - count + 1
        return None


@dataclass
class Asi:
    """A booted kernel's ASI: the global nonsensitive PGD and the nonsensitive pageblocks."""

    mem: PhysicalMemory
    layout: Layout
    kernel_pt: PageTable  # init_mm's full tables, the source of every ASI mapping
    pgd: PageTable  # asi_global_nonsensitive_pgd (the init pair's second page)
    percpu: tuple[int, ...]  # each CPU's static per-CPU area (direct-map address)
    pageblocks: dict[int, Pageblock] = field(default_factory=dict)
    generation: int = 0  # bumped by every change of the ASI direct map (for lookup caches)
    shootdowns: int = 0  # pageblocks unmapped (each a TLB shootdown in Linux; not replayed)

    # ---- asi_global_init ---------------------------------------------------------------------
    @classmethod
    def global_init(cls, kpt: PageTable, pgd: PageTable, lay: Layout, percpu: tuple[int, ...]) -> Asi:
        """`asi_global_init()` on the model, `pgd` being the nonsensitive PGD: after PTI's clones
        of the CPU entry area and espfix (`asi_clone_p4d` is `pti_clone_p4d`), map the image, the
        fixmap and each CPU's static per-CPU data (at `percpu`), share vmemmap and vmalloc, and
        give the direct map its tables up front."""
        asi = cls(kpt.mem, lay, kpt, pgd, percpu)
        # The ASI direct map's PMD tables exist from boot (CHOSEN, like the first stack tables:
        # Linux allocates them on demand and never frees them), so process churn does not change
        # the table count; its top-level entries are then copied into every ASI PGD.
        pmd_depth = len(pgd.levels) - 2
        for gib in range(0, lay.ram_size, 1 << 30):
            pgd.entry_slot(lay.page_offset_base + gib, pmd_depth, create=True)
        asi_map(kpt, pgd, lay.kernel_base, lay.kernel_end)  # "Map all kernel text and static data"
        asi_map(kpt, pgd, lay.fixaddr_start, 1 << 64)
        for va in percpu:
            asi_map(kpt, pgd, va, va + percpu_size())
        asi_clone_range(kpt, pgd, lay.vmemmap_base, lay.vmemmap_base + lay.vmemmap_size)
        asi_clone_range(kpt, pgd, lay.vmalloc_base, lay.vmalloc_base + lay.vmalloc_size)
        return asi

    # ---- the page allocator --------------------------------------------------------------------
    def alloc(self, count: int, tag: str, *, sensitive: bool) -> int:
        """`count` contiguous zeroed frames: sensitive ones straight from physical memory (never in
        a nonsensitive pageblock), nonsensitive ones from a nonsensitive pageblock, converting a
        fresh whole pageblock (mapped into the ASI direct map) when none has room."""
        mem = self.mem
        if sensitive:
            return mem.alloc(FrameKind.DATA, tag, count=count)
        if not 1 <= count <= PAGEBLOCK_FRAMES:
            raise ValueError(f"a nonsensitive allocation is 1..{PAGEBLOCK_FRAMES} frames, not {count}")
        for block in self.pageblocks.values():
            first = block.find(count)
            if first is not None:
                break
        else:
            pa = mem.alloc(FrameKind.DATA, NONSENSITIVE_TAG, count=PAGEBLOCK_FRAMES, align=PAGEBLOCK_FRAMES)
            block = self.pageblocks[pa] = Pageblock(pa)
            self._map_pageblock(pa)
            first = 0
        for i in range(first, first + count):
            block.used[i] = True
            mem.write_bytes(block.pa + i * PAGE_SIZE, bytes(PAGE_SIZE))  # zeroed, as alloc's are
        return block.pa + first * PAGE_SIZE

    def free(self, pa: int, count: int) -> None:
        """Give back frames `alloc` handed out; a nonsensitive pageblock left empty is unmapped
        from the ASI direct map and its frames returned."""
        block = self.pageblocks.get(pa & ~(PAGEBLOCK_SIZE - 1))
        if block is None:
            for i in range(count):
                self.mem.free(pa + i * PAGE_SIZE)
            return
        first = (pa - block.pa) // PAGE_SIZE
        for i in range(first, first + count):
            if not block.used[i]:
                raise ValueError(f"free of {block.pa + i * PAGE_SIZE:#x}, which is not allocated")
            block.used[i] = False
        if not any(block.used):
            self._unmap_pageblock(block.pa)
            del self.pageblocks[block.pa]
            for i in range(PAGEBLOCK_FRAMES):
                self.mem.free(block.pa + i * PAGE_SIZE)

    def is_nonsensitive(self, pa: int) -> bool:
        """Is frame `pa` in a nonsensitive pageblock?"""
        return (pa & ~(PAGEBLOCK_SIZE - 1)) in self.pageblocks

    def sensitive_direct_map(self, va: int, pa: int) -> bool:
        """Is `va` a direct-map address of sensitive memory (frame `pa` in no nonsensitive
        pageblock and in no CPU's static per-CPU area)? False for any other kind of address."""
        lay = self.layout
        if not lay.page_offset_base <= va < lay.page_offset_base + lay.direct_map_size:
            return False
        return not self.is_nonsensitive(pa) and not any(p <= va < p + percpu_size() for p in self.percpu)

    def _map_pageblock(self, pa: int) -> None:
        va = self.layout.page_offset_base + pa
        asi_map(self.kernel_pt, self.pgd, va, va + PAGEBLOCK_SIZE)
        self.generation += 1

    def _unmap_pageblock(self, pa: int) -> None:
        """`asi_unmap` of a pageblock: its leaves cleared, the tables kept (they are shared by
        every ASI PGD through the copied top-level entries)."""
        va = self.layout.page_offset_base + pa
        for leaf in list(self.pgd.leaves(va, va + PAGEBLOCK_SIZE)):
            slot = self.pgd.entry_slot(leaf.va, leaf.depth)
            assert slot is not None
            self.pgd.set_entry(slot, 0, leaf.depth)
        self.generation += 1
        self.shootdowns += 1

    # ---- what the ASI tables may map (the audit's ranges) ------------------------------------------
    def allowed_ranges(self) -> list[tuple[int, int, str]]:
        """Kernel-half ranges the ASI tables map besides PTI's CPU entry area, espfix and LDT:
        (start, end, part name)."""
        lay = self.layout
        out = [
            (lay.kernel_base, lay.kernel_end, "asi_image"),
            (lay.fixaddr_start, 1 << 64, "asi_fixmap"),
            (lay.vmemmap_base, lay.vmemmap_base + lay.vmemmap_size, "asi_vmemmap"),
            (lay.vmalloc_base, lay.vmalloc_base + lay.vmalloc_size, "asi_vmalloc"),
        ]
        out += [(va, va + percpu_size(), "asi_percpu") for va in self.percpu]
        out += [
            (lay.page_offset_base + pa, lay.page_offset_base + pa + PAGEBLOCK_SIZE, "asi_nonsensitive")
            for pa in sorted(self.pageblocks)
        ]
        return out


def percpu_size() -> int:
    """Bytes of one CPU's static per-CPU area in the model (kaiser.linux.cea.PERCPU_PAGES)."""
    return PERCPU_PAGES * PAGE_SIZE


class AsiCpu:
    """One CPU's ASI transitions at compile time (`kaiser.linux.entry` emits through it): whether
    the ASI CR3 is loaded, `asi_enter` and `asi_exit`, and whether the ASI tables map an address.

    `asi_enter` writes the ASI CR3 of the loaded mm. With PCID its restricted PCID keeps its TLB
    entries (NOFLUSH) while the mm's ASID slot is as fresh as when the PCID was last filled --
    the kernel PCID's rule (`choose_new_asid`), applied to the PCID derived from it ("mm: asi: Use
    separate PCIDs for restricted address spaces", 2024 series); otherwise the write flushes.
    `asi_exit` writes the full CR3 back (NOFLUSH with PCID: ASI never invalidates the kernel
    PCID; a flushing write without PCID)."""

    def __init__(self, asi: Asi, tlb: CpuTlbState, user_end: int) -> None:
        self.asi = asi
        self.tlb = tlb
        self.user_end = user_end
        self.entered = False
        self._fresh: dict[int, tuple[int, int]] = {}  # ASID -> (ctx_id, tlb_gen) its ASI PCID holds
        self._maps: dict[tuple[int, int], bool] = {}
        self._generation = asi.generation

    def maps(self, asi_pt: PageTable, va: int) -> bool:
        """Do the ASI tables map `va`? The user half always counts as mapped: it mirrors the mm's,
        so a fault there is the same ordinary #PF under either CR3, never an ASI fault."""
        if va < self.user_end:
            return True
        if self._generation != self.asi.generation:
            self._maps.clear()
            self._generation = self.asi.generation
        key = (asi_pt.root, va >> 12)
        hit = self._maps.get(key)
        if hit is None:
            hit = self._maps[key] = asi_pt.lookup(va & ~(PAGE_SIZE - 1)) is not None
        return hit

    def enter(self, out: EventBuilder) -> bool:
        """`asi_enter`: load the ASI CR3 unless it is loaded. Returns whether CR3 was written."""
        if self.entered:
            return False
        s = self.tlb
        value = asi_cr3(s.cr3 & ~CR3_NOFLUSH, pcid=s.pcid)
        if s.pcid:
            slot = s.ctxs[s.loaded_mm_asid]
            state = (slot.ctx_id, slot.tlb_gen)
            if self._fresh.get(s.loaded_mm_asid) == state:
                value |= CR3_NOFLUSH
            self._fresh[s.loaded_mm_asid] = state
        write_cr3(s, out, value)
        self.entered = True
        return True

    def exit(self, out: EventBuilder) -> bool:
        """`asi_exit`: back to the full tables of the loaded mm. Returns whether CR3 was written."""
        if not self.entered:
            return False
        s = self.tlb
        value = s.cr3 & ~(1 << ASI_USER_PGTABLE_BIT)
        if s.pcid:
            value = (value & ~ASI_PCID_MASK) | CR3_NOFLUSH
        write_cr3(s, out, value)
        self.entered = False
        return True
