"""Linux's PTI policy in one file, as `arch/x86/mm/pti.c` is: the parts the user tables may map,
and the functions that clone them, named as in `pti.c`.

**Where is Linux's policy?** Here. `PARTS` is the registry of every kernel piece any design maps
into the user ("shadow") tables: for each, how it is cloned (the levels it may be cloned at,
whether its user copy may keep `_PAGE_GLOBAL`, the clone step `pti_init()` runs), which ranges of
the kernel half it allows in user tables, and which audit class (kaiser.linux.audit_policy's `CLASSES`)
its mappings are. A variant (kaiser.linux.variants) is a tuple of `Clone`s -- a part at a level,
with the bits its user copy drops -- plus a global policy; `pti_init` and `user_allowed_ranges`
run its clones in order over a `PtiScope`, the numbers of one booted kernel that the parts need.

The clone functions take the kernel and the user page table of one PGD pair (the user PGD is the
second 4 KiB page of an 8 KiB-aligned pair, linux-kpti.md §3.1) and edit real entries in physical
memory. Shared clones copy an entry verbatim so both trees point at the same lower-level tables;
private clones (KAISER as first posted, §7.1) build tables of the user tree's own.

A design with tables of its own beyond PTI's (ASI, kaiser.linux.asi) is one more entry of
`kaiser.linux.variants.VARIANTS` whose clones are parts from here; a piece it maps that no part
describes is either a new `Part` member with its `PartSpec` in `PARTS` (tests/linux/test_pti.py
checks that every part has one spec and that its ranges cover what its clone maps) or, as `asi`
does for its nonsensitive pageblocks and per-CPU data, a range of its own that
`Kernel.user_allowed_ranges` appends, classed by kaiser.linux.audit_policy's `_RANGE_CLASS` and judged by
its `_OWN_POLICY` row.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kaiser.linux.layout import PMD_SIZE, VSYSCALL_ADDR, Layout
from kaiser.linux.pgtable_types import PAGE_KERNEL, PAGE_NOPTISHADOW, level_names
from kaiser.x86.bits import PTE
from kaiser.x86.pagetable import PageTable, PagingError
from kaiser.x86.physmem import PAGE_SIZE

PTI_USER_PGTABLE_BIT = 12  # kernel_to_user_pgdp(): the user PGD is the kernel PGD with bit 12 set (§3.1)


def kernel_to_user_pgd(kernel_pgd: int) -> int:
    """Physical address of the user PGD of a pair (bit 12 set)."""
    if kernel_pgd % (2 * PAGE_SIZE):
        raise PagingError(f"kernel PGD {kernel_pgd:#x} is not the 8 KiB-aligned first half of a pair")
    return kernel_pgd | 1 << PTI_USER_PGTABLE_BIT


def pgdp_maps_userspace(pt: PageTable, index: int) -> bool:
    """Is top-level slot `index` in the user half (entries 0..255)? (`pgdp_maps_userspace`, §1.1)"""
    return index < 256


def pti_set_user_pgtbl(kernel_pt: PageTable, user_pt: PageTable, index: int, value: int, *, nx: bool = True) -> int:
    """Mirror a write to the kernel PGD's slot `index` (`__pti_set_user_pgtbl`, §3.2).

    User-half writes land unchanged in the user PGD; the value returned for the kernel PGD has NX
    added when the entry is present and user (so returning to user mode with the kernel CR3 still
    loaded faults on the first instruction fetch). With `nx=False` the kernel copy loses USER
    instead, as the IAIK KAISER patch did (§7.1). Kernel-half writes and writes of an entry with
    `PAGE_NOPTISHADOW` pass through: the user PGD keeps what it had, the kernel copy is unchanged.
    """
    if not pgdp_maps_userspace(kernel_pt, index) or value & PAGE_NOPTISHADOW:
        return value
    user_pt.set_entry(user_pt.root + 8 * index, value, 0)
    if value & PTE.P and value & PTE.US:
        return value | int(PTE.NX) if nx else value & ~int(PTE.US)
    return value


def _depth(pt: PageTable, name: str) -> int:
    if name in (names := level_names(pt.mode)):
        return names.index(name)
    raise AssertionError(f"no {name} level in {pt.mode.name} paging")


def pti_clone_pgd(kernel_pt: PageTable, user_pt: PageTable, va: int) -> None:
    """Share the whole top-level entry covering `va` (two-pgd's two entries; the LDT slot)."""
    index = kernel_pt.levels[0].index(va)
    value = kernel_pt.mem.read_u64(kernel_pt.root + 8 * index)
    if not value & PTE.P:
        raise PagingError(f"pti_clone_pgd: kernel top-level entry for {va:#018x} is not present")
    user_pt.set_entry(user_pt.root + 8 * index, value, 0)


def pti_clone_p4d(kernel_pt: PageTable, user_pt: PageTable, va: int) -> None:
    """Share the 512 GiB entry covering `va` (`pti_clone_p4d`): the PGD entry with 4-level paging,
    a P4D entry under a user-tree PGD entry of its own with 5-level paging."""
    depth = _depth(kernel_pt, "p4d") if len(kernel_pt.levels) == 5 else 0
    kslot = kernel_pt.entry_slot(va, depth)
    if kslot is None or not kernel_pt.mem.read_u64(kslot) & PTE.P:
        raise PagingError(f"pti_clone_p4d: kernel entry for {va:#018x} is not present")
    uslot = user_pt.entry_slot(va, depth, create=True)
    assert uslot is not None
    user_pt.set_entry(uslot, kernel_pt.mem.read_u64(kslot), depth)


def pti_clone_pgtable(
    kernel_pt: PageTable,
    user_pt: PageTable,
    start: int,
    end: int,
    level: str,
    *,
    clear: int = 0,
    set_global: bool = False,
) -> int:
    """Share kernel PMDs (level "pmd") or PTEs (level "pte") covering [start, end) (`pti_clone_pgtable`).

    A large kernel PMD is always cloned whole. `clear` bits are dropped from the user copy (4.15
    cleared RW|GLOBAL on entry text); `set_global` sets G on the kernel entry first (4.17+, when the
    CPU has PGE). Missing kernel PUDs/PMDs are skipped to the next boundary, as pti.c does.
    Returns how many entries were cloned.
    """
    pmd_depth = _depth(kernel_pt, "pmd")
    mem = kernel_pt.mem
    cloned = 0
    addr = start
    while addr < end:
        kpmd_slot = kernel_pt.entry_slot(addr, pmd_depth)
        kpmd = mem.read_u64(kpmd_slot) if kpmd_slot is not None else 0
        if not kpmd & PTE.P:
            addr = (addr | (PMD_SIZE - 1)) + 1  # skip to the next 2 MiB boundary
            continue
        if kpmd & PTE.PS or level == "pmd":
            if set_global and kpmd & PTE.PS:
                kpmd |= int(PTE.G)
                kernel_pt.set_entry(kpmd_slot, kpmd, pmd_depth)  # type: ignore[arg-type]
            uslot = user_pt.entry_slot(addr, pmd_depth, create=True)
            assert uslot is not None
            user_pt.set_entry(uslot, kpmd & ~clear, pmd_depth)
            cloned += 1
            addr = (addr | (PMD_SIZE - 1)) + 1
            continue
        kpte_slot = kernel_pt.entry_slot(addr, len(kernel_pt.levels) - 1)  # the PTE under kpmd
        assert kpte_slot is not None
        kpte = mem.read_u64(kpte_slot)
        if kpte & PTE.P:
            if set_global:
                kpte |= int(PTE.G)
                kernel_pt.set_entry(kpte_slot, kpte, len(kernel_pt.levels) - 1)
            uslot = user_pt.entry_slot(addr, len(user_pt.levels) - 1, create=True)
            assert uslot is not None
            if mem.read_u64(uslot) & PTE.US:
                raise PagingError(f"pti_clone_pgtable: user PTE for {addr:#018x} is already a user mapping")
            user_pt.set_entry(uslot, kpte & ~clear, len(user_pt.levels) - 1)
            cloned += 1
        addr += PAGE_SIZE
    return cloned


def kaiser_add_mapping(
    kernel_pt: PageTable, user_pt: PageTable, start: int, size: int, *, set_global: bool = False
) -> int:
    """Map [start, start+size) into private 4 KiB PTEs of the user tree, copying the kernel's leaf
    flags and frames (the IAIK KAISER patch's `kaiser_add_mapping`, §7.1). Returns pages mapped."""
    mapped = 0
    for va in range(start & ~(PAGE_SIZE - 1), start + size, PAGE_SIZE):
        leaf = kernel_pt.lookup(va)
        if leaf is None:
            raise PagingError(f"kaiser_add_mapping: {va:#018x} is not mapped in the kernel tables")
        pa = leaf.pa + (va - leaf.va)
        flags = int(leaf.entry) & (int(PTE.RW | PTE.NX | PTE.PWT | PTE.PCD | PTE.A | PTE.D | PTE.G))
        if set_global:
            flags |= int(PTE.G)
        if user_pt.lookup(va) is None:
            user_pt.map(va, pa, PAGE_SIZE, flags, page_size=PAGE_SIZE)
            mapped += 1
    return mapped


def kaiser_remove_mapping(user_pt: PageTable, start: int, size: int) -> None:
    """Undo `kaiser_add_mapping` (a task stack freed at exit). Only the leaves are cleared: the
    shadow kernel half's tables are shared by every process and never freed (KAISER v3, §7.4)."""
    leaf_depth = len(user_pt.levels) - 1
    for va in range(start & ~(PAGE_SIZE - 1), start + size, PAGE_SIZE):
        slot = user_pt.entry_slot(va, leaf_depth)
        if slot is not None:
            user_pt.set_entry(slot, 0, leaf_depth)


def set_vsyscall_pgtable_user_bits(pt: PageTable) -> None:
    """OR USER into every upper-level entry above the vsyscall PTE (`set_vsyscall_pgtable_user_bits`,
    vsyscall_64.c, §3.3): done on the kernel tables by `map_vsyscall()` and on the user tables'
    private copy by `pti_setup_vsyscall()`."""
    for depth in range(len(pt.levels) - 1):
        slot = pt.entry_slot(VSYSCALL_ADDR, depth)
        if slot is not None:
            pt.set_entry(slot, pt.mem.read_u64(slot) | int(PTE.US), depth)


# ---- the registry of parts ---------------------------------------------------------------------
class CloneLevel(enum.Enum):
    """The page-table level at which a kernel range is cloned into the user tables (pti.c names)."""

    PGD = "pgd"  # share a whole top-level entry (two-pgd; LDT slot)
    P4D = "p4d"  # pti_clone_p4d(): share a 512 GiB top-level (4-level) / P4D (5-level) entry
    PMD = "pmd"  # pti_clone_pgtable(..., PTI_CLONE_PMD): share 2 MiB PMD entries
    PTE = "pte"  # pti_clone_pgtable(..., PTI_CLONE_PTE) / private 4 KiB copies


class Part(enum.Enum):
    """Kernel pieces a variant may map into the user tables (each has a `PartSpec` in `PARTS`)."""

    CPU_ENTRY_AREA = "cpu_entry_area"  # GDT, IDT alias, TSS, entry and IST stacks, per CPU (§3.4)
    ENTRY_TEXT = "entry_text"  # __entry_text_start..__irqentry_text_end inside kernel text
    TSS_PERCPU = "tss_percpu"  # the per-CPU cpu_tss_rw page at its percpu (direct-map) address (4.20+)
    ESPFIX = "espfix"
    VSYSCALL = "vsyscall"
    LDT = "ldt"  # per-mm LDT alias, when the process has an LDT
    KERNEL_TEXT = "kernel_text"  # _text.._etext/__end_rodata_aligned, only where the policy allows
    FIXMAP_PGD = "fixmap_pgd"  # the whole top-level entry holding fixmap (4-level: image + modules too)
    TASK_STACKS = "task_stacks"  # every task's kernel stack (KAISER as first posted)
    PERCPU_USER_MAPPED = "percpu_user_mapped"  # KAISER's per-CPU user-mapped section (TSS, GDT, scratch)


@dataclass(frozen=True)
class Clone:
    """One kernel piece mapped into the user tables by a variant: at which level, dropping which bits."""

    part: Part
    level: CloneLevel
    clear: int = 0  # bits dropped from the user copy (4.15 entry text: RW|GLOBAL)
    private: bool = False  # private lower-level tables (KAISER RFC) instead of shared ones


@dataclass(frozen=True)
class PtiCpu:
    """What the parts need of one CPU: its entry area and its per-CPU area (kaiser.linux.kernel.Cpu)."""

    cea: int  # virtual base of its struct cpu_entry_area
    cea_pages: int  # pages in it (kaiser.linux.cea)
    percpu_pa: int  # physical base of its per-CPU area
    percpu_va: int  # ... at its direct-map address
    tss_va: int  # cpu_tss_rw at its per-CPU address (4.20+ SYSCALL entry writes it)


@dataclass(frozen=True)
class PtiScope:
    """One booted kernel as the parts see it: its init_mm pair, layout, CPUs and task stacks, and
    the boot choices the policy reads. `Kernel.pti_scope()` makes it."""

    kernel_pt: PageTable
    user_pt: PageTable
    layout: Layout
    cpus: tuple[PtiCpu, ...]
    task_stacks: tuple[tuple[int, int], ...]  # [lo, hi) of every task's kernel stack
    vsyscall_emulate: bool  # vsyscall=emulate: there is a vsyscall PTE to clone (pti_setup_vsyscall)
    kernel_text_shared: bool  # pti_kernel_image_global_ok() (or two-pgd's shared image entry)
    global_bit: int  # G for what both tables map, under the variant's global policy (0 or PTE.G)

    def top_slot(self, va: int) -> tuple[int, int]:
        """[lo, hi) of the top-level entry covering `va`."""
        size = 1 << self.kernel_pt.levels[0].shift
        lo = va & ~(size - 1)
        return lo, lo + size


Ranges = list[tuple[int, int]]
P4D_SPAN: Final = 1 << 39  # what pti_clone_p4d() shares: one 512 GiB entry (P4D_SHIFT 39, §1.2)
# KAISER's per-CPU user-mapped section, in the model 5 pages a CPU from its per-CPU base (CHOSEN:
# the TSS, the GDT page and the scratch slot the RFC mapped, §7.1, in our percpu layout, kaiser.linux.cea).
KAISER_PERCPU_USER_PAGES: Final = 5


@dataclass(frozen=True)
class PartSpec:
    """A part of the policy: how `pti_init()` clones it, which ranges it allows, its audit class.

    `audit_class` names the model audit's class for mappings inside its ranges when the layout's
    regions cannot (None: the region's class). `dump_classes` are the classes its mappings can show
    in a dump audited without the model (a dump alone cannot tell a lone KAISER per-CPU page from a
    TSS clone; two-pgd's shared top-level entry holds whole regions): a variant's audit policy is
    the union over its parts. `keeps_global`: the user copy keeps `_PAGE_GLOBAL` where the variant's
    global policy keeps it on what both tables map (TSS clone and LDT alias are never global).
    `at_boot`: `pti_init` clones it; task stacks are mapped at fork, the LDT per mm (map_ldt_struct).
    `pcid_off_only`: allowed only without PCID (`pti_kernel_image_global_ok()`, §3.3)."""

    part: Part
    source: str
    levels: frozenset[CloneLevel]
    dump_classes: frozenset[str]
    keeps_global: bool
    clone: Callable[[PtiScope, Clone], None]
    ranges: Callable[[PtiScope, Clone], Ranges]
    audit_class: str | None = None
    at_boot: bool = True
    pcid_off_only: bool = False

    @property
    def report_name(self) -> str:
        """How audit reports name its ranges: the audit class, else the part's name."""
        return self.audit_class or self.part.value


def _g(scope: PtiScope, part: Part) -> int:
    return scope.global_bit if PARTS[part].keeps_global else 0


def _clone_cea(scope: PtiScope, clone: Clone) -> None:
    """`pti_clone_p4d(CPU_ENTRY_AREA_BASE)` (pti_setup_espfix64's sibling in pti_init); two-pgd
    shares the whole top-level entry; the RFC copies the RO IDT page and every CPU's area 4 KiB by
    4 KiB into tables of its own (§7.1)."""
    kpt, upt, base = scope.kernel_pt, scope.user_pt, scope.layout.cpu_entry_area_base
    if clone.private:
        g = bool(_g(scope, clone.part))
        kaiser_add_mapping(kpt, upt, base, PAGE_SIZE, set_global=g)
        for cpu in scope.cpus:
            for leaf in list(kpt.leaves(cpu.cea, cpu.cea + cpu.cea_pages * PAGE_SIZE)):
                kaiser_add_mapping(kpt, upt, leaf.va, leaf.size, set_global=g)
    elif clone.level is CloneLevel.PGD:
        pti_clone_pgd(kpt, upt, base)
    else:
        pti_clone_p4d(kpt, upt, base)


def _ranges_cea(scope: PtiScope, clone: Clone) -> Ranges:
    base = scope.layout.cpu_entry_area_base
    return [scope.top_slot(base) if clone.level is CloneLevel.PGD else (base, base + P4D_SPAN)]


def _clone_espfix(scope: PtiScope, clone: Clone) -> None:
    """`pti_setup_espfix64()`: the espfix P4D entry, shared."""
    pti_clone_p4d(scope.kernel_pt, scope.user_pt, scope.layout.espfix_base)


def _ranges_espfix(scope: PtiScope, clone: Clone) -> Ranges:
    return [(scope.layout.espfix_base, scope.layout.espfix_base + P4D_SPAN)]


def _clone_entry_text(scope: PtiScope, clone: Clone) -> None:
    """`pti_clone_entry_text()`: the PMDs covering the entry text, G set on the kernel PMD when the
    policy keeps it (4.17+); 4.15 clears RW|G on the user copy; the RFC copies it page by page."""
    start, end = scope.layout.entry_text
    g = bool(_g(scope, clone.part))
    if clone.private:
        kaiser_add_mapping(scope.kernel_pt, scope.user_pt, start, end - start, set_global=g)
    else:
        pti_clone_pgtable(scope.kernel_pt, scope.user_pt, start, end, "pmd", clear=clone.clear, set_global=g)


def _ranges_entry_text(scope: PtiScope, clone: Clone) -> Ranges:
    lo, hi = scope.layout.entry_text
    if clone.level is CloneLevel.PMD:
        lo, hi = lo & ~(PMD_SIZE - 1), -(-hi // PMD_SIZE) * PMD_SIZE
    return [(lo, hi)]


def _clone_tss(scope: PtiScope, clone: Clone) -> None:
    """`pti_clone_user_shared()`: each CPU's cpu_tss_rw page, a private PTE, PAGE_KERNEL minus G."""
    flags = int(PAGE_KERNEL & ~PTE.G) | _g(scope, clone.part)
    for cpu in scope.cpus:
        scope.user_pt.map(cpu.tss_va, cpu.percpu_pa + PAGE_SIZE, PAGE_SIZE, flags, page_size=PAGE_SIZE)


def _ranges_tss(scope: PtiScope, clone: Clone) -> Ranges:
    return [(cpu.tss_va, cpu.tss_va + PAGE_SIZE) for cpu in scope.cpus]


def _clone_vsyscall(scope: PtiScope, clone: Clone) -> None:
    """`pti_setup_vsyscall()`: the vsyscall PTE, USER on the levels above; nothing to clone when
    there is no PTE (vsyscall=xonly or none)."""
    if scope.vsyscall_emulate:
        pti_clone_pgtable(scope.kernel_pt, scope.user_pt, VSYSCALL_ADDR, VSYSCALL_ADDR + PAGE_SIZE, "pte")
        set_vsyscall_pgtable_user_bits(scope.user_pt)


def _ranges_vsyscall(scope: PtiScope, clone: Clone) -> Ranges:
    return [(VSYSCALL_ADDR, VSYSCALL_ADDR + PAGE_SIZE)] if scope.vsyscall_emulate else []


def _clone_nothing_at_boot(scope: PtiScope, clone: Clone) -> None:
    """Cloned later: the LDT per mm (`map_ldt_struct`), task stacks at fork (the RFC)."""


def _ranges_ldt(scope: PtiScope, clone: Clone) -> Ranges:
    return [(scope.layout.ldt_base, scope.layout.ldt_end)]


def _clone_kernel_text(scope: PtiScope, clone: Clone) -> None:
    """`pti_clone_kernel_text()`: _text up to the data, at PMD level, only when the image may be
    global (`pti_kernel_image_global_ok()`, §3.3)."""
    if scope.kernel_text_shared:
        lay = scope.layout
        g = bool(_g(scope, clone.part))
        pti_clone_pgtable(
            scope.kernel_pt, scope.user_pt, lay.kernel_base, lay.section("data").start, "pmd", set_global=g
        )


def _ranges_kernel_text(scope: PtiScope, clone: Clone) -> Ranges:
    lay = scope.layout
    return [(lay.kernel_base, lay.section("data").start)] if scope.kernel_text_shared else []


def _clone_fixmap_pgd(scope: PtiScope, clone: Clone) -> None:
    """two-pgd: the whole top-level entry holding the fixmap, shared."""
    pti_clone_pgd(scope.kernel_pt, scope.user_pt, scope.layout.fixaddr_start)


def _ranges_fixmap_pgd(scope: PtiScope, clone: Clone) -> Ranges:
    return [scope.top_slot(scope.layout.fixaddr_start)]


def _ranges_task_stacks(scope: PtiScope, clone: Clone) -> Ranges:
    return list(scope.task_stacks)


def _clone_percpu_user_mapped(scope: PtiScope, clone: Clone) -> None:
    """KAISER's user-mapped per-CPU section, at its per-CPU address, private 4 KiB copies (§7.1)."""
    g = bool(_g(scope, clone.part))
    for cpu in scope.cpus:
        kaiser_add_mapping(
            scope.kernel_pt, scope.user_pt, cpu.percpu_va, KAISER_PERCPU_USER_PAGES * PAGE_SIZE, set_global=g
        )


def _ranges_percpu_user_mapped(scope: PtiScope, clone: Clone) -> Ranges:
    return [(cpu.percpu_va, cpu.percpu_va + KAISER_PERCPU_USER_PAGES * PAGE_SIZE) for cpu in scope.cpus]


_ALL_LEVELS: Final = frozenset(CloneLevel)
# What two-pgd's shared fixmap entry holds (4-level: image, modules, fixmap, vsyscall; with 5-level
# slot 511 holds espfix and EFI too) -- the classes of audit_policy.py's CLASSES under it (DESIGN.md).
_TOP_SLOT_CLASSES: Final = frozenset({
    "entry_text", "kernel_text", "kernel_data", "kernel_image", "modules", "fixmap", "vsyscall", "espfix", "efi",
    "hole",
})  # fmt: skip

PARTS: Final[dict[Part, PartSpec]] = {
    s.part: s
    for s in (
        PartSpec(Part.CPU_ENTRY_AREA, "pti_clone_p4d(CPU_ENTRY_AREA_BASE), §3.3-3.4; RFC §7.1",
                 _ALL_LEVELS - {CloneLevel.PMD}, frozenset({"cpu_entry_area"}), True, _clone_cea, _ranges_cea),
        PartSpec(Part.ENTRY_TEXT, "pti_clone_entry_text(), §3.3; 4.15 §3.6; RFC §7.1",
                 frozenset({CloneLevel.PMD, CloneLevel.PTE}), frozenset({"entry_text"}), True, _clone_entry_text,
                 _ranges_entry_text, audit_class="entry_text"),
        PartSpec(Part.TSS_PERCPU, "pti_clone_user_shared(), 4.20+, §3.3",
                 frozenset({CloneLevel.PTE}), frozenset({"tss_percpu"}), False, _clone_tss, _ranges_tss,
                 audit_class="tss_percpu"),
        PartSpec(Part.ESPFIX, "pti_setup_espfix64(), §3.3",
                 frozenset({CloneLevel.P4D}), frozenset({"espfix"}), True, _clone_espfix, _ranges_espfix),
        PartSpec(Part.VSYSCALL, "pti_setup_vsyscall(), vsyscall=emulate only, §3.3",
                 frozenset({CloneLevel.PTE}), frozenset({"vsyscall"}), True, _clone_vsyscall, _ranges_vsyscall),
        PartSpec(Part.LDT, "map_ldt_struct(): the LDT slot's top-level entry, per mm, §3.3, §7.5",
                 frozenset({CloneLevel.PGD}), frozenset({"ldt"}), False, _clone_nothing_at_boot, _ranges_ldt,
                 at_boot=False),
        PartSpec(Part.KERNEL_TEXT, "pti_clone_kernel_text(), no PCID and pti=auto only, §3.3",
                 frozenset({CloneLevel.PMD}), frozenset({"kernel_text"}), True, _clone_kernel_text,
                 _ranges_kernel_text, audit_class="kernel_text", pcid_off_only=True),
        PartSpec(Part.FIXMAP_PGD, "two-pgd: the fixmap's whole top-level entry (seed, §1.2, §7.3)",
                 frozenset({CloneLevel.PGD}), _TOP_SLOT_CLASSES, True, _clone_fixmap_pgd, _ranges_fixmap_pgd),
        PartSpec(Part.TASK_STACKS, "KAISER RFC: every task's kernel stack, mapped at fork, §7.1",
                 frozenset({CloneLevel.PTE}), frozenset({"task_stack"}), False, _clone_nothing_at_boot,
                 _ranges_task_stacks, audit_class="task_stack", at_boot=False),
        PartSpec(Part.PERCPU_USER_MAPPED, "KAISER RFC: the per-CPU user-mapped section, §7.1",
                 frozenset({CloneLevel.PTE}), frozenset({"percpu", "tss_percpu"}), True, _clone_percpu_user_mapped,
                 _ranges_percpu_user_mapped, audit_class="percpu"),
    )
}  # fmt: skip
_BY_NAME: Final = {part.value: spec for part, spec in PARTS.items()}


def part_named(name: str) -> PartSpec | None:
    """The spec of the part called `name` (a `Part` value), None for anything else."""
    return _BY_NAME.get(name)


def pti_init(scope: PtiScope, clones: tuple[Clone, ...]) -> None:
    """`pti_init()` + `pti_finalize()` for a variant's clones, in their order (§3.3; §7.1 for the
    private RFC copies)."""
    for clone in clones:
        PARTS[clone.part].clone(scope, clone)


def user_allowed_ranges(scope: PtiScope, clones: tuple[Clone, ...]) -> list[tuple[int, int, str]]:
    """Kernel-half ranges the clones may map in user tables: (start, end, part name), in order."""
    return [(lo, hi, clone.part.value) for clone in clones for lo, hi in PARTS[clone.part].ranges(scope, clone)]
