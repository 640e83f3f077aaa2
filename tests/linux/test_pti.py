"""linux/pti.py on its own: each function edits exactly the level and the flags it names (pti.c).

Unit checks build a kernel/user PGD pair by hand (8 KiB-aligned, user PGD at +4 KiB, linux-kpti.md
§3.1) and compare the entries the functions leave with the kernel entries they clone; the booted
checks look at where each registered clone of a variant landed: shared entries at the named level
(pti_clone_p4d, pti_clone_pgtable PMD/PTE, the LDT's top-level slot), G as the variant says
(4.15 clears RW|G on entry text, 4.17+ sets G on the kernel PMD), private copies private.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaiser.linux import pti
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.layout import VSYSCALL_ADDR
from kaiser.x86.bits import PAGE_KERNEL, PTE, entry_phys
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL, PagingMode
from kaiser.x86.pagetable import PageTable, PagingError
from kaiser.x86.physmem import PAGE_SIZE, FrameKind, PhysicalMemory

MiB = 1 << 20
KVA = 0xFFFFC90000000000  # a kernel-half address, 1 GiB-aligned (vmalloc's default base)
FLAGS = int(PTE.RW | PTE.NX | PTE.A | PTE.D)


def pair(mode: PagingMode = FOUR_LEVEL) -> tuple[PageTable, PageTable]:
    mem = PhysicalMemory(1 << 30)
    kpgd = mem.alloc(FrameKind.PAGE_TABLE, "k", count=2, align=2)
    return PageTable(mem, mode, root=kpgd), PageTable(mem, mode, root=pti.kernel_to_user_pgd(kpgd))


def entry(pt: PageTable, va: int, depth: int) -> int:
    slot = pt.entry_slot(va, depth)
    return pt.mem.read_u64(slot) if slot is not None else 0


def tables_below_root(pt: PageTable) -> set[int]:
    return {table for table, depth in pt.tables() if depth}


@given(st.integers(0, (1 << 30) // PAGE_SIZE - 1))
def test_kernel_to_user_pgd_sets_bit_12_of_an_aligned_pair(pfn: int) -> None:
    pa = pfn * PAGE_SIZE
    if pa % (2 * PAGE_SIZE):
        with pytest.raises(PagingError, match="8 KiB-aligned"):
            pti.kernel_to_user_pgd(pa)
    else:
        assert pti.kernel_to_user_pgd(pa) == pa + PAGE_SIZE


@given(index=st.integers(0, 511), value=st.integers(0, (1 << 64) - 1), nx=st.booleans())
def test_set_user_pgtbl_mirrors_the_user_half_only(index: int, value: int, nx: bool) -> None:
    kpt, upt = pair()
    sentinel = 0x5000 | int(PTE.P)
    upt.mem.write_u64(upt.root + 8 * index, sentinel)
    got = pti.pti_set_user_pgtbl(kpt, upt, index, value, nx=nx)
    mirrored = index < 256 and not value & PTE.SW1  # SW1: _PAGE_NOPTISHADOW
    assert upt.mem.read_u64(upt.root + 8 * index) == (value if mirrored else sentinel)
    if mirrored and value & PTE.P and value & PTE.US:
        assert got == (value | int(PTE.NX) if nx else value & ~int(PTE.US))
    else:
        assert got == value
    assert pti.pgdp_maps_userspace(kpt, index) == (index < 256)


def test_clone_pgd_shares_the_top_level_entry_verbatim() -> None:
    kpt, upt = pair()
    with pytest.raises(PagingError, match="not present"):
        pti.pti_clone_pgd(kpt, upt, KVA)
    kpt.map(KVA, 0x200000, PAGE_SIZE, FLAGS)
    before = tables_below_root(upt)
    pti.pti_clone_pgd(kpt, upt, KVA)
    assert entry(upt, KVA, 0) == entry(kpt, KVA, 0) != 0
    assert tables_below_root(upt) - before == tables_below_root(kpt)  # the kernel's tables, shared
    assert upt.lookup(KVA) == kpt.lookup(KVA)


@pytest.mark.parametrize("mode", [FOUR_LEVEL, FIVE_LEVEL], ids=["4-level", "5-level"])
def test_clone_p4d_shares_the_512g_entry(mode: PagingMode) -> None:
    kpt, upt = pair(mode)
    with pytest.raises(PagingError, match="not present"):
        pti.pti_clone_p4d(kpt, upt, KVA)
    kpt.map(KVA, 0x200000, PAGE_SIZE, FLAGS)
    pti.pti_clone_p4d(kpt, upt, KVA)
    depth = 1 if mode is FIVE_LEVEL else 0
    assert entry(upt, KVA, depth) == entry(kpt, KVA, depth) != 0
    if mode is FIVE_LEVEL:  # the PGD entry above it is the user tree's own
        assert entry_phys(entry(upt, KVA, 0)) != entry_phys(entry(kpt, KVA, 0))
    assert upt.lookup(KVA) == kpt.lookup(KVA)


@pytest.mark.parametrize("set_global", [False, True])
def test_clone_pgtable_pmd_shares_pmds_and_skips_holes(set_global: bool) -> None:
    kpt, upt = pair()
    kpt.map(KVA, 0x400000, 2 * MiB, FLAGS, page_size=PAGE_SIZE)  # a PMD pointing to a PTE table
    kpt.map(KVA + 4 * MiB, 0x800000, 2 * MiB, FLAGS)  # a 2 MiB leaf; [2M, 4M) is a hole
    table_pmd, large_pmd = entry(kpt, KVA, 2), entry(kpt, KVA + 4 * MiB, 2)
    clear = int(PTE.RW)
    assert pti.pti_clone_pgtable(kpt, upt, KVA, KVA + 6 * MiB, "pmd", clear=clear, set_global=set_global) == 2
    assert entry(kpt, KVA, 2) == table_pmd  # G is set on large PMDs only
    assert entry(kpt, KVA + 4 * MiB, 2) == large_pmd | (int(PTE.G) if set_global else 0)
    assert entry(upt, KVA, 2) == table_pmd & ~clear  # the same PTE table
    assert entry(upt, KVA + 4 * MiB, 2) == entry(kpt, KVA + 4 * MiB, 2) & ~clear
    assert entry(upt, KVA + 2 * MiB, 2) == 0
    assert entry(upt, KVA, 1) != entry(kpt, KVA, 1)  # the PUD level above is the user tree's own


@pytest.mark.parametrize("set_global", [False, True])
def test_clone_pgtable_pte_copies_present_ptes_into_user_tables(set_global: bool) -> None:
    kpt, upt = pair()
    kpt.map(KVA, 0x400000, 2 * PAGE_SIZE, FLAGS, page_size=PAGE_SIZE)
    kpt.map(KVA + 3 * PAGE_SIZE, 0x410000, PAGE_SIZE, FLAGS, page_size=PAGE_SIZE)  # page 2 is a hole
    before = [entry(kpt, KVA + n * PAGE_SIZE, 3) for n in range(4)]
    assert pti.pti_clone_pgtable(kpt, upt, KVA, KVA + 4 * PAGE_SIZE, "pte", set_global=set_global) == 3
    g = int(PTE.G) if set_global else 0
    for n in range(4):
        va = KVA + n * PAGE_SIZE
        want = before[n] | g if before[n] else 0
        assert entry(kpt, va, 3) == want and entry(upt, va, 3) == want, n
    assert upt.entry_slot(KVA, 3) != kpt.entry_slot(KVA, 3)  # a private PTE table
    kpt2, upt2 = pair()
    kpt2.map(KVA, 0x400000, PAGE_SIZE, FLAGS, page_size=PAGE_SIZE)
    upt2.map(KVA, 0x500000, PAGE_SIZE, int(PTE.US), page_size=PAGE_SIZE)
    with pytest.raises(PagingError, match="already a user mapping"):
        pti.pti_clone_pgtable(kpt2, upt2, KVA, KVA + PAGE_SIZE, "pte")


@pytest.mark.parametrize("set_global", [False, True])
def test_kaiser_add_mapping_makes_private_copies(set_global: bool) -> None:
    kpt, upt = pair()
    kpt.map(KVA, 0x400000, 2 * MiB, FLAGS | int(PTE.G))  # one large kernel page
    assert pti.kaiser_add_mapping(kpt, upt, KVA + PAGE_SIZE, 3 * PAGE_SIZE, set_global=set_global) == 3
    assert pti.kaiser_add_mapping(kpt, upt, KVA + PAGE_SIZE, PAGE_SIZE) == 0  # already there
    assert not tables_below_root(upt) & tables_below_root(kpt)
    leaves = list(upt.leaves())
    assert [leaf.va for leaf in leaves] == [KVA + n * PAGE_SIZE for n in (1, 2, 3)]
    for leaf in leaves:
        assert leaf.size == PAGE_SIZE and leaf.pa == 0x400000 + (leaf.va - KVA)
        assert int(leaf.entry) & ~0xFFF & ~int(PTE.NX) == leaf.pa
        assert int(leaf.entry) & (0xFFF | int(PTE.NX)) == FLAGS | int(PTE.G) | int(PTE.P)  # kernel's G kept
    with pytest.raises(PagingError, match="not mapped"):
        pti.kaiser_add_mapping(kpt, upt, KVA + 4 * MiB, PAGE_SIZE)
    tables = tables_below_root(upt)
    pti.kaiser_remove_mapping(upt, KVA, 4 * PAGE_SIZE)
    assert list(upt.leaves()) == [] and tables_below_root(upt) == tables  # the tables stay (KAISER v3)


# ---- where each registered clone lands in a booted kernel ---------------------------------------
@pytest.fixture(scope="module", params=[(False, True), (True, True), (False, False)], ids=["4l-pcid", "5l-pcid", "4l"])
def linux(request: pytest.FixtureRequest) -> Kernel:
    la57, pcid = request.param
    # vsyscall=emulate: a vsyscall PTE for pti_setup_vsyscall to clone
    return Kernel.boot(KernelConfig(variant="linux", la57=la57, pcid=pcid, seed=5, vsyscall="emulate"))


def test_linux_clones_at_the_levels_pti_c_names(linux: Kernel) -> None:
    kpt, upt = linux.init.kernel_pt, linux.init.user_pt
    assert upt is not None
    lay = linux.layout
    p4d = 1 if linux.config.la57 else 0
    for va in (lay.cpu_entry_area_base, linux.espfix_va):  # pti_clone_p4d / pti_setup_espfix64
        assert entry(upt, va, p4d) == entry(kpt, va, p4d) != 0
    pmd = len(kpt.levels) - 2
    start, end = lay.entry_text  # pti_clone_entry_text: PMD level, G set on the kernel PMD
    for va in range(start & ~(2 * MiB - 1), end, 2 * MiB):
        assert entry(upt, va, pmd) == entry(kpt, va, pmd) != 0
        assert entry(kpt, va, pmd) & PTE.G
    leaf = len(kpt.levels) - 1
    vsys = entry(kpt, VSYSCALL_ADDR, leaf)  # pti_setup_vsyscall: the PTE, USER on every level above
    assert entry(upt, VSYSCALL_ADDR, leaf) == vsys and vsys & PTE.US
    assert upt.entry_slot(VSYSCALL_ADDR, leaf) != kpt.entry_slot(VSYSCALL_ADDR, leaf)
    for depth in range(leaf):
        assert entry(upt, VSYSCALL_ADDR, depth) & PTE.US and entry(kpt, VSYSCALL_ADDR, depth) & PTE.US
    for cpu in linux.cpus:  # pti_clone_user_shared: a private PTE for cpu_tss_rw, PAGE_KERNEL minus G
        tss = upt.lookup(cpu.tss_va)
        assert tss is not None and tss.pa == cpu.percpu_pa + PAGE_SIZE
        assert int(tss.entry) & (0xFFF | int(PTE.NX)) == int(PAGE_KERNEL & ~PTE.G) | int(PTE.P)
    text = upt.lookup(lay.kernel_base)  # pti_clone_kernel_text: only without PCID
    assert (text is not None) == (not linux.config.pcid)


def test_ldt_slot_shared_with_the_user_pgd(linux: Kernel) -> None:
    task = linux.spawn()
    task.mm.modify_ldt(1)
    pair_ = task.mm.pgd
    assert pair_.user_pt is not None
    base = linux.layout.ldt_base
    assert entry(pair_.user_pt, base, 0) == entry(pair_.kernel_pt, base, 0) != 0
    linux.exit(task)


def test_linux_4_15_entry_text_loses_rw_and_global() -> None:
    kernel = Kernel.boot(KernelConfig(variant="linux-4.15", seed=5))
    kpt, upt = kernel.init.kernel_pt, kernel.init.user_pt
    assert upt is not None
    pmd = len(kpt.levels) - 2
    start, end = kernel.layout.entry_text
    for va in range(start & ~(2 * MiB - 1), end, 2 * MiB):
        k = entry(kpt, va, pmd)
        assert k and not k & PTE.G  # no global pages at all in 4.15
        assert entry(upt, va, pmd) == k & ~int(PTE.RW | PTE.G)
