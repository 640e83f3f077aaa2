"""Building the user ("shadow") tables' kernel half, with functions named as in `arch/x86/mm/pti.c`.

All functions take the kernel and the user page table of one PGD pair (the user PGD is the second
4 KiB page of an 8 KiB-aligned pair, linux-kpti.md §3.1) and edit real entries in physical memory.
Shared clones copy an entry verbatim so both trees point at the same lower-level tables; private
clones (KAISER as first posted, §7.1) build tables of the user tree's own.
"""

from __future__ import annotations

from kaiser.x86.bits import PTE, entry_phys
from kaiser.x86.pagetable import PageTable, PagingError
from kaiser.x86.physmem import PAGE_SIZE

PTI_USER_PGTABLE_BIT = 12  # kernel_to_user_pgdp(): the user PGD is the kernel PGD with bit 12 set (§3.1)
PMD_SIZE = 1 << 21


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
    instead, as the IAIK KAISER patch did (§7.1). Kernel-half and NOPTISHADOW writes pass through.
    """
    if not pgdp_maps_userspace(kernel_pt, index) or value & PTE.SW1:  # SW1 = _PAGE_NOPTISHADOW (2025)
        return value
    user_pt.set_entry(user_pt.root + 8 * index, value, 0)
    if value & PTE.P and value & PTE.US:
        return value | int(PTE.NX) if nx else value & ~int(PTE.US)
    return value


def _depth(pt: PageTable, name: str) -> int:
    for depth, level in enumerate(pt.levels):
        if level.linux == name:
            return depth
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
        kpte_slot = entry_phys(kpmd) + 8 * kernel_pt.levels[-1].index(addr)
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
