"""linux/variants.py on its own: the registry's entries are consistent, each boots into what it says.

Policy fields are checked against each other (isolation needs clones, where G may stay, what the
entry point needs mapped) and then against the tables a booted kernel really has: the user PGD
exists exactly under isolation, and `_PAGE_GLOBAL` sits where the variant's GlobalPolicy says
(facts/linux-kpti.md §2 notes, §3.3, §7.3).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.variants import VARIANTS, CloneLevel, Entry, GlobalPolicy, Part, UnknownVariant, get_variant
from kaiser.x86.bits import ADDR_MASK_52, PTE
from kaiser.x86.geometry import user_half_end

NAMES = list(VARIANTS)


@pytest.fixture(scope="module")
def booted() -> dict[str, Kernel]:
    return {name: Kernel.boot(KernelConfig(variant=name, seed=7)) for name in NAMES}


def test_names_are_unique_and_cli_safe() -> None:
    names = [v.name for v in VARIANTS.values()]
    assert names == NAMES and len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[a-z][a-z0-9.-]*", name), name
        assert get_variant(name) is VARIANTS[name]


@pytest.mark.parametrize("name", NAMES)
def test_policy_fields_are_consistent(name: str) -> None:
    v = VARIANTS[name]
    assert v.summary and v.source and v.era in ("modern", "4.15")
    assert v.isolating == bool(v.clones)
    assert (v.global_policy is GlobalPolicy.ALL_KERNEL) == (not v.isolating)
    parts = [c.part for c in v.clones]
    assert len(set(parts)) == len(parts), "a part cloned twice"
    for part in Part:
        assert v.maps(part) == (part in parts)
        assert v.clone_for(part) == next((c for c in v.clones if c.part is part), None)
    for c in v.clones:
        assert not c.private or c.level is CloneLevel.PTE, f"{c}: private copies are 4 KiB PTEs"
        if c.level is CloneLevel.PGD:
            assert c.part in (Part.CPU_ENTRY_AREA, Part.FIXMAP_PGD, Part.LDT), c
        assert not c.clear & (int(PTE.P) | ADDR_MASK_52), f"{c}: clear may drop flags only"
    if v.isolating:
        # the CPU must reach the IDT, TSS and entry stack with the user CR3, and fetch the entry point
        assert v.maps(Part.CPU_ENTRY_AREA)
        assert v.maps(Part.ENTRY_TEXT) if v.entry is Entry.ENTRY_TEXT else True
    if v.global_policy is GlobalPolicy.SHARED_AND_TEXT_WITHOUT_PCID:
        assert v.maps(Part.KERNEL_TEXT)


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_boots_into_its_policy(booted: dict[str, Kernel], name: str) -> None:
    kernel = booted[name]
    v = kernel.variant
    assert v is VARIANTS[name]
    assert (kernel.init.user_pt is not None) == v.isolating
    assert (kernel.cea_layout.trampoline is not None) == (v.entry is not Entry.ENTRY_TEXT)
    kpt, upt = kernel.init.kernel_pt, kernel.init.user_pt
    upper = kpt.mode.canonicalize(user_half_end(kpt.mode))
    kernel_leaves = list(kpt.leaves(upper, once=True))
    assert kernel_leaves
    global_leaves = [leaf for leaf in kernel_leaves if leaf.entry & PTE.G]
    if v.global_policy is GlobalPolicy.ALL_KERNEL:
        assert global_leaves == kernel_leaves
    elif v.global_policy is GlobalPolicy.NONE:
        assert global_leaves == []
        assert upt is not None and not any(leaf.entry & PTE.G for leaf in upt.leaves(upper, once=True))
    else:  # G only on what the user tables map too (pcid=True: no global kernel text)
        assert upt is not None and global_leaves
        for leaf in global_leaves:
            assert upt.lookup(leaf.va) is not None, f"{leaf.describe()} is global but not in the user tables"
    if upt is not None:
        assert not list(upt.leaves(0, user_half_end(upt.mode))), "boot mapped something in the user half"


@pytest.mark.parametrize("pcid", [True, False])
def test_linux_kernel_text_is_global_and_shared_only_without_pcid(pcid: bool) -> None:
    """pti_kernel_image_global_ok(): no PCID (and pti=auto) -> the image is cloned, global (§3.3)."""
    kernel = Kernel.boot(KernelConfig(variant="linux", pcid=pcid))
    text = kernel.layout.kernel_base
    kleaf = kernel.init.kernel_pt.lookup(text)
    assert kernel.init.user_pt is not None and kleaf is not None
    uleaf = kernel.init.user_pt.lookup(text)
    assert bool(kleaf.entry & PTE.G) == (not pcid) == (uleaf is not None)
    assert kernel.kernel_text_shared() == (not pcid)


@given(st.text(max_size=20).filter(lambda s: s not in VARIANTS))
def test_unknown_names_raise_one_line(name: str) -> None:
    with pytest.raises(UnknownVariant) as info:
        get_variant(name)
    message = str(info.value)
    assert "\n" not in message and repr(name) in message
    assert all(known in message for known in NAMES)
    with pytest.raises(UnknownVariant):
        KernelConfig(variant=name)
