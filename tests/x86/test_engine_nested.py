"""Nested paging: the compiled engine against `kaiser.x86.nested.NestedMmu`, and the host walk.

The property test reuses the TLB test's random worlds and streams (`test_engine.build_world`,
`make_stream`: corrupted tables, every CPU mode, CR3/CR4/INVLPG/INVPCID, page-table edits) and
the cache test's sequential runs and small hierarchies, in a guest over an EPT of each host page
size, with and without data caches. Required: every counter equal (guest and host walk loads
apart), the final TLB state, registers and memory equal, and the final cache state equal.
The other tests check the host walk against the SDM's rules and the 24 references of a cold
two-dimensional walk (Bhargava et al.) from first principles, not from a run.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import CPUS, GEOMETRIES, K4, M2, RAM, Cpu, assert_same, build_world, make_stream
from test_engine_cache import SMALL, assert_caches_equal, with_runs

from kaiser.x86.bits import CR0, CR4, EFER, PTE
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.engine import Engine
from kaiser.x86.events import EventBuilder, replay_reference
from kaiser.x86.geometry import FOUR_LEVEL
from kaiser.x86.mmu import Mmu
from kaiser.x86.nested import (
    EPT_PAGE,
    EPT_RWX,
    HOST_PAGES,
    HostPageError,
    HostTable,
    NestedMmu,
    walk_references,
)
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory, PhysMemError
from kaiser.x86.rights import Op


def run_both(seed: int, cpu: Cpu, geometry: str, host_page: str, hierarchy: str | None, chunks: int) -> NestedMmu:
    """Warm a NestedMmu on a random world, then replay one stream on it and on an engine copy."""
    rng = random.Random(seed)
    world = build_world(rng, cpu)
    host = HostTable.build(world.mem.size, host_page)
    caches = SMALL[hierarchy] if hierarchy else None
    mmu = NestedMmu(world.mem, world.state, host, features=world.features, geometry=GEOMETRIES[geometry], caches=caches)
    replay_reference(mmu, with_runs(rng, make_stream(rng, world, 120)))  # warm TLBs, PSCs, caches
    events = with_runs(rng, make_stream(rng, world, 300, mmu.state))
    engine = Engine.from_mmu(mmu)
    engine.mem = copy.deepcopy(world.mem)
    mmu.counters = TlbCounters()
    for part in np.array_split(events, chunks):
        got = engine.replay(part)
        want = replay_reference(mmu, part)
        assert got == want, f"seed={seed} host={host_page}: " + ", ".join(
            f"{k} ref={v} engine={getattr(got, k)}" for k, v in want.as_dict().items() if v != getattr(got, k)
        )
    assert_same(mmu, engine, world.mem, f"seed={seed} host={host_page}")
    if mmu.caches is not None:
        assert_caches_equal(mmu.caches, engine, f"seed={seed} host={host_page}")
    return mmu


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    cpu=CPUS,
    geometry=st.sampled_from(sorted(GEOMETRIES)),
    host_page=st.sampled_from(sorted(HOST_PAGES)),
    hierarchy=st.one_of(st.none(), st.sampled_from(sorted(SMALL))),
    chunks=st.integers(1, 3),
)
def test_engine_nested_matches_reference(
    seed: int, cpu: Cpu, geometry: str, host_page: str, hierarchy: str | None, chunks: int
) -> None:
    run_both(seed, cpu, geometry, host_page, hierarchy, chunks)


def test_streams_walk_in_two_dimensions() -> None:
    """The random streams make host walks, through the caches, with PSC hits skipping some."""
    cpu = Cpu(False, True, True, False, False, False, True, True, False, 0, 46, True)
    for seed in range(3):
        c = run_both(seed, cpu, "tiny", ("4k", "2m", "1g")[seed], "small-inclusive", 2).counters
        assert c.host_walks > 0 and c.host_walk_loads == c.host_walks * (4, 3, 2)[seed]
        assert c.walk_loads_saved > 0 and c.walk_loads_l1 + c.walk_loads_l2 > 0


# ---- the host walk against the SDM's rules ------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    size_gib=st.integers(1, 80), host_page=st.sampled_from(sorted(HOST_PAGES)), frac=st.floats(0, 1, exclude_max=True)
)
def test_host_walk_is_an_identity_walk_of_the_sdm_format(size_gib: int, host_page: str, frac: float) -> None:
    size = size_gib << 30
    host = HostTable.build(size, host_page)
    gpa = int(frac * size) & ~7
    hw = host.walk(gpa)
    assert hw.hpa == gpa  # identity
    levels = {"4k": 4, "2m": 3, "1g": 2}[host_page]
    assert len(hw.entries) == levels == len(host.shifts)
    assert all(host.eptp >= size and size <= a < host.end for a in hw.entries)  # above guest RAM
    for depth, address in enumerate(hw.entries):
        value = host.entry(address)
        assert value & EPT_RWX == EPT_RWX  # read, write, execute allowed
        shift = (39, 30, 21, 12)[depth]
        assert (address & 0xFFF) >> 3 == (gpa >> shift) & 0x1FF  # bits of the gpa select the entry
        last = depth == levels - 1
        assert bool(value & EPT_PAGE) == (last and shift > 12)  # bit 7 only where a page is mapped
        if not last:  # bits 51:12 hold the next table, which holds the next entry read
            assert value & ((1 << 52) - 1) & ~0xFFF == hw.entries[depth + 1] & ~0xFFF
    page = 1 << HOST_PAGES[host_page]
    assert host.entry(hw.entries[-1]) & ((1 << 52) - 1) & ~0xFFF == gpa & ~(page - 1)


def test_host_table_bounds() -> None:
    host = HostTable.build(RAM, "4k")
    with pytest.raises(PhysMemError):
        host.walk(RAM)
    with pytest.raises(PhysMemError):
        host.entry(host.eptp - 8)
    with pytest.raises(HostPageError):
        HostTable.build(RAM, "16k")
    # one level a page size larger: 2 MiB host pages end at the PD level, 1 GiB at the PDPT
    assert [len(HostTable.build(RAM, p).shifts) for p in ("4k", "2m", "1g")] == [4, 3, 2]


# ---- a cold two-dimensional walk: the 24 references -----------------------------------------------
def _guest() -> tuple[PhysicalMemory, CpuState, int, int]:
    """A 4-level guest with one 4 KiB user page and one 2 MiB kernel page."""
    mem = PhysicalMemory(RAM)
    pt = PageTable(mem, FOUR_LEVEL)
    user, big = 0x400000, 0xFFFFFFFF80000000
    pt.map(user, 0x4000_0000 + 0x5000, K4, PTE.US | PTE.RW)
    pt.map(big, 0x6000_0000, M2, PTE.RW, page_size=M2)
    state = CpuState(cr3=pt.cr3(), cr0=CR0.PE | CR0.PG, cr4=int(CR4.PAE), efer=EFER.LME | EFER.LMA, cpl=0)
    return mem, state, user, big


@pytest.mark.parametrize("host_page", sorted(HOST_PAGES))
def test_cold_walk_makes_one_host_walk_per_guest_table_and_one_for_the_data(host_page: str) -> None:
    mem, state, user, _ = _guest()
    host = HostTable.build(mem.size, host_page)
    mmu = NestedMmu(mem, state, host, features=CpuFeatures(maxphyaddr=mem.maxphyaddr))
    mmu.access(user, Op.READ)
    c = mmu.counters
    levels = len(host.shifts)
    assert (c.walk_loads, c.host_walks, c.host_walk_loads) == (4, 5, 5 * levels)
    assert c.walk_loads + c.host_walk_loads == walk_references(4, levels)
    assert walk_references(4, 4) == 24  # Bhargava et al., ASPLOS 2008
    # With the TLB emptied and the paging-structure caches kept, the PDE cache gives the guest
    # PT's host address: one guest load and one host walk (the data's) remain.
    before = mmu.counters.copy()
    mmu.tlb.invalidate_tlb(pcid=None, globals_too=True)
    mmu.access(user, Op.READ)
    d = mmu.counters - before
    assert (d.walk_loads, d.walk_loads_saved, d.host_walks, d.host_walk_loads) == (1, 3, 1, levels)


def test_bare_metal_counts_no_host_walk_and_the_same_guest_walk() -> None:
    mem, state, user, big = _guest()
    f = CpuFeatures(maxphyaddr=mem.maxphyaddr)
    native = Mmu(copy.deepcopy(mem), state, features=f)
    # 2 MiB host pages: no guest page here is larger, so the TLB holds the same entries
    nested = NestedMmu(mem, state, HostTable.build(mem.size, "2m"), features=f)
    for mmu in (native, nested):
        for va in (user, big, user + 8, big + K4):
            mmu.access(va, Op.READ)
    n, v = native.counters, nested.counters
    assert n.host_walks == n.host_walk_loads == 0
    assert (v.walks, v.walk_loads, v.walk_loads_saved) == (n.walks, n.walk_loads, n.walk_loads_saved)


def test_combined_mapping_is_the_smaller_page_and_invlpg_drops_it() -> None:
    """A 2 MiB guest page over 4 KiB host pages is cached as 4 KiB pieces (each a walk), and
    INVLPG of one address drops the pieces of the whole 2 MiB page (SDM §4.10.4.1)."""
    mem, state, _, big = _guest()
    f = CpuFeatures(maxphyaddr=mem.maxphyaddr)
    for host_page, walks in (("4k", 2), ("2m", 1), ("1g", 1)):
        mmu = NestedMmu(copy.deepcopy(mem), state, HostTable.build(mem.size, host_page), features=f)
        mmu.access(big, Op.READ)
        mmu.access(big + K4, Op.READ)
        assert mmu.counters.walks == walks, host_page
        shifts = {e.shift for _, e in mmu.tlb.entries()}
        assert shifts == {min(21, HOST_PAGES[host_page])}
        assert all(e.page_shift == 21 for _, e in mmu.tlb.entries())
        mmu.invlpg(big + 5 * K4)
        assert not list(mmu.tlb.entries())


def test_engine_from_a_nested_mmu_is_nested() -> None:
    mem, state, user, big = _guest()
    host = HostTable.build(mem.size, "2m")
    mmu = NestedMmu(mem, state, host, features=CpuFeatures(maxphyaddr=mem.maxphyaddr))
    engine = Engine.from_mmu(mmu)
    assert engine.host == host
    eb = EventBuilder()
    for va in (user, big, user + 64, big + 3 * K4):
        eb.access(va, Op.READ, 0)
    assert engine.replay(eb.array()) == replay_reference(mmu, eb.array())
    assert engine.counters.host_walks > 0
