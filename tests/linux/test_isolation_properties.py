"""Isolation invariants after random process operations, on every isolating variant (issue 3).

(a) the user half of every user PGD equals the kernel PGD's except for NX; (b) user lower-level
tables are the same frames in both; (c) nothing in the kernel half of the user tables lies outside
the variant's allowed set; (d) freeing every process returns the frame count to its baseline.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.mm import Prot
from kaiser.linux.variants import VARIANTS
from kaiser.x86.bits import PTE
from kaiser.x86.pagetable import PageTable

ISOLATING = [name for name, v in VARIANTS.items() if v.isolating]
PROTS = [Prot.NONE, Prot.READ, Prot.READ | Prot.WRITE, Prot.READ | Prot.EXEC]

op = st.one_of(
    st.tuples(st.just("spawn")),
    st.tuples(st.just("fork"), st.integers(0, 7)),
    st.tuples(st.just("exec"), st.integers(0, 7)),
    st.tuples(st.just("mmap"), st.integers(0, 7), st.integers(1, 40), st.sampled_from(PROTS)),
    st.tuples(st.just("munmap"), st.integers(0, 7), st.integers(0, 63), st.integers(1, 24)),
    st.tuples(st.just("mprotect"), st.integers(0, 7), st.integers(0, 63), st.integers(1, 8), st.sampled_from(PROTS)),
    st.tuples(st.just("brk"), st.integers(0, 7), st.integers(-8, 40)),
    st.tuples(st.just("ldt"), st.integers(0, 7)),
    st.tuples(st.just("exit"), st.integers(0, 7)),
)


def apply(kernel: Kernel, step: tuple) -> None:  # type: ignore[type-arg]
    tasks = list(kernel.tasks.values())
    if step[0] == "spawn" or not tasks:
        kernel.spawn()
        return
    task = tasks[step[1] % len(tasks)]
    mm = task.mm
    kind = step[0]
    if kind == "fork" and len(tasks) < 6:
        kernel.fork(task)
    elif kind == "exec":
        mm.exec()
    elif kind == "mmap":
        mm.mmap(step[2] * 4096, step[3])
    elif kind in ("munmap", "mprotect") and mm.vmas:
        vma = mm.vmas[step[2] % len(mm.vmas)]
        length = min(step[3] * 4096, vma.size)
        if kind == "munmap":
            mm.munmap(vma.start, length)
        else:
            mm.mprotect(vma.start, length, step[4])
    elif kind == "brk":
        mm.brk(mm.brk_end + step[2] * 4096)
    elif kind == "ldt":
        mm.modify_ldt()
    elif kind == "exit":
        kernel.exit(task)


def _user_reachable(pt: PageTable) -> set[int]:
    """Tables reachable from the root's user half (entries 0..255)."""
    reach = set()
    stack = []
    for index in range(256):
        entry = pt.mem.read_u64(pt.root + 8 * index)
        if entry & PTE.P:
            stack.append((entry & 0x000FFFFFFFFFF000, 1))
    while stack:
        table, depth = stack.pop()
        reach.add(table)
        if depth == len(pt.levels) - 1:
            continue
        for entry in pt.mem.table(table):
            entry = int(entry)
            if entry & PTE.P and not (pt.levels[depth].leaf_ok and entry & PTE.PS):
                stack.append((entry & 0x000FFFFFFFFFF000, depth + 1))
    return reach


def check_invariants(kernel: Kernel) -> None:
    allowed = kernel.user_allowed_ranges()
    user_end = kernel.layout.user_end
    for task in kernel.tasks.values():
        pair = task.mm.pgd
        assert pair.user_pt is not None
        mem = kernel.mem
        for index in range(256):  # (a)
            k = mem.read_u64(pair.kernel_pgd + 8 * index)
            u = mem.read_u64(pair.user_pt.root + 8 * index)
            assert k & ~int(PTE.NX) == u & ~int(PTE.NX), f"pid {task.pid} slot {index}: {k:#x} vs {u:#x}"
            if u & PTE.P and u & PTE.US and kernel.variant.kernel_copy_marks_user_nx and not kernel.variant.asi:
                assert k & PTE.NX, f"pid {task.pid} slot {index}: kernel copy of a user entry lacks NX"
        assert _user_reachable(pair.kernel_pt) == _user_reachable(pair.user_pt)  # (b)
        for va, size in _kernel_leaves_outside(pair.user_pt, user_end, allowed):  # (c)
            raise AssertionError(
                f"{kernel.variant.name}: user tables map {va:#x}-{va + size:#x} outside the allowed set"
            )


def _kernel_leaves_outside(pt: PageTable, user_end: int, allowed: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Leaves of the kernel half not inside an allowed range. A subtree whose whole span lies in
    one allowed range is not descended (ESPfix's 65,536 aliases sit in one such span)."""
    out: list[tuple[int, int]] = []

    def inside(va: int, size: int) -> bool:
        return any(lo <= va and va + size <= hi for lo, hi, _ in allowed)

    def walk(table: int, depth: int, base: int) -> None:
        level = pt.levels[depth]
        for index, word in enumerate(pt.mem.table(table)):
            entry = int(word)
            if not entry & PTE.P:
                continue
            va = base | (index << level.shift)
            if depth == 0:
                va = pt.mode.canonicalize(va)
                if va < user_end:
                    continue
            if inside(va, level.span):
                continue
            if depth == len(pt.levels) - 1 or (level.leaf_ok and entry & PTE.PS):
                out.append((va, level.span))
            else:
                walk(entry & 0x000FFFFFFFFFF000, depth + 1, va)

    walk(pt.root, 0, 0)
    return out


def run_random_operations(variant: str, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    kernel = Kernel.boot(KernelConfig(variant=variant, seed=len(steps)))
    baseline = kernel.mem.stats()
    for step in steps:
        apply(kernel, step)
        check_invariants(kernel)
    for task in list(kernel.tasks.values()):
        kernel.exit(task)
    after = kernel.mem.stats()
    assert after.page_table == baseline.page_table  # (d)
    assert after.data == baseline.data


@pytest.mark.parametrize("variant", ISOLATING)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(steps=st.lists(op, min_size=1, max_size=14))
def test_invariants_hold_after_random_process_operations(variant: str, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    run_random_operations(variant, steps)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ISOLATING)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(op, min_size=1, max_size=30))
def test_invariants_hold_long_run(variant: str, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    run_random_operations(variant, steps)


def test_the_check_catches_a_user_table_leak() -> None:
    """The invariant check is not vacuous: a direct-map page planted in the user tables fails it."""
    kernel = Kernel.boot(KernelConfig(variant="linux"))
    task = kernel.spawn()
    assert task.mm.pgd.user_pt is not None
    task.mm.pgd.user_pt.map(kernel.layout.page_offset_base + (64 << 20), 64 << 20, 4096, int(PTE.RW | PTE.NX))
    with pytest.raises(AssertionError, match="outside the allowed set"):
        check_invariants(kernel)
