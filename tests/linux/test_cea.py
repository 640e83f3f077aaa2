"""linux/cea.py page by page against the cited layouts, and against the entries a booted kernel writes.

Expected layouts are written out here from facts/linux-kpti.md (§3.4 and its Dec 2026 correction:
since 5.2, 59 pages, stride 0x3b000, TSS 5 pages, [4K guard, 8K stack] x DF NMI DB MCE VC VC2 and
a top guard with VC/VC2 unmapped outside SEV-ES, debug store at +0x1a000 on Intel, then 32
PAGE_NONE PTEs; 4.18: 43 pages, 44 with the trampoline, TSS 3 pages, 20K of IST stacks + spare),
not derived from the code under test.
"""

from __future__ import annotations

import pytest

from kaiser.linux.cea import DEBUG_BUFFER_PAGES, PAGE_NONE, PERCPU_PAGES, Kind, cea_layout
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.pgtable_types import PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_KERNEL_RX
from kaiser.x86.bits import PTE
from kaiser.x86.physmem import PAGE_SIZE

ALL = [(era, stub, ds) for era in ("modern", "4.15") for stub in (False, True) for ds in (True, False)]


def pages_of(era: str, stub: bool, debug_store: bool = True) -> list[tuple[str, Kind]]:
    """(piece name, kind) of every page of one CPU's area, in order."""
    out: list[tuple[str, Kind]] = []
    for p in cea_layout(era, stub, debug_store).pieces:
        out += [(p.name, p.kind)] * p.pages
    return out


def modern_expected(debug_store: bool) -> list[tuple[str, Kind]]:
    want = [("gdt", Kind.RO), ("entry stack", Kind.RW)] + [("tss", Kind.RO)] * 5
    for i, ist in enumerate(("DF", "NMI", "DB", "MCE", "VC", "VC2")):
        want += [(f"{ist} guard", Kind.GUARD)] + [(f"{ist} stack", Kind.RW if i < 4 else Kind.GUARD)] * 2
    want += [("IST top guard", Kind.GUARD)]
    want += [("debug store", Kind.RW if debug_store else Kind.GUARD)]
    want += [("debug buffers", Kind.NONE if debug_store else Kind.GUARD)] * 32
    return want


@pytest.mark.parametrize("debug_store", [True, False])
def test_modern_layout_page_by_page(debug_store: bool) -> None:
    got = pages_of("modern", False, debug_store)
    assert got == modern_expected(debug_store)
    layout = cea_layout("modern", False, debug_store)
    assert layout.pages == 59 and layout.pages * PAGE_SIZE == 0x3B000
    assert layout.offset("gdt") == 0 and layout.offset("entry stack") == 0x1000 and layout.offset("tss") == 0x2000
    assert layout.offset("debug store") == 0x1A000
    # the IST stacks: 8K each, a 4K guard below, stack tops at 0xa000 + 0x3000 * n
    for n, ist in enumerate(("DF", "NMI", "DB", "MCE")):
        assert layout.offset(f"{ist} guard") == 0x7000 + 0x3000 * n
        assert layout.stack_top(ist) == 0xA000 + 0x3000 * n
    assert layout.trampoline is None


def test_modern_stub_page_follows_the_tss() -> None:
    """Our entry-stub designs: one page after the TSS, where 4.15 put its trampoline."""
    got = pages_of("modern", True)
    assert got[7] == ("trampoline", Kind.STUB)
    assert got[:7] + got[8:] == modern_expected(True)
    assert cea_layout("modern", True).trampoline == 7 * PAGE_SIZE


@pytest.mark.parametrize("stub", [False, True])
def test_4_15_layout_page_by_page(stub: bool) -> None:
    want = [("gdt", Kind.RO), ("entry stack", Kind.RW)] + [("tss", Kind.RO)] * 3
    want += [("trampoline", Kind.STUB)] if stub else []
    want += [("DF stack", Kind.RW), ("NMI stack", Kind.RW)] + [("IST rest", Kind.RW)] * 4
    want += [("debug store", Kind.GUARD)] * DEBUG_BUFFER_PAGES
    assert pages_of("4.15", stub) == want
    layout = cea_layout("4.15", stub)
    assert layout.pages == (44 if stub else 43)
    assert layout.trampoline == (5 * PAGE_SIZE if stub else None)


@pytest.mark.parametrize(("era", "stub", "debug_store"), ALL)
def test_pieces_tile_the_stride_and_backings_are_disjoint(era: str, stub: bool, debug_store: bool) -> None:
    layout = cea_layout(era, stub, debug_store)
    page = 0
    for p in layout.pieces:  # in order, no gap, no overlap: together exactly [0, pages)
        assert p.page == page and p.pages >= 1, p
        page += p.pages
    assert page == layout.pages
    names = [p.name for p in layout.pieces]
    assert len(set(names)) == len(names)
    used: set[int] = set()
    for p in layout.pieces:
        if p.kind in (Kind.RO, Kind.RW):  # aliases of the CPU's per-CPU area, page for page
            assert p.backing is not None and p.backing >= 0 and p.backing + p.pages <= PERCPU_PAGES, p
            pages = set(range(p.backing, p.backing + p.pages))
            assert not pages & used, p
            used |= pages
        elif p.kind is Kind.STUB:  # backed by entry text, not by the per-CPU area
            assert p.backing is None, p


def test_unknown_era_and_unknown_piece() -> None:
    with pytest.raises(ValueError, match="era must be"):
        cea_layout("3.0", False)
    with pytest.raises(KeyError, match="no 'trampoline' in the modern"):
        cea_layout("modern", False).piece("trampoline")


FLAGS = {
    Kind.RO: int(PAGE_KERNEL_RO & ~PTE.G),
    Kind.RW: int(PAGE_KERNEL & ~PTE.G),
    Kind.STUB: int(PAGE_KERNEL_RX & ~PTE.G),
}


@pytest.mark.parametrize(
    ("variant", "vendor"),
    [("linux", "intel"), ("linux", "amd"), ("fixed-trampoline", "intel"), ("linux-4.15", "intel")],
)
def test_booted_entry_area_matches_the_layout(variant: str, vendor: str) -> None:
    """Every page of every CPU's area as the kernel wrote it: mapped pieces present with the
    piece's flags (global under PGE, cea_set_pte()), PAGE_NONE PTEs exactly 0x120, guards absent;
    areas of different CPUs at the stride and disjoint (fixed slots without KASLR)."""
    kernel = Kernel.boot(KernelConfig(variant=variant, vendor=vendor, pti="on", kaslr=False, ncpus=3))
    kpt = kernel.init.kernel_pt
    layout = kernel.cea_layout
    leaf_depth = len(kpt.levels) - 1
    g = int(PTE.G) if kernel._global(True) else 0
    for n, cpu in enumerate(kernel.cpus):
        assert cpu.cea == kernel.layout.cpu_entry_area_base + PAGE_SIZE + n * layout.pages * PAGE_SIZE
        for page, (name, kind) in enumerate(pages_of(layout.era, layout.trampoline is not None, vendor == "intel")):
            va = cpu.cea + page * PAGE_SIZE
            slot = kpt.entry_slot(va, leaf_depth)
            entry = kernel.mem.read_u64(slot) if slot is not None else 0
            leaf = kpt.lookup(va)
            where = f"cpu {n} page {page} ({name})"
            if kind is Kind.NONE:
                assert entry == PAGE_NONE and leaf is None, where
            elif kind is Kind.GUARD:
                assert entry == 0 and leaf is None, where
            else:
                assert leaf is not None and leaf.size == PAGE_SIZE, where
                assert int(leaf.entry) & 0xFFF | (int(leaf.entry) & int(PTE.NX)) == FLAGS[kind] | g | int(PTE.P), where
                if kind is Kind.STUB:
                    assert (
                        leaf.pa == kernel.layout.kernel_phys + kernel.layout.entry_text[0] - kernel.layout.kernel_base
                    )
                else:
                    piece = layout.piece(name)
                    assert piece.backing is not None
                    assert leaf.pa == cpu.percpu_pa + (piece.backing + page - piece.page) * PAGE_SIZE, where
