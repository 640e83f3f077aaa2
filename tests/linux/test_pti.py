"""linux/pti.py on its own: each function edits exactly the level and the flags it names (pti.c).

Unit checks build a kernel/user PGD pair by hand (8 KiB-aligned, user PGD at +4 KiB, linux-kpti.md
§3.1) and compare the entries the functions leave with the kernel entries they clone; the booted
checks look at where each registered clone of a variant landed: shared entries at the named level
(pti_clone_p4d, pti_clone_pgtable PMD/PTE, the LDT's top-level slot), G as the variant says
(4.15 clears RW|G on entry text, 4.17+ sets G on the kernel PMD), private copies private. The
registry checks: every part has one spec; each booted part's ranges cover what its clone maps and
hold something; G only where the part keeps it; derived variants drop exactly what they name;
`booted_variant` is `pti_check_boottime_disable()` and `KernelConfig.isolates` agrees with it.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaiser.linux import pti
from kaiser.linux.audit_policy import CLASSES
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.layout import VSYSCALL_ADDR
from kaiser.linux.pgtable_types import PAGE_KERNEL, PAGE_NOPTISHADOW
from kaiser.linux.variants import (
    VARIANTS,
    Clone,
    CloneLevel,
    GlobalPolicy,
    Part,
    Variant,
    booted_variant,
    derive_variant,
    get_variant,
    register_variant,
)
from kaiser.x86.bits import PTE, entry_phys
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
    mirrored = index < 256 and not value & (1 << 58)  # bit 58: _PAGE_NOPTISHADOW (pgtable_types.h)
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
    u, k = upt.lookup(KVA), kpt.lookup(KVA)
    assert u is not None and k is not None
    assert (u.va, u.size, u.entry, u.depth) == (k.va, k.size, k.entry, k.depth)
    assert u.above[depth:] == k.above[depth:]  # the shared entry and every entry below it


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


# ---- the registry of parts (issue 13 item 1: Linux's policy in one place) -----------------------

ISOLATING = [name for name, v in VARIANTS.items() if v.isolating and not getattr(v, "asi", False)]


def test_every_part_has_one_spec_naming_real_audit_classes() -> None:
    assert set(pti.PARTS) == set(Part)
    for part, spec in pti.PARTS.items():
        assert spec.part is part and pti.part_named(part.value) is spec
        assert spec.levels and spec.dump_classes <= set(CLASSES), spec
        assert spec.audit_class is None or spec.audit_class in spec.dump_classes, spec
        assert spec.report_name in (spec.audit_class, part.value)
    assert pti.part_named("no such part") is None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_clone_parts_only_at_levels_their_spec_allows(name: str) -> None:
    for clone in VARIANTS[name].clones:
        assert clone.level in pti.PARTS[clone.part].levels, clone


def test_register_variant_refuses_duplicates_and_impossible_levels() -> None:
    linux = get_variant("linux")
    with pytest.raises(ValueError, match="already registered"):
        register_variant(linux)
    bad = derive_variant("linux", "x-bad-level", summary="s", source="test")
    bad = Variant(**{**bad.__dict__, "clones": (Clone(Part.ESPFIX, CloneLevel.PTE),)})
    with pytest.raises(ValueError, match="cannot be cloned at pte"):
        register_variant(bad)
    assert "x-bad-level" not in VARIANTS


@given(base=st.sampled_from(list(VARIANTS)), drop=st.sets(st.sampled_from(list(Part))),
       policy=st.none() | st.sampled_from(list(GlobalPolicy)))  # fmt: skip
def test_derive_variant_drops_exactly_the_parts_named(base: str, drop: set[Part], policy: GlobalPolicy | None) -> None:
    parent = get_variant(base)
    v = derive_variant(base, "x-derived", summary="s", source="test", without=drop, global_policy=policy)
    assert v.clones == tuple(c for c in parent.clones if c.part not in drop)
    assert v.global_policy is (policy or parent.global_policy)
    assert v.registered_name == base and parent.registered_name == base
    assert "x-derived" not in VARIANTS


@given(name=st.sampled_from(list(VARIANTS)), pti_mode=st.sampled_from(["auto", "on"]),
       vendor=st.sampled_from(["intel", "amd"]))  # fmt: skip
def test_booted_variant_is_pti_check_boottime_disable(name: str, pti_mode: str, vendor: str) -> None:
    v = get_variant(name)
    got = booted_variant(v, pti=pti_mode, vendor=vendor)
    # pti=auto leaves PTI off on a CPU without X86_BUG_CPU_MELTDOWN (AMD); pti=on always isolates,
    # also on Meltdown-immune hardware (lass, fred: linux, FRED turned off)
    if v.isolating and pti_mode == "auto" and vendor == "amd":
        assert got is VARIANTS["nopti"]
    elif v.meltdown_immune and pti_mode == "on":
        assert got is VARIANTS["linux"]
    else:
        assert got is v
    assert KernelConfig(variant=name, pti=pti_mode, vendor=vendor).isolates == got.isolating


@pytest.fixture(scope="module", params=[(n, pcid) for n in ISOLATING for pcid in (True, False)],
                ids=lambda p: f"{p[0]}-{'pcid' if p[1] else 'nopcid'}")  # fmt: skip
def booted(request: pytest.FixtureRequest) -> Kernel:
    name, pcid = request.param
    kernel = Kernel.boot(KernelConfig(variant=name, pcid=pcid, seed=11, vsyscall="emulate"))
    task = kernel.spawn()
    task.mm.modify_ldt(1)
    return kernel


def _user_kernel_leaves(kernel: Kernel) -> list[tuple[int, int, int]]:
    task = next(iter(kernel.tasks.values()))
    upt = task.mm.pgd.user_pt
    assert upt is not None
    start = kernel.layout.kernel_start
    return [(leaf.va, leaf.va + leaf.size, int(leaf.entry)) for leaf in upt.leaves(start, once=True)]


def test_each_parts_ranges_cover_what_its_clone_maps(booted: Kernel) -> None:
    ranges = booted.user_allowed_ranges()
    for lo, hi, _ in _user_kernel_leaves(booted):
        assert any(a <= lo and hi <= b for a, b, _ in ranges), f"{lo:#x}-{hi:#x} outside every part's ranges"
    for clone in booted.variant.clones:  # and each part cloned at boot maps something in its ranges
        spec = pti.PARTS[clone.part]
        own = [(a, b) for a, b, name in ranges if name == clone.part.value]
        if own and clone.part is not Part.TASK_STACKS:
            assert any(a < hi and lo < b for lo, hi, _ in _user_kernel_leaves(booted) for a, b in own), spec.part


def test_global_bit_only_where_the_part_keeps_it(booted: Kernel) -> None:
    policy = booted.variant.global_policy
    ranges = booted.user_allowed_ranges()
    for lo, hi, value in _user_kernel_leaves(booted):
        if not value & PTE.G:
            continue
        assert policy not in (GlobalPolicy.NONE, GlobalPolicy.ALL_KERNEL), f"G at {lo:#x} under {policy}"
        owners = [pti.part_named(name) for a, b, name in ranges if a <= lo and hi <= b]
        assert any(spec is not None and spec.keeps_global for spec in owners), f"G at {lo:#x}: {owners}"


def test_audit_classes_are_the_union_of_the_parts(booted: Kernel) -> None:
    allowed, glb = booted.variant.audit_classes(pcid=booted.config.pcid)
    want: set[str] = set()
    for clone in booted.variant.clones:
        spec = pti.PARTS[clone.part]
        if not (spec.pcid_off_only and booted.config.pcid):
            want |= spec.dump_classes
    assert allowed == want and glb <= allowed
    assert (not glb) == (booted.variant.global_policy is GlobalPolicy.NONE)


# ---- _PAGE_NOPTISHADOW in the mirroring of a process's top-level writes -------------------------
def test_noptishadow_is_bit_58() -> None:
    assert PAGE_NOPTISHADOW == 1 << 58  # _PAGE_BIT_SOFTW5 on x86-64 (d0ceea662d45)


@pytest.fixture(scope="module")
def linux_pcid() -> Kernel:
    return Kernel.boot(KernelConfig(variant="linux", seed=3))


@given(
    writes=st.lists(
        st.tuples(st.integers(0, 255), st.integers(1, (1 << 30) // PAGE_SIZE - 1), st.booleans(), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_user_half_writes_mirror_unless_noptishadow(
    linux_pcid: Kernel, writes: list[tuple[int, int, bool, bool]]
) -> None:
    """Through a process's PGD pair (`new_pgd`'s hook, `__pti_set_user_pgtbl`): every user-half
    top-level write lands in the user PGD as written and in the kernel PGD with NX added when it is
    present and user -- except a write carrying _PAGE_NOPTISHADOW, which the user PGD never sees
    and which the kernel PGD stores unchanged."""
    task = linux_pcid.spawn()
    kpt, upt = task.mm.pgd.kernel_pt, task.mm.pgd.user_pt
    assert upt is not None
    mem = kpt.mem
    in_use = {i for i in range(256) if mem.read_u64(kpt.root + 8 * i)}  # the process's own slots stay
    writes = [w for w in writes if w[0] not in in_use]
    try:
        for index, pfn, user, shadowless in writes:
            before = mem.read_u64(upt.root + 8 * index)
            value = pfn << 12 | int(PTE.P | PTE.RW) | (int(PTE.US) if user else 0)
            value |= PAGE_NOPTISHADOW if shadowless else 0
            kpt.set_entry(kpt.root + 8 * index, value, 0)
            kval, uval = mem.read_u64(kpt.root + 8 * index), mem.read_u64(upt.root + 8 * index)
            if shadowless:
                assert (kval, uval) == (value, before)
            else:
                assert uval == value and kval == (value | int(PTE.NX) if user else value)
    finally:  # leave the slots empty again so the process can exit
        for index, *_ in writes:
            kpt.set_entry(kpt.root + 8 * index, 0, 0)
        linux_pcid.exit(task)
