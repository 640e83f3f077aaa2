"""The audit's policy: the classes of kernel memory, and which of them each variant's user tables may map.

`CLASSES` names what a kernel-half range can be (entry text, the entry area, ESPfix, a per-CPU
TSS page, the direct map, ...; facts/linux-kpti.md §3.3, §3.5, §7). A `Policy` is, for one
variant, the classes its user tables may map and those where `_PAGE_GLOBAL` is acceptable;
`policy_for` gives it in either mode of `POLICY_MODES` (the variant's own design, or `strict`:
cut down to what today's Linux allows). `kaiser.linux.audit` classifies a dump or a model's
tables and judges each range by one of these.

Not an independent table, on purpose: a variant's allowed and global classes are the union over
the PTI parts it composes (`kaiser.linux.pti.PARTS`, `Variant.audit_classes`), so a part's audit
class is stated once, beside how it is cloned. The audit's independent checks are elsewhere: the
rules every variant must pass whatever its policy (no W+X, no USR on a kernel-half leaf but the
vsyscall page, no global page in a class kept non-global; `kaiser.linux.audit`), `strict`, which
holds every design to linux's parts, and `tests/attacks/test_audit_agrees.py`, which holds the
audit to what Meltdown reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kaiser.choices import POLICY_MODES
from kaiser.linux import pti
from kaiser.linux.layout import Layout
from kaiser.linux.variants import get_variant

# ---- classes ---------------------------------------------------------------------------------
CLASS_DOC: Final[dict[str, str]] = {
    "entry_text": "entry/exit text PMD(s) inside kernel text (§3.3)",
    "cpu_entry_area": "per-CPU entry area: GDT, RO IDT, TSS, entry and IST stacks (§3.4)",
    "espfix": "%esp fixup stacks (§3.3)",
    "ldt": "per-mm LDT alias in the LDT remap slot (§3.3)",
    "vsyscall": "legacy vsyscall page, USR ro NX in emulate mode (§3.3)",
    "tss_percpu": "per-CPU cpu_tss_rw page in the direct map, 4K RW NX (4.20+, §3.3)",
    "kernel_text": "kernel text/rodata beyond the entry PMD (pti_clone_kernel_text, §3.3)",
    "task_stack": "a task's kernel stack in vmalloc space (KAISER RFC, §7.1)",
    "percpu": "KAISER's user-mapped per-CPU section (RFC, §7.1)",
    "kernel_data": "kernel .data/.bss",
    "direct_map": "direct map of physical memory (§3.5: never in user tables)",
    "asi_nonsensitive": "direct map of a nonsensitive pageblock (ASI's restricted tables, successors.md)",
    "vmalloc": "vmalloc/ioremap space (§3.5)",
    "vmemmap": "struct page array (§3.5)",
    "efi": "EFI runtime services (only in efi_pgd)",
    "modules": "module mapping space (§3.5)",
    "fixmap": "fixmap slots other than the vsyscall page (§3.5)",
    "kernel_image": "kernel image window outside _text.._end",
    "hole": "unused kernel address space",
}
CLASSES: Final = tuple(CLASS_DOC)

# A variant's allowed and global classes come from the policy registry (the module docstring), and
# a model range takes its part's audit class. Designs whose user-mode boundary is not made of
# PTI's parts give theirs here -- (allowed classes, global classes) -- and the classes of the
# ranges they name beyond PTI's parts.
_OWN_POLICY: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    # asi (kaiser.linux.asi): what asi_global_init maps plus the nonsensitive pageblocks. The model's
    # audit allows a direct-map piece only inside a nonsensitive pageblock or a CPU's per-CPU area
    # (its allowed ranges); a dump cannot tell those from sensitive memory, so a file's direct_map
    # class is allowed here and only the model proves sensitivity. G where PTI keeps it, and on
    # kernel text, which a dump cannot tell from the entry-text PMD (every image mapping is identical
    # in both tables, so a global one survives nothing it should not).
    "asi": (
        frozenset({"cpu_entry_area", "espfix", "vsyscall", "ldt", "entry_text", "kernel_text", "kernel_data"})
        | {"fixmap", "percpu", "vmalloc", "vmemmap", "task_stack", "asi_nonsensitive", "direct_map"},
        frozenset({"cpu_entry_area", "espfix", "entry_text", "kernel_text", "vsyscall"}),
    ),
}
_RANGE_CLASS: Final[dict[str, str]] = {"asi_percpu": "percpu", "asi_nonsensitive": "asi_nonsensitive"}

# Variants whose user-mode tables draw a different boundary than PTI's: their strict policy is their
# own, since Linux's PTI list does not describe them (asi: sensitive vs nonsensitive memory).
_OWN_STRICT: Final = frozenset({"asi"})


@dataclass(frozen=True)
class Policy:
    """What a variant lets the user tables map: allowed classes and where GLB is acceptable.
    W+X and USR on a non-vsyscall kernel page are never allowed. `mode`: `POLICY_MODES`."""

    variant: str
    allowed: frozenset[str]
    global_ok: frozenset[str]
    note: str = ""
    mode: str = "variant"

    @property
    def label(self) -> str:
        """How findings and verdicts name the policy: `two-pgd`, or `two-pgd (strict)`."""
        return self.variant if self.mode == "variant" else f"{self.variant} (strict)"


# variant: the variant's own policy (its design's intent: two-pgd may share whole top-level
# entries). strict: that policy cut down to what today's Linux allows in user tables -- the `linux`
# variant's classes (§3.3) -- so no variant's design excuses a mapping Linux would not make,
# and the audit agrees with `kaiser attack meltdown` about what leaks. Their names: POLICY_MODES
# (kaiser/choices.py, the names the command line offers).


def _classes(name: str, pcid: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(allowed classes, global classes) of the variant `name` (`linux` adds kernel text without PCID)."""
    return _OWN_POLICY.get(name) or get_variant(name).audit_classes(pcid=pcid)


def range_class(part: str) -> str | None:
    """The audit class of a model range named `part` where the layout's region cannot name it
    (None: the region's class)."""
    spec = pti.part_named(part)
    return spec.audit_class if spec is not None else _RANGE_CLASS.get(part)


def range_name(part: str) -> str:
    """How a report names the allowed range of `part`."""
    spec = pti.part_named(part)
    return spec.report_name if spec is not None else _RANGE_CLASS.get(part, part)


def lass_policy(variant: str, mode: str = "variant") -> Policy:
    """The policy of a kernel PGD on a CPU with LASS active: every class, since no user-mode
    access to the upper half reaches the walk -- LASS faults it first, #GP(0) or #SS (SDM Vol. 3A
    "Linear-Address Pre-Processing"; successors.md) -- so nothing mapped there is reachable from
    user mode. The three rules every variant must pass (W+X, USR, global) still apply."""
    every = frozenset(CLASSES)
    note = "LASS: user-mode accesses to the upper half fault before paging; no kernel mapping is reachable"
    return Policy(variant, every, every, note, mode)


def policy_for(variant: str, *, pcid: bool = True, mode: str = "variant") -> Policy:
    """The policy of `variant` in `mode` (`POLICY_MODES`). `linux` allows `kernel_text` only
    without PCID (under pti=auto, `pti_kernel_image_global_ok()`, §3.3); `nopti` gets `linux`'s
    policy (it has none)."""
    get_variant(variant)  # UnknownVariant lists the names
    if mode not in POLICY_MODES:
        raise ValueError(f"unknown policy mode {mode!r}; known: {', '.join(POLICY_MODES)}")
    if get_variant(variant).lass_cpu:
        return lass_policy(variant, mode)
    name, note = variant, ""
    if not get_variant(variant).isolating:  # nopti, fred
        name, note = "linux", f"{variant} has no user tables: its kernel PGD is judged by linux's policy"
    allowed, glb = _classes(name, pcid)
    if name == "linux" and not pcid:
        note = note or "no PCID: kernel text may be cloned (pti=auto)"
    if mode == "strict" and name in _OWN_STRICT:
        note = f"strict: {variant}'s boundary is not PTI's; its own policy applies (no sensitive memory mapped)"
    elif mode == "strict" and name != "linux":
        linux_allowed, linux_glb = _classes("linux", pcid)
        allowed, glb = allowed & linux_allowed, glb & linux_glb
        note = f"strict: {variant}'s own policy, cut down to what today's Linux (the linux variant) allows"
    return Policy(variant, allowed, glb, note, mode)


def model_class(layout: Layout, va: int) -> str:
    """The audit class of the model address `va`: its layout region, by the name `CLASSES` use."""
    name = layout.region_of(va)
    return {
        "entry_text": "kernel_text",
        "kernel_rodata": "kernel_text",
        "kernel_bss": "kernel_data",
        "ldt_remap": "ldt",
        "guard_hole": "hole",
        "noncanonical": "hole",
    }.get(name, name)


__all__ = [
    "CLASSES",
    "CLASS_DOC",
    "POLICY_MODES",
    "Policy",
    "lass_policy",
    "model_class",
    "policy_for",
    "range_class",
    "range_name",
]
