"""linux/mm.py on its own: system-call sequences against a page-by-page model of the mappings.

A process on a booted kernel runs random mmap/munmap/mprotect/brk sequences; after every call the
hardware walker (SDM §4.5, no A/D updates), run from user mode through the user CR3 the kernel
would load, must see exactly the model's pages with exactly the rights `prot` asks for
(`protection_map[]`: user, writable iff PROT_WRITE, NX unless PROT_EXEC), the VMA list must equal
the model's runs, and the user PGD's user half must mirror the kernel PGD's (pti_set_user_pgtbl).
Exiting returns the kernel's frame counts to where they were. The cross-variant isolation checks
live in test_isolation_properties.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.mm import MMAP_BASE, Mm, MmError, ProgramImage, Prot, prot_to_pte
from kaiser.linux.pgtable_types import PAGE_TABLE
from kaiser.x86.bits import ADDR_MASK_52, CR4, PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import user_half_end
from kaiser.x86.physmem import PAGE_SIZE
from kaiser.x86.walker import Op, Translation, translate

PROTS = [Prot.NONE, Prot.READ, Prot.READ | Prot.WRITE, Prot.READ | Prot.EXEC, Prot.READ | Prot.WRITE | Prot.EXEC]
# A small program image far from the mmap area, so the model below stays small.
IMAGE = ProgramImage(text=2 * PAGE_SIZE, rodata=PAGE_SIZE, data=PAGE_SIZE, bss=PAGE_SIZE, stack=2 * PAGE_SIZE)


@pytest.fixture(scope="module")
def kernel() -> Kernel:
    return Kernel.boot(KernelConfig(variant="linux", seed=3))


def model_of(mm: Mm) -> dict[int, tuple[Prot, str]]:
    return {va: (v.prot, v.name) for v in mm.vmas for va in range(v.start, v.end, PAGE_SIZE)}


def check(kernel: Kernel, mm: Mm, model: dict[int, Prot]) -> None:
    # the VMA list: sorted, disjoint, and page by page the model
    spans = [(v.start, v.end) for v in mm.vmas]
    assert spans == sorted(spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert {va: prot for va, (prot, _) in model_of(mm).items()} == model
    # what the MMU sees from user mode through the user CR3 (the kernel CR3 where there is none)
    user_pgd = mm.pgd.user_pgd if mm.pgd.user_pgd is not None else mm.pgd.kernel_pgd
    state = CpuState(cr3=user_pgd, cr4=int(CR4.PAE | CR4.PGE | CR4.SMEP | CR4.SMAP), cpl=3)
    mapped = {leaf.va: leaf for leaf in mm.pt.leaves(0, kernel.user_top)}
    want = {va for va, prot in model.items() if prot != Prot.NONE}
    assert set(mapped) == want
    for va in want:
        prot = model[va]
        assert mapped[va].size == PAGE_SIZE
        flags = int(mapped[va].entry) & (0xFFF | int(PTE.NX)) & ~int(PTE.A | PTE.D)
        assert flags == prot_to_pte(prot) | int(PTE.P)
        read = translate(kernel.mem, state, va, Op.READ, set_ad=False)
        write = translate(kernel.mem, state, va, Op.WRITE, set_ad=False)
        fetch = translate(kernel.mem, state, va, Op.FETCH, set_ad=False)
        assert isinstance(read, Translation) and read.pa == mapped[va].pa
        assert isinstance(write, Translation) == bool(prot & Prot.WRITE)
        assert isinstance(fetch, Translation) == bool(prot & Prot.EXEC)
    # PROT_NONE pages, and the pages around the model's, are not reachable from user mode
    for va in set(model) | {va + PAGE_SIZE for va in model} | {va - PAGE_SIZE for va in model}:
        if va not in want and 0 <= va < kernel.user_top:
            assert not isinstance(translate(kernel.mem, state, va, Op.READ, set_ad=False), Translation)
    # mirroring: every user-half top-level write reached the user PGD (kernel copy: + NX)
    if mm.pgd.user_pgd is not None:
        for index in range(256):
            user = kernel.mem.read_u64(mm.pgd.user_pgd + 8 * index)
            kern = kernel.mem.read_u64(mm.pgd.kernel_pgd + 8 * index)
            assert kern == (user | int(PTE.NX) if user & PTE.P and user & PTE.US else user), index


op = st.one_of(
    st.tuples(st.just("mmap"), st.integers(1, 12), st.sampled_from(PROTS)),
    st.tuples(st.just("fixed"), st.integers(0, 40), st.integers(1, 8), st.sampled_from(PROTS)),
    st.tuples(st.just("munmap"), st.integers(0, 40), st.integers(1, 12)),
    st.tuples(st.just("mprotect"), st.integers(0, 40), st.integers(1, 6), st.sampled_from(PROTS)),
    st.tuples(st.just("brk"), st.integers(-4, 12)),
)
BASE = MMAP_BASE - 64 * PAGE_SIZE  # window of the fixed-address operations


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=10))
def test_syscalls_match_a_page_model(kernel: Kernel, ops: list[tuple]) -> None:
    before = kernel.mem.stats()
    task = kernel.spawn(IMAGE)
    mm = task.mm
    model = {va: prot for va, (prot, _) in model_of(mm).items()}
    check(kernel, mm, model)
    for kind, *args in ops:
        if kind == "mmap":
            pages, prot = args
            va = mm.mmap(pages * PAGE_SIZE, prot)
            assert va % PAGE_SIZE == 0 and not any(p in model for p in range(va, va + pages * PAGE_SIZE, PAGE_SIZE))
            model.update({p: prot for p in range(va, va + pages * PAGE_SIZE, PAGE_SIZE)})
        elif kind == "fixed":
            first, pages, prot = args
            va = mm.mmap(pages * PAGE_SIZE, prot, addr=BASE + first * PAGE_SIZE)
            assert va == BASE + first * PAGE_SIZE
            model.update({p: prot for p in range(va, va + pages * PAGE_SIZE, PAGE_SIZE)})
        elif kind == "munmap":
            first, pages = args
            va = BASE + first * PAGE_SIZE
            mm.munmap(va, pages * PAGE_SIZE)
            for p in range(va, va + pages * PAGE_SIZE, PAGE_SIZE):
                model.pop(p, None)
        elif kind == "mprotect":
            first, pages, prot = args
            va = BASE + first * PAGE_SIZE
            span = range(va, va + pages * PAGE_SIZE, PAGE_SIZE)
            if all(p in model for p in span):
                mm.mprotect(va, pages * PAGE_SIZE, prot)
                model.update({p: prot for p in span})
            else:
                with pytest.raises(MmError, match="ENOMEM"):
                    mm.mprotect(va, pages * PAGE_SIZE, prot)
        else:
            (delta,) = args
            old = mm.brk_end
            top = -(-old // PAGE_SIZE) * PAGE_SIZE
            new = old + delta * PAGE_SIZE
            got = mm.brk(new)
            if new < mm.brk_start:
                assert got == old
            else:
                assert got == new == mm.brk_end
                new_top = -(-new // PAGE_SIZE) * PAGE_SIZE
                model.update({p: Prot.READ | Prot.WRITE for p in range(top, new_top, PAGE_SIZE)})
                for p in range(new_top, top, PAGE_SIZE):
                    model.pop(p, None)
        check(kernel, mm, model)
    kernel.exit(task)
    after = kernel.mem.stats()
    assert (after.page_table, after.data) == (before.page_table, before.data)


def test_fork_shares_writable_pages_copy_on_write(kernel: Kernel) -> None:
    """fork(): both processes map the same frames; private writable pages lose RW in both."""
    parent = kernel.spawn(IMAGE)
    heap = parent.mm.mmap(3 * PAGE_SIZE, Prot.READ | Prot.WRITE)
    text = parent.mm.mmap(PAGE_SIZE, Prot.READ | Prot.EXEC)
    child = kernel.fork(parent)
    for va in range(heap, heap + 3 * PAGE_SIZE, PAGE_SIZE):
        p, c = parent.mm.pt.lookup(va), child.mm.pt.lookup(va)
        assert p is not None and c is not None and p.pa == c.pa and kernel.frame_shared(p.pa)
        assert not p.entry & PTE.RW and not c.entry & PTE.RW
    p, c = parent.mm.pt.lookup(text), child.mm.pt.lookup(text)
    assert p is not None and c is not None and p.pa == c.pa and not c.entry & PTE.NX
    kernel.exit(parent)
    leaf = child.mm.pt.lookup(heap)
    assert leaf is not None and not kernel.frame_shared(leaf.pa)
    kernel.exit(child)


def test_bad_ranges_are_refused(kernel: Kernel) -> None:
    task = kernel.spawn(IMAGE)
    with pytest.raises(MmError, match="page-aligned"):
        task.mm.munmap(BASE + 1, PAGE_SIZE)
    with pytest.raises(MmError, match="above the user address space"):
        task.mm.mmap(PAGE_SIZE, addr=kernel.user_top)
    kernel.exit(task)
    with pytest.raises(MmError, match="exited"):
        task.mm.mmap(PAGE_SIZE)


@pytest.mark.parametrize("variant", ["linux", "nopti"])
def test_user_half_tables_are_linux_page_table_entries(variant: str) -> None:
    """Every table above a process's user pages is reached through a _PAGE_TABLE entry
    (pgtable_types.h; pgalloc.h's pmd_populate and friends), in both trees of the pair; the kernel
    PGD's copy of a top-level entry adds NX (pti_set_user_pgtbl, linux-kpti.md §3.2)."""
    k = Kernel.boot(KernelConfig(variant=variant, seed=3))
    task = k.spawn(IMAGE)
    pgd = task.mm.pgd
    trees = [(pgd.kernel_pt, int(PTE.NX) if k.variant.isolating else 0)]
    trees += [(pgd.user_pt, 0)] if pgd.user_pt is not None else []
    for pt, top_nx in trees:
        leaves = list(pt.leaves(0, user_half_end(pt.mode)))
        assert leaves
        for leaf in leaves:
            flags = [e & ~ADDR_MASK_52 for e in leaf.above]
            assert flags == [int(PAGE_TABLE) | top_nx] + [int(PAGE_TABLE)] * (len(flags) - 1), leaf
