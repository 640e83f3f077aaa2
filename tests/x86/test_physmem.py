"""Sparse physical memory: bounds, alignment, allocation, accounting and host-memory cost."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.x86.bits import PTE
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import ENTRIES, PAGE_SIZE, FrameKind, PhysicalMemory, PhysMemError

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30


def test_untouched_memory_reads_zero_and_costs_nothing() -> None:
    mem = PhysicalMemory(64 << 30)
    assert mem.read_u64(5 << 30) == 0
    assert mem.read_bytes((64 << 30) - 16, 16) == bytes(16)
    assert not mem.read_frame(123 * K4).any()
    assert mem.touched_frames() == []


def test_u64_and_byte_round_trip_across_frames() -> None:
    mem = PhysicalMemory(1 << 36)
    mem.write_u64(0x2000, (1 << 64) - 1)
    mem.write_u64(0x2008, 0x0123456789ABCDEF)
    assert mem.read_u64(0x2000) == (1 << 64) - 1
    assert mem.read_bytes(0x2008, 8) == (0x0123456789ABCDEF).to_bytes(8, "little")  # little-endian (SDM §4.5)
    data = bytes(range(256)) * 40
    mem.write_bytes(0x3FF0, data)  # crosses three frames
    assert mem.read_bytes(0x3FF0, len(data)) == data
    assert mem.read_u64(0x3FF0) == int.from_bytes(data[:8], "little")
    assert mem.touched_frames() == [0x2000, 0x3000, 0x4000, 0x5000, 0x6000]


@settings(max_examples=50, derandomize=True)
@given(st.integers(0, (1 << 36) // 8 - 1), st.integers(0, (1 << 64) - 1))
def test_u64_round_trip(word: int, value: int) -> None:
    mem = PhysicalMemory(1 << 36)
    mem.write_u64(word * 8, value)
    assert mem.read_u64(word * 8) == value
    assert mem.read_bytes(word * 8, 8) == value.to_bytes(8, "little")


@pytest.mark.parametrize(
    "call, where",
    [
        (lambda m: m.read_u64(1 << 30), "0x40000000"),
        (lambda m: m.read_u64(-8), "-0x8"),
        (lambda m: m.write_u64(1 << 30, 0), "0x40000000"),
        (lambda m: m.write_u64(0x1004, 0), "0x1004"),  # misaligned
        (lambda m: m.read_u64(0x1001), "0x1001"),
        (lambda m: m.write_u64(0x1000, 1 << 64), "0x10000000000000000"),
        (lambda m: m.write_u64(0x1000, -1), "-0x1"),
        (lambda m: m.read_bytes((1 << 30) - 4, 8), "0x3ffffffc"),
        (lambda m: m.write_bytes((1 << 30) - 4, bytes(8)), "0x3ffffffc"),
        (lambda m: m.read_bytes(0, -1), "0x0"),
        (lambda m: m.read_frame(1 << 30), "0x40000000"),
        (lambda m: m.table(1 << 30), "0x40000000"),
        (lambda m: m.free(0x5000), "0x5000"),  # never allocated
        (lambda m: m.free(1 << 30), "0x40000000"),
    ],
)
def test_out_of_range_and_misaligned_accesses(call, where: str) -> None:  # type: ignore[no-untyped-def]
    mem = PhysicalMemory(1 << 30)
    with pytest.raises(PhysMemError) as info:
        call(mem)
    assert where in str(info.value)
    assert mem.touched_frames() == [], "a failed access must not write anything"


def test_write_bytes_past_the_end_writes_nothing() -> None:
    mem = PhysicalMemory(1 << 30)
    with pytest.raises(PhysMemError):
        mem.write_bytes((1 << 30) - K4, b"x" * (K4 + 1))
    assert mem.touched_frames() == []


def test_alloc_free_double_free_and_reuse() -> None:
    mem = PhysicalMemory(1 << 30)
    a = mem.alloc(FrameKind.PAGE_TABLE, "k")
    b = mem.alloc(FrameKind.DATA, "u")
    assert a == 1 << 20 and b == a + K4  # the first MiB is left alone
    mem.write_u64(a, 0xDEAD)
    mem.free(a)
    with pytest.raises(PhysMemError, match=f"{a:#x}"):
        mem.free(a)
    with pytest.raises(PhysMemError, match=f"{a + 8:#x}"):
        mem.free(a + 8)  # not a frame address
    again = mem.alloc(FrameKind.DATA)
    assert again == a and mem.read_u64(again) == 0  # reused and zeroed
    assert mem.kind_of(b) is FrameKind.DATA and mem.kind_of(a + 100 * K4) is None


def test_aligned_contiguous_alloc_and_gap_reuse() -> None:
    mem = PhysicalMemory(1 << 36)
    mem.alloc(FrameKind.DATA)
    big = mem.alloc(FrameKind.DATA, count=512, align=512)
    assert big % M2 == 0 and mem.stats().data == 513
    gap = big // K4 - (1 << 20) // K4 - 1
    small = {mem.alloc(FrameKind.DATA) for _ in range(gap)}  # the alignment gap is handed out
    assert all((1 << 20) < p < big for p in small)
    with pytest.raises(PhysMemError):
        mem.alloc(FrameKind.DATA, count=0)
    with pytest.raises(PhysMemError):
        mem.alloc(FrameKind.DATA, align=0)


def test_out_of_memory_leaves_the_allocator_unchanged() -> None:
    mem = PhysicalMemory(1 << 36, first_free=(1 << 36) - 4 * K4)
    with pytest.raises(PhysMemError, match="out of physical memory"):
        mem.alloc(FrameKind.DATA, count=5)
    assert mem.free_frames() == 4
    frames = [mem.alloc(FrameKind.PAGE_TABLE) for _ in range(4)]
    assert frames == [(1 << 36) - (4 - i) * K4 for i in range(4)]
    with pytest.raises(PhysMemError, match="out of physical memory"):
        mem.alloc(FrameKind.PAGE_TABLE)
    mem.free(frames[2])
    assert mem.alloc(FrameKind.DATA) == frames[2]


@pytest.mark.parametrize(
    "kwargs, what",
    [
        (dict(size=1 << 47, maxphyaddr=46), "46-bit"),
        (dict(size=1 << 30, maxphyaddr=53), "maxphyaddr=53"),
        (dict(size=1 << 30, maxphyaddr=35), "maxphyaddr=35"),
        (dict(size=0), "0x0"),
        (dict(size=K4 + 1), "0x1001"),
        (dict(size=1 << 30, first_free=0x123), "0x123"),
        (dict(size=1 << 30, first_free=2 << 30), "0x80000000"),
    ],
)
def test_bad_memory_geometry(kwargs: dict, what: str) -> None:
    with pytest.raises(PhysMemError, match=what):
        PhysicalMemory(**kwargs)


def test_maxphyaddr_limits_ram_and_entries() -> None:
    mem = PhysicalMemory(1 << 36, maxphyaddr=36)  # RAM may fill the whole physical address space
    assert mem.size == 1 << 36
    PhysicalMemory(1 << 52, maxphyaddr=52)  # 4 PiB of "RAM" costs nothing until touched


def test_sparse_machine_costs_only_touched_frames() -> None:
    """64 GiB of RAM with a few hundred page tables costs those frames, not 64 GiB."""
    mem = PhysicalMemory(64 << 30)
    pt = PageTable(mem, tag="kernel")
    for i in range(300):  # 300 scattered 4 KiB mappings: one PT (and PD) each
        pt.map((i << 30) + (i << 21), i << 12, K4, int(PTE.RW))
    tables = mem.stats().page_table
    assert tables == len(list(pt.tables())) and 300 < tables < 700
    assert len(mem.touched_frames()) == tables  # data frames mapped but never written cost nothing
    rows_in_use = len(mem.touched_frames())
    assert mem.frames.shape[1] == ENTRIES
    assert mem.frames.nbytes <= 2 * rows_in_use * PAGE_SIZE + 16 * PAGE_SIZE  # grows by doubling
    assert mem.frames.nbytes < 8 << 20


def test_storage_rows_are_reused_after_free() -> None:
    mem = PhysicalMemory(1 << 36)
    frames = [mem.alloc(FrameKind.PAGE_TABLE) for _ in range(40)]
    rows = mem.frames.shape[0]
    for f in frames:
        mem.free(f)
    assert mem.touched_frames() == []
    for _ in range(40):
        mem.alloc(FrameKind.PAGE_TABLE)
    assert mem.frames.shape[0] == rows


def test_accounting_by_kind_and_tag() -> None:
    mem = PhysicalMemory(1 << 36)
    kernel = PageTable(mem, tag="kernel")
    user = PageTable(mem, tag="user")
    kernel.map(0xFFFF_8880_0000_0000, 0, K4, int(PTE.RW))  # root + PDPT + PD + PT
    user.map(0x400000, 0x200000, K4, int(PTE.US))  # root + 3
    data = [mem.alloc(FrameKind.DATA, "user") for _ in range(3)]
    stats = mem.stats()
    assert (stats.page_table, stats.data, stats.total) == (8, 3, 11)
    assert stats.by_tag == {"kernel": 4, "user": 7}
    assert stats.page_table_by_tag == {"kernel": 4, "user": 4}
    assert mem.tag_of(data[0]) == "user" and mem.kind_of(kernel.root) is FrameKind.PAGE_TABLE
    user.unmap(0x400000, K4)
    assert mem.stats().page_table_by_tag == {"kernel": 4, "user": 1}


def test_reserve_takes_fixed_frames() -> None:
    mem = PhysicalMemory(1 << 36)
    mem.reserve(16 << 20, 4 * K4, FrameKind.DATA, "kernel-image")
    assert mem.stats().by_tag == {"kernel-image": 4}
    with pytest.raises(PhysMemError):
        mem.reserve(16 << 20, K4, FrameKind.DATA)  # already reserved (above the allocator's cursor)
    got = {mem.alloc(FrameKind.DATA, count=1024, align=1) for _ in range(4)}
    assert all(not (16 << 20) - 1024 * K4 < p < (16 << 20) + 4 * K4 for p in got)


def test_table_view_is_live_and_read_frame_is_a_copy() -> None:
    mem = PhysicalMemory(1 << 36)
    t = mem.alloc(FrameKind.PAGE_TABLE)
    view = mem.table(t)
    view[3] = 7
    assert mem.read_u64(t + 24) == 7
    copy = mem.read_frame(t)
    copy[3] = 9
    assert mem.read_u64(t + 24) == 7
    assert copy.dtype == np.uint64 and copy.shape == (ENTRIES,)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["alloc", "free", "reserve"]), st.sampled_from(list(FrameKind))), max_size=30)
)
def test_frames_of_counts_what_stats_counts(steps: list[tuple[str, FrameKind]]) -> None:
    mem = PhysicalMemory(1 << 30)
    held: list[int] = []
    next_reserve = 512 << 20
    for op, kind in steps:
        if op == "alloc":
            held.append(mem.alloc(kind, "t", count=1 + len(held) % 3))
        elif op == "free" and held:
            mem.free(held.pop(0))
        elif op == "reserve":
            mem.reserve(next_reserve, 3 * K4, kind, "r")
            next_reserve += 4 * K4
        s = mem.stats()
        assert (mem.frames_of(FrameKind.PAGE_TABLE), mem.frames_of(FrameKind.DATA)) == (s.page_table, s.data)
