"""The data caches: the compiled engine against the reference `kaiser.x86.cache`, and the rules.

The property test reuses the TLB test's random worlds and streams (`test_engine.build_world`,
`make_stream`: corrupted page tables, every CPU mode, CR3/CR4/INVLPG/INVPCID, page-table edits)
and adds sequential runs of line-sized steps so the prefetchers see streams. Small cache
geometries (inclusive and not, a set count that is not a power of two, a short streamer) make
evictions, back-invalidations and prefetches frequent. Required: every counter equal (TLB and
cache), and the final cache state equal (tags, LRU stamps, prefetch flags, stream table, clock).
"""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import CPUS, GEOMETRIES, Cpu, build_world, make_stream

from kaiser.x86.cache import Caches
from kaiser.x86.cache_geometry import HIERARCHIES, CacheGeometryError, CacheHierarchy, CacheLevel
from kaiser.x86.counters import TlbCounters
from kaiser.x86.engine import Engine
from kaiser.x86.engine_cache import CACHE_COUNTER_NAMES
from kaiser.x86.events import EVENT_DTYPE, Ev, EventBuilder, replay_reference
from kaiser.x86.mmu import Mmu
from kaiser.x86.rights import Op

K = 1024
SMALL_INCLUSIVE = CacheHierarchy(
    "small-inclusive",
    "test",
    l1i=CacheLevel("L1I", 512, 2),
    l1d=CacheLevel("L1D", 1 * K, 2),
    l2=CacheLevel("L2", 4 * K, 4),
    llc=CacheLevel("LLC", 8 * K, 4),
    inclusive_llc=True,
    streamer_distance=6,
    streamer_degree=2,
    streamer_streams=4,
)
SMALL_VICTIM = CacheHierarchy(
    "small-victim",
    "test",
    l1i=CacheLevel("L1I", 1 * K, 4),
    l1d=CacheLevel("L1D", 768, 4),  # 3 sets: not a power of two
    l2=CacheLevel("L2", 3 * K, 2),  # 24 sets
    llc=CacheLevel("LLC", 12 * K, 4),  # 48 sets
    inclusive_llc=False,
    streamer_distance=20,
    streamer_degree=3,
    streamer_streams=3,
)
NO_PREFETCH = CacheHierarchy(
    "no-prefetch",
    "test",
    l1i=CacheLevel("L1I", 512, 2),
    l1d=CacheLevel("L1D", 512, 2),
    l2=CacheLevel("L2", 2 * K, 2),
    llc=CacheLevel("LLC", 4 * K, 8),
    inclusive_llc=True,
    next_line=False,
    streamer_distance=0,
)
SMALL = {h.name: h for h in (SMALL_INCLUSIVE, SMALL_VICTIM, NO_PREFETCH)}
CACHE_FIELDS = CACHE_COUNTER_NAMES  # the engine's list; it is checked against TlbCounters at import


def with_runs(rng: random.Random, events: np.ndarray) -> np.ndarray:
    """`events` with, after some accesses, a run of accesses at the following 64-byte lines
    (same kind and CPL), up and sometimes across a page boundary."""
    rows = []
    for ev in events.tolist():
        rows.append(ev)
        kind, cpl, aux, a, _ = ev
        if kind <= Ev.FETCH and rng.random() < 0.15:
            step = rng.choice((64, 64, 64, 128, 8))
            for k in range(1, rng.randrange(2, 30)):
                rows.append((kind, cpl, aux, (a + k * step) & ((1 << 64) - 1), 0))
    return np.array(rows, EVENT_DTYPE)


def assert_caches_equal(ref: Caches, engine: Engine, what: str) -> None:
    got = Caches(ref.hierarchy, TlbCounters())
    engine.store_caches(got)
    for a, b in zip(ref.arrays, got.arrays, strict=True):
        for name in ("tag", "stamp", "pf"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), f"{what}: {a.level.name}.{name} differs"
    assert np.array_equal(ref.streams, got.streams), f"{what}: streamer table differs"
    assert ref.clock == got.clock, f"{what}: cache LRU clock differs"


def run_both(seed: int, cpu: Cpu, geometry: str, hierarchy: CacheHierarchy, chunks: int, n: int = 300) -> Mmu:
    rng = random.Random(seed)
    world = build_world(rng, cpu)
    tlb_geometry = GEOMETRIES[geometry]
    mmu = Mmu(world.mem, world.state, features=world.features, geometry=tlb_geometry, caches=hierarchy)
    replay_reference(mmu, with_runs(rng, make_stream(rng, world, 100)))  # warm TLBs and caches
    events = with_runs(rng, make_stream(rng, world, n, mmu.state))
    engine = Engine.from_mmu(mmu)
    engine.mem = copy.deepcopy(world.mem)
    mmu.counters = TlbCounters()
    for part in np.array_split(events, chunks):
        got = engine.replay(part)
        want = replay_reference(mmu, part)
        assert got == want, f"seed={seed}: " + ", ".join(
            f"{k} ref={v} engine={getattr(got, k)}" for k, v in want.as_dict().items() if v != getattr(got, k)
        )
    assert mmu.caches is not None
    assert_caches_equal(mmu.caches, engine, f"seed={seed} {hierarchy.name}")
    return mmu


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    cpu=CPUS,
    geometry=st.sampled_from(sorted(GEOMETRIES)),
    hierarchy=st.sampled_from(sorted(SMALL)),
    chunks=st.integers(1, 3),
)
def test_engine_caches_match_reference(seed: int, cpu: Cpu, geometry: str, hierarchy: str, chunks: int) -> None:
    run_both(seed, cpu, geometry, SMALL[hierarchy], chunks)


def invariants(mmu: Mmu) -> None:
    """What holds after any stream: inclusion, counts that must add up."""
    c, caches = mmu.counters, mmu.caches
    assert caches is not None
    h = caches.hierarchy
    if h.inclusive_llc:  # every L1/L2 line is in an inclusive LLC
        inner = caches.l1i.lines() | caches.l1d.lines() | caches.l2.lines()
        assert inner <= caches.llc.lines(), "an inclusive LLC lost a line its inner caches hold"
    # Every demand lookup below L1 is an L1 miss; every LLC lookup an L2 miss.
    assert c.l2_hits + c.l2_misses == c.l1i_misses + c.l1d_misses
    assert c.llc_hits + c.llc_misses == c.l2_misses
    assert c.dram_reads >= c.llc_misses
    assert c.walk_loads_l1 + c.walk_loads_l2 + c.walk_loads_llc + c.walk_loads_dram == c.walk_loads
    assert c.pf_nl_useful <= c.pf_nl_issued and c.pf_l2_useful <= c.pf_l2_issued
    assert c.dram_reads <= c.llc_misses + c.pf_nl_issued + c.pf_l2_issued
    if not h.next_line:
        assert c.pf_nl_issued == 0
    if not h.streamer_distance:
        assert c.pf_l2_issued == 0


def test_streams_exercise_every_cache_path_and_invariants_hold() -> None:
    """Across a few seeds every cache counter moves (so the property test compares something),
    and the invariants hold for every hierarchy."""
    total = dict.fromkeys(CACHE_FIELDS, 0)
    cpu = Cpu(False, True, True, True, True, True, True, True, False, 0x0C, 46, True)
    for seed in range(3):
        for hierarchy in SMALL.values():
            mmu = run_both(seed, cpu, "tiny", hierarchy, 2, n=500)
            invariants(mmu)
            for k in CACHE_FIELDS:
                total[k] += getattr(mmu.counters, k)
    assert all(total.values()), f"never reached: {[k for k, v in total.items() if not v]}"


def _walk_world() -> tuple[Mmu, list[int]]:
    cpu = Cpu(False, False, True, False, False, False, True, True, False, 0, 46, True)
    world = build_world(random.Random(2), cpu)
    pages = [va for va, size in world.pages if size == 4096 and va < 1 << 47][:6]
    # Skylake-client L1D, smaller L2 and LLC so that the eviction sweep is short.
    h = dataclasses.replace(
        HIERARCHIES["skylake-client"], l2=CacheLevel("L2", 64 * K, 4), llc=CacheLevel("LLC", 256 * K, 16)
    )
    mmu = Mmu(world.mem, world.state, features=world.features, caches=h)
    return mmu, pages


def test_refill_after_flush_reads_cached_entries() -> None:
    """A flushing CR3 write empties the TLB and PSCs but not the caches: the refill walks' loads
    are served by L1D or L2 (the six data lines share L1 set 0 with some entries); after the lines
    are evicted (a sweep over more than the LLC) they come from DRAM."""
    mmu, pages = _walk_world()
    cr3 = mmu.state.cr3

    def touch_all() -> TlbCounters:
        eb = EventBuilder()
        eb.mov_cr3(cr3)  # PCIDE=0: flushes every non-global entry and the PSCs
        eb.accesses(pages, Op.READ, 0)
        return replay_reference(mmu, eb.array())

    touch_all()
    hot = touch_all()
    assert hot.walks and hot.walk_loads_l1 and hot.walk_loads_l1 + hot.walk_loads_l2 == hot.walk_loads, hot
    caches = mmu.caches
    assert caches is not None
    for line in range(1 << 20, (1 << 20) + 2 * caches.hierarchy.llc.lines):  # evict everything
        caches.access(line << 6, 1)
    cold = touch_all()
    assert cold.walk_loads_dram > 0 and cold.walk_loads_l1 < cold.walk_loads, cold


def test_streamer_covers_a_sequential_sweep() -> None:
    """A sweep over fresh lines, 64 B at a time: after the streams start, most L1 misses hit L2
    lines the streamer brought, and each prefetched line is used once."""
    caches = Caches(HIERARCHIES["skylake-client"], TlbCounters())
    base = 1 << 30
    for k in range(64 * 64):  # 64 pages
        caches.access(base + 64 * k, 1)
    c = caches.counters
    assert c.pf_l2_useful > 0.8 * c.l2_hits and c.l2_misses < 0.1 * (c.l1d_misses)
    assert c.pf_nl_useful > 0.4 * c.l1d_hits


def test_lru_keeps_the_recently_used_lines() -> None:
    """ways + 1 lines of one set, the first re-touched before the last comes: the second one is
    evicted (true LRU), not the first."""
    h = HIERARCHIES["skylake-client"]
    caches = Caches(h, TlbCounters())
    sets, ways = h.l1d.sets, h.l1d.ways
    lines = [k * sets for k in range(ways + 1)]
    for ln in lines[:ways]:
        caches.access(ln << 6, 2)  # page-walk loads: no next-line prefetch
    caches.access(lines[0] << 6, 2)
    caches.access(lines[-1] << 6, 2)
    assert caches.l1d.find(lines[0]) >= 0 and caches.l1d.find(lines[1]) < 0


def test_geometries_are_consistent() -> None:
    for h in HIERARCHIES.values():
        assert all(lv.sets * lv.ways * 64 == lv.size for lv in h.levels), h.name
        assert h.l1d.size < h.l2.size < h.llc.size, h.name
    with pytest.raises(CacheGeometryError):
        CacheLevel("bad", 1000, 3)
