"""The kernel's build and boot switches: vsyscall mode, the LDT alias, the entry-area layout."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.linux.cea import DEBUG_BUFFER_PAGES, PAGE_NONE, Kind, cea_layout
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.layout import VSYSCALL_ADDR
from kaiser.linux.variants import VARIANTS, Entry
from kaiser.x86.bits import PTE
from kaiser.x86.physmem import PAGE_SIZE


@pytest.mark.parametrize("mode", ["emulate", "xonly", "none"])
@pytest.mark.parametrize("variant", ["nopti", "linux", "linux-4.15"])
def test_vsyscall_page_exists_only_in_emulate_mode(variant: str, mode: str) -> None:
    """map_vsyscall() maps the page only for EMULATE; pti_setup_vsyscall() clones only a PTE that
    exists (vsyscall_64.c, pti.c)."""
    kernel = Kernel.boot(KernelConfig(variant=variant, vsyscall=mode))
    task = kernel.spawn()
    for pt in (task.mm.pgd.kernel_pt, task.mm.pgd.user_pt):
        if pt is None:
            continue
        leaf = pt.lookup(VSYSCALL_ADDR)
        if mode == "emulate":
            assert leaf is not None and leaf.entry & PTE.US and leaf.entry & PTE.NX and not leaf.entry & PTE.RW
        else:
            assert leaf is None
    parts = {part for _, _, part in kernel.user_allowed_ranges()}
    assert ("vsyscall" in parts) == (mode == "emulate" and variant != "nopti")


def test_unknown_vsyscall_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="vsyscall='native'"):
        KernelConfig(vsyscall="native")


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 8192), min_size=1, max_size=4), variant=st.sampled_from(["linux", "nopti"]))
def test_ldt_alias_is_as_big_as_the_ldt_and_only_under_isolation(sizes: list[int], variant: str) -> None:
    """alloc_ldt_struct() sizes the LDT to its descriptors (8 bytes each); map_ldt_struct() aliases
    it at the LDT slot only with X86_FEATURE_PTI. The LDT only grows; exit frees every frame."""
    kernel = Kernel.boot(KernelConfig(variant=variant))
    before = kernel.mem.stats()
    task = kernel.spawn()
    for n in sizes:
        task.mm.modify_ldt(n)
    entries = max(sizes)
    pages = -(-entries * 8 // PAGE_SIZE)
    assert task.mm.ldt_entries == entries and task.mm.ldt_pages == pages
    base = kernel.layout.ldt_base
    mapped = list(task.mm.pgd.kernel_pt.leaves(base, kernel.layout.ldt_end))
    if kernel.variant.isolating:
        assert [leaf.va for leaf in mapped] == [base + i * PAGE_SIZE for i in range(pages)]
        assert all(not leaf.entry & (PTE.RW | PTE.G) for leaf in mapped)
        assert task.mm.pgd.user_pt is not None and task.mm.pgd.user_pt.lookup(base) is not None
    else:
        assert mapped == []
    child = kernel.fork(task)
    assert child.mm.ldt_entries == entries
    kernel.exit(child)
    kernel.exit(task)
    after = kernel.mem.stats()
    assert (after.page_table, after.data) == (before.page_table, before.data)


def test_modern_entry_area_is_the_59_pages_of_6_1() -> None:
    """GDT, entry stack, 5 TSS pages, [guard, 8K stack] x 6 + top guard, the debug store at
    +0x1a000, 32 PAGE_NONE buffer PTEs: CPU 1 at 0xfffffe0000001000 + 0x3b000 (docs/real-kernel.md)."""
    lay = cea_layout("modern", stub=False)
    assert lay.pages == 59 and lay.offset("debug store") == 0x1A000
    assert lay.stack_top("NMI") == 0xD000 and lay.offset("tss") == 0x2000
    mapped = sum(p.pages for p in lay.pieces if p.kind in (Kind.RO, Kind.RW))
    assert mapped == 1 + 1 + 5 + 4 * 2 + 1
    kernel = Kernel.boot(KernelConfig(variant="linux", kaslr=False, ncpus=2))
    assert [c.cea for c in kernel.cpus] == [0xFFFFFE0000001000, 0xFFFFFE0000001000 + 0x3B000]
    kpt = kernel.init.kernel_pt
    cpu = kernel.cpus[1]
    buffers = cpu.cea + lay.offset("debug buffers")
    for page in range(DEBUG_BUFFER_PAGES):
        slot = kpt.entry_slot(buffers + page * PAGE_SIZE, len(kpt.levels) - 1)
        assert slot is not None and kernel.mem.read_u64(slot) == PAGE_NONE
    assert kpt.lookup(cpu.cea + lay.offset("DF guard")) is None
    assert kpt.lookup(cpu.cea + lay.offset("VC stack")) is None  # SEV-ES only
    stack = kpt.lookup(lay.stack_top("NMI") + cpu.cea - 8)
    assert stack is not None and stack.entry & PTE.RW and stack.entry & PTE.G and stack.entry & PTE.NX


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_entry_area_backs_each_mapped_page_once(name: str) -> None:
    """The pieces of each era's area tile it, and no two mapped pieces share a per-CPU page."""
    kernel = Kernel.boot(KernelConfig(variant=name))
    lay = kernel.cea_layout
    covered = sorted((p.page, p.page + p.pages) for p in lay.pieces)
    assert covered[0][0] == 0 and all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
    backing = [p.backing + i for p in lay.pieces if p.backing is not None for i in range(p.pages)]
    assert len(backing) == len(set(backing))
    assert (lay.trampoline is not None) == (kernel.variant.entry is not Entry.ENTRY_TEXT)
