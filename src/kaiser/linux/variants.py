"""The isolation variants: one registry of designs composed of PTI's parts, not forks of the code.

**Where is a variant?** Here. Each variant is a tuple of `Clone`s -- parts of the PTI policy
registry (`kaiser.linux.pti.PARTS`: how each is cloned, which ranges it allows, its audit class),
at a level, with the bits the user copy drops -- plus where `_PAGE_GLOBAL` is kept and where the
SYSCALL entry point lives. Sources are sections of `shared/facts/linux-kpti.md`; PCID, 4/5-level
paging, KASLR and `pti=on|auto` are orthogonal machine switches (kaiser.linux.kernel.KernelConfig).

Derived and deliberately broken variants (a registered design minus some parts, or with another
global policy: the cost model's global-page kernels, `kaiser run`'s broken variant) come from
`derive_variant`, never from editing a clone list elsewhere. A new design registers with
`register_variant`. `asi`'s entry is listed below with the others: its mechanism lives in
kaiser.linux.asi (which the kernel calls through `Variant.asi`), and the registry must be complete
without importing the module that implements a design (that import would close a cycle).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from kaiser.choices import BASELINE
from kaiser.linux.pti import PARTS, Clone, CloneLevel, Part
from kaiser.x86.bits import PTE

__all__ = [
    "BASELINE",
    "VARIANTS",
    "Clone",
    "Delivery",
    "Entry",
    "GlobalPolicy",
    "CloneLevel",
    "Part",
    "UnknownVariant",
    "Variant",
    "booted_variant",
    "derive_variant",
    "get_variant",
    "register_variant",
]

# BASELINE, the variant every isolation overhead is measured against (no PTI: Linux with pti=off),
# is named once, in kaiser/choices.py, for the cost model, traces, sweeps, reports and the CLI.


class Entry(enum.Enum):
    """Where the SYSCALL entry point (MSR_LSTAR) lives, i.e. what user-mode code must be able to fetch."""

    ENTRY_TEXT = "entry-text"  # entry_SYSCALL_64 in kernel text: at a fixed offset from the KASLR base
    CEA_TRAMPOLINE = "cea-trampoline"  # 4.15-4.19 per-CPU trampoline in the cpu_entry_area
    FIXED_CEA = "fixed-cea"  # ours: all entry/exit stubs at a fixed address in the entry area


class Delivery(enum.Enum):
    """How the CPU delivers events (exceptions, interrupts, SYSCALL) to the kernel."""

    IDT = "idt"  # the IDT's gates, IST stacks from the TSS, SYSCALL through MSR_LSTAR (SDM Vol. 3A ch. 6)
    # FRED (arch/x86/kernel/fred.c, entry_64_fred.S): every event from user mode at IA32_FRED_CONFIG's
    # entry point on stack level 0 (the task stack, FRED_RSP0), from kernel mode at +256; NMI, #DB,
    # #MC and #DF in the kernel on stack levels 2, 1, 2, 3 (FRED_RSP1..3 = the CEA's DB, NMI, DF
    # stacks); no IDT read, no TSS read, no IST, GS swapped by the CPU, ERETU/ERETS to return.
    FRED = "fred"


class GlobalPolicy(enum.Enum):
    """Where kernel mappings keep `_PAGE_GLOBAL` (§2 notes, §3.3, §3.6, §7.3)."""

    ALL_KERNEL = "all-kernel"  # no isolation: __PAGE_KERNEL has G everywhere
    NONE = "none"  # KAISER RFC and 4.15: no global pages at all
    SHARED_ONLY = "shared-only"  # only what both tables map (the review's request, 4.17+)
    SHARED_AND_TEXT_WITHOUT_PCID = "shared+text-if-no-pcid"  # modern: kernel text too, if no PCID (pti=auto)


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
    derived_from: str = ""  # the registered variant a `derive_variant` design was made from
    # Hardware the design assumes: no X86_BUG_CPU_MELTDOWN (pti=auto leaves PTI off; pti=on forces
    # it: `booted_variant`), a CPU with LASS (the kernel sets CR4.LASS: KernelConfig.lass_active),
    # FRED event delivery.
    meltdown_immune: bool = False
    lass_cpu: bool = False
    delivery: Delivery = Delivery.IDT

    def clone_for(self, part: Part) -> Clone | None:
        """The clone of `part`, if the variant maps it."""
        return next((c for c in self.clones if c.part is part), None)

    def maps(self, part: Part) -> bool:
        """Does the variant map `part` into its user tables?"""
        return self.clone_for(part) is not None

    @property
    def registered_name(self) -> str:
        """The registry name a `KernelConfig` takes for it: its own, or the one it was derived from."""
        return self.derived_from or self.name

    def audit_classes(self, *, pcid: bool) -> tuple[frozenset[str], frozenset[str]]:
        """(classes its user tables may show, classes that may be global there): the union of its
        parts' `dump_classes`, and of those whose user copy keeps G under the global policy. A
        `pcid_off_only` part (kernel text) counts only without PCID (§3.3)."""
        allowed: set[str] = set()
        glb: set[str] = set()
        keeps = self.global_policy not in (GlobalPolicy.NONE, GlobalPolicy.ALL_KERNEL)
        for clone in self.clones:
            spec = PARTS[clone.part]
            if spec.pcid_off_only and pcid:
                continue
            allowed |= spec.dump_classes
            if keeps and spec.keeps_global:
                glb |= spec.dump_classes
        return frozenset(allowed), frozenset(glb)


_MODERN_BASE = (
    Clone(Part.CPU_ENTRY_AREA, CloneLevel.P4D),
    Clone(Part.ESPFIX, CloneLevel.P4D),
    Clone(Part.VSYSCALL, CloneLevel.PTE),
    Clone(Part.LDT, CloneLevel.PGD),
)

# KAISER as posted (§7.1): the shadow kernel half is private 4 KiB copies, plus every task stack.
_KAISER_CLONES = (
    Clone(Part.ENTRY_TEXT, CloneLevel.PTE, private=True),
    Clone(Part.PERCPU_USER_MAPPED, CloneLevel.PTE, private=True),
    Clone(Part.CPU_ENTRY_AREA, CloneLevel.PTE, private=True),
    Clone(Part.ESPFIX, CloneLevel.P4D),
    Clone(Part.TASK_STACKS, CloneLevel.PTE, private=True),
    Clone(Part.VSYSCALL, CloneLevel.PTE),
    Clone(Part.LDT, CloneLevel.PGD),
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
            clones=(Clone(Part.CPU_ENTRY_AREA, CloneLevel.PGD), Clone(Part.FIXMAP_PGD, CloneLevel.PGD)),
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
                Clone(Part.CPU_ENTRY_AREA, CloneLevel.P4D),
                Clone(Part.ENTRY_TEXT, CloneLevel.PMD, clear=int(PTE.RW | PTE.G)),
                Clone(Part.ESPFIX, CloneLevel.P4D),
                Clone(Part.VSYSCALL, CloneLevel.PTE),
                Clone(Part.LDT, CloneLevel.PGD),
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
                Clone(Part.ENTRY_TEXT, CloneLevel.PMD),
                Clone(Part.TSS_PERCPU, CloneLevel.PTE),
                Clone(Part.KERNEL_TEXT, CloneLevel.PMD),  # only when the global policy allows (no PCID)
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
            "lass",
            "no PTI on LASS hardware: the kernel stays mapped in every process and the CPU's LASS "
            "check (CR4.LASS, SMAP on) faults every user access to the upper half before paging",
            "successors.md LASS (Linux's LASS series, 6.19; vsyscall=emulate disables it)",
            isolating=False,
            clones=(),
            global_policy=GlobalPolicy.ALL_KERNEL,
            entry=Entry.ENTRY_TEXT,
            meltdown_immune=True,
            lass_cpu=True,
        ),
        Variant(
            "fred",
            "FRED event delivery, no PTI: no CR3 switch and no IST; entry at IA32_FRED_CONFIG's base "
            "from user, +256 from kernel; pti=on turns FRED off (932d922285ef) and boots linux",
            "successors.md FRED; arch/x86/kernel/fred.c, arch/x86/mm/pti.c",
            isolating=False,
            clones=(),
            global_policy=GlobalPolicy.ALL_KERNEL,
            entry=Entry.ENTRY_TEXT,
            meltdown_immune=True,
            delivery=Delivery.FRED,
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
            clones=(*_MODERN_BASE, Clone(Part.ENTRY_TEXT, CloneLevel.PMD)),
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


def register_variant(variant: Variant) -> Variant:
    """Add a design to the registry: every `--variant all`, the demo and docs/variants.md list it.
    Its clones must be parts of `kaiser.linux.pti.PARTS` at levels their spec allows."""
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _check_clones(variant)
    VARIANTS[variant.name] = variant
    return variant


def _check_clones(variant: Variant) -> None:
    for clone in variant.clones:
        if clone.level not in PARTS[clone.part].levels:
            raise ValueError(f"{variant.name}: {clone.part.value} cannot be cloned at {clone.level.value}")


def derive_variant(
    base: str,
    name: str,
    *,
    summary: str,
    source: str,
    without: Iterable[Part] = (),
    global_policy: GlobalPolicy | None = None,
) -> Variant:
    """A design made from the registered `base`: its clones minus the parts `without`, another
    global policy if given. Not registered: the cost model's global-page kernels and `kaiser run`'s
    deliberately broken variant boot it with `Kernel.boot(config, variant=...)`, `config.variant`
    being its `registered_name`."""
    parent = get_variant(base)
    drop = frozenset(without)
    return dataclasses.replace(
        parent,
        name=name,
        summary=summary,
        source=source,
        clones=tuple(c for c in parent.clones if c.part not in drop),
        global_policy=parent.global_policy if global_policy is None else global_policy,
        derived_from=parent.name,
    )


def booted_variant(variant: Variant, *, pti: str, vendor: str) -> Variant:
    """The design the kernel really boots (`pti_check_boottime_disable()`, arch/x86/mm/pti.c):
    under pti=auto an isolating variant isolates only on a CPU with X86_BUG_CPU_MELTDOWN (Intel
    here; AMD is not affected), so elsewhere it boots `nopti`. A design that is not isolating
    because its hardware is Meltdown-immune (lass, fred) is isolated by pti=on all the same
    (PTI_FORCE_ON sets X86_FEATURE_PTI whatever the CPU): it boots `linux`, and on FRED hardware
    PTI then clears X86_FEATURE_FRED (932d922285ef, "x86/cpu: Disable FRED when PTI is forced on",
    2026: FRED's entry never switches CR3), so the kernel delivers events through the IDT."""
    if variant.isolating and pti == "auto" and vendor != "intel":
        return VARIANTS["nopti"]
    if variant.meltdown_immune and pti == "on":
        return VARIANTS["linux"]
    return variant


for _variant in VARIANTS.values():
    _check_clones(_variant)
