"""The isolation variants: one registry of data plus a few policy switches, not forks of the code.

Each variant says what the user ("shadow") tables map of the kernel, at which level the mapping is
cloned, which flags the user copy drops, and where `_PAGE_GLOBAL` is kept. Sources are sections of
`shared/facts/linux-kpti.md`; PCID, 4/5-level paging and KASLR are orthogonal machine switches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from kaiser.x86.bits import PTE

# The variant every isolation overhead is measured against (no PTI: Linux with pti=off), named
# once for the cost model, traces, sweeps and reports.
BASELINE: Final = "nopti"


class Level(enum.Enum):
    """The page-table level at which a kernel range is cloned into the user tables (pti.c names)."""

    PGD = "pgd"  # share a whole top-level entry (two-pgd; LDT slot)
    P4D = "p4d"  # pti_clone_p4d(): share a 512 GiB top-level (4-level) / P4D (5-level) entry
    PMD = "pmd"  # pti_clone_pgtable(..., PTI_CLONE_PMD): share 2 MiB PMD entries
    PTE = "pte"  # pti_clone_pgtable(..., PTI_CLONE_PTE) / private 4 KiB copies


class Part(enum.Enum):
    """Kernel pieces a variant may map into the user tables."""

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


class Entry(enum.Enum):
    """Where the SYSCALL entry point (MSR_LSTAR) lives, i.e. what user-mode code must be able to fetch."""

    ENTRY_TEXT = "entry-text"  # entry_SYSCALL_64 in kernel text: at a fixed offset from the KASLR base
    CEA_TRAMPOLINE = "cea-trampoline"  # 4.15-4.19 per-CPU trampoline in the cpu_entry_area
    FIXED_CEA = "fixed-cea"  # ours: all entry/exit stubs at a fixed address in the entry area


class GlobalPolicy(enum.Enum):
    """Where kernel mappings keep `_PAGE_GLOBAL` (§2 notes, §3.3, §3.6, §7.3)."""

    ALL_KERNEL = "all-kernel"  # no isolation: __PAGE_KERNEL has G everywhere
    NONE = "none"  # KAISER RFC and 4.15: no global pages at all
    SHARED_ONLY = "shared-only"  # only what both tables map (the review's request, 4.17+)
    SHARED_AND_TEXT_WITHOUT_PCID = "shared+text-if-no-pcid"  # modern: kernel text too, if no PCID (pti=auto)


@dataclass(frozen=True)
class Clone:
    """One kernel piece mapped into the user tables."""

    part: Part
    level: Level
    clear: int = 0  # bits dropped from the user copy (4.15 entry text: RW|GLOBAL)
    private: bool = False  # private lower-level tables (KAISER RFC) instead of shared ones


@dataclass(frozen=True)
class Variant:
    """An isolation design: data the Linux model reads, plus the few policy switches it needs."""

    name: str
    summary: str
    source: str
    isolating: bool
    clones: tuple[Clone, ...]
    global_policy: GlobalPolicy
    entry: Entry
    era: str = "modern"  # which layout era the variant lives in ("modern" or "4.15")
    # KAISER (IAIK) cleared USER in the kernel copy of user PGD entries; v3 and PTI set NX (§3.2, §7.1).
    kernel_copy_marks_user_nx: bool = True
    # Address Space Isolation (kaiser.linux.asi): the pair's second table is the ASI PGD, the kernel
    # runs on it until an ASI fault, and no PTI CR3 switch happens at entry (successors.md, ASI).
    asi: bool = False

    def clone_for(self, part: Part) -> Clone | None:
        return next((c for c in self.clones if c.part is part), None)

    def maps(self, part: Part) -> bool:
        return self.clone_for(part) is not None


_MODERN_BASE = (
    Clone(Part.CPU_ENTRY_AREA, Level.P4D),
    Clone(Part.ESPFIX, Level.P4D),
    Clone(Part.VSYSCALL, Level.PTE),
    Clone(Part.LDT, Level.PGD),
)

# KAISER as posted (§7.1): the shadow kernel half is private 4 KiB copies, plus every task stack.
_KAISER_CLONES = (
    Clone(Part.ENTRY_TEXT, Level.PTE, private=True),
    Clone(Part.PERCPU_USER_MAPPED, Level.PTE, private=True),
    Clone(Part.CPU_ENTRY_AREA, Level.PTE, private=True),
    Clone(Part.ESPFIX, Level.P4D),
    Clone(Part.TASK_STACKS, Level.PTE, private=True),
    Clone(Part.VSYSCALL, Level.PTE),
    Clone(Part.LDT, Level.PGD),
)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "nopti",
            "no isolation: the kernel is mapped in every process, kernel pages global",
            "linux-kpti.md §1",
            isolating=False,
            clones=(),
            global_policy=GlobalPolicy.ALL_KERNEL,
            entry=Entry.ENTRY_TEXT,
        ),
        Variant(
            "kaiser-rfc",
            "KAISER as first posted: private 4 KiB lower levels for the shadow kernel half, every task "
            "stack mapped, _PAGE_GLOBAL off everywhere",
            "linux-kpti.md §7.1-7.2",
            isolating=True,
            clones=_KAISER_CLONES,
            global_policy=GlobalPolicy.NONE,
            entry=Entry.ENTRY_TEXT,
            era="4.15",
        ),
        Variant(
            "kaiser-global",
            "the review's fix on top of the RFC: global kept on the always-mapped kernel pages",
            "linux-kpti.md §7.3 (Linus (b))",
            isolating=True,
            clones=_KAISER_CLONES,
            global_policy=GlobalPolicy.SHARED_ONLY,
            entry=Entry.ENTRY_TEXT,
            era="4.15",
        ),
        Variant(
            "two-pgd",
            "the review's proposal taken literally: the fixmap's and the entry area's top-level entries "
            "identical in both tables, lower levels shared, trampoline in the entry area, no stacks",
            "seed (Andy), linux-kpti.md §1.2, §7.3",
            isolating=True,
            clones=(Clone(Part.CPU_ENTRY_AREA, Level.PGD), Clone(Part.FIXMAP_PGD, Level.PGD)),
            global_policy=GlobalPolicy.SHARED_ONLY,
            entry=Entry.CEA_TRAMPOLINE,
        ),
        Variant(
            "linux-4.15",
            "PTI as first merged: entry area cloned at P4D with the SYSCALL trampoline, entry text "
            "cloned at PMD with RW and GLOBAL cleared, no global pages",
            "linux-kpti.md §3.6, §4.3",
            isolating=True,
            clones=(
                Clone(Part.CPU_ENTRY_AREA, Level.P4D),
                Clone(Part.ENTRY_TEXT, Level.PMD, clear=int(PTE.RW | PTE.G)),
                Clone(Part.ESPFIX, Level.P4D),
                Clone(Part.VSYSCALL, Level.PTE),
                Clone(Part.LDT, Level.PGD),
            ),
            global_policy=GlobalPolicy.NONE,
            entry=Entry.CEA_TRAMPOLINE,
            era="4.15",
        ),
        Variant(
            "linux",
            "PTI today: entry area and entry-text PMD global, per-CPU TSS page cloned, espfix, "
            "vsyscall, LDT slot; kernel text global only without PCID (pti=auto)",
            "linux-kpti.md §3.3",
            isolating=True,
            clones=(
                *_MODERN_BASE,
                Clone(Part.ENTRY_TEXT, Level.PMD),
                Clone(Part.TSS_PERCPU, Level.PTE),
                Clone(Part.KERNEL_TEXT, Level.PMD),  # only when the global policy allows (no PCID)
            ),
            global_policy=GlobalPolicy.SHARED_AND_TEXT_WITHOUT_PCID,
            entry=Entry.ENTRY_TEXT,
        ),
        Variant(
            "fixed-trampoline",
            "ours: today's linux, but the entry/exit stubs live at a fixed address in the entry area and "
            "the entry-text PMD and the TSS clone are not mapped: the user tables say nothing about KASLR",
            "linux-kpti.md §8.2 (EntryBleed, KSPP #361)",
            isolating=True,
            clones=_MODERN_BASE,
            global_policy=GlobalPolicy.SHARED_ONLY,
            entry=Entry.FIXED_CEA,
        ),
        Variant(
            "asi",
            "Address Space Isolation (2024-26 series): a global nonsensitive kernel half (image, "
            "per-CPU data, vmalloc, nonsensitive pageblocks of the direct map), sensitive memory "
            "never mapped; asi_exit on a fault into sensitive memory, asi_enter on return to user",
            "successors.md ASI (Jackman et al.)",
            isolating=True,
            # asi_clone_p4d of the entry area and espfix (asi_global_init), the LDT slot per mm, the
            # entry text (part of the image asi_global_init maps); the rest is kaiser.linux.asi's.
            # CHOSEN: G only on what both tables map, as PTI keeps it: a global sensitive
            # translation would outlive asi_enter's CR3 write.
            clones=(*_MODERN_BASE, Clone(Part.ENTRY_TEXT, Level.PMD)),
            global_policy=GlobalPolicy.SHARED_ONLY,
            entry=Entry.ENTRY_TEXT,
            asi=True,
        ),
    )
}


class UnknownVariant(ValueError):
    """A variant name that is not in the registry."""


def get_variant(name: str) -> Variant:
    """The registry entry called `name`, or a one-line error listing the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariant(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None
