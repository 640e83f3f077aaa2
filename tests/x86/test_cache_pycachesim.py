"""The reference caches against an independent simulator: pycachesim (RRZE-HPC, C backend).

Where the two models mean the same thing they must count the same: set-associative LRU levels
filled on every miss on the way (L1 -> L2 -> LLC), set = line mod sets (powers of two or not),
loads only, no prefetchers. pycachesim has no back-invalidation, so the LLC is made big enough
never to evict (then an inclusive LLC changes nothing). Skipped when pycachesim is not installed
(`pip install pycachesim`).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.x86.cache import KIND_DATA, KIND_FETCH, KIND_WALK, Caches
from kaiser.x86.cache_geometry import CacheHierarchy, CacheLevel
from kaiser.x86.counters import TlbCounters

cachesim = pytest.importorskip("cachesim")

POOL = 200  # distinct lines a stream may touch (the LLC holds them all)


def _ours(l1: tuple[int, int], l2: tuple[int, int]) -> Caches:
    h = CacheHierarchy(
        "diff",
        "test",
        l1i=CacheLevel("L1I", l1[0] * l1[1] * 64, l1[1]),
        l1d=CacheLevel("L1D", l1[0] * l1[1] * 64, l1[1]),
        l2=CacheLevel("L2", l2[0] * l2[1] * 64, l2[1]),
        llc=CacheLevel("LLC", POOL * 64, POOL),  # one set of POOL ways: never evicts
        inclusive_llc=True,
        next_line=False,
        streamer_distance=0,
    )
    return Caches(h, TlbCounters())


def _theirs(l1: tuple[int, int], l2: tuple[int, int]) -> tuple[object, list[object]]:
    mem = cachesim.MainMemory()
    llc = cachesim.Cache("LLC", 1, POOL, 64, "LRU")
    mem.load_to(llc)
    mem.store_from(llc)
    c2 = cachesim.Cache("L2", l2[0], l2[1], 64, "LRU", load_from=llc, store_to=llc)
    c1 = cachesim.Cache("L1", l1[0], l1[1], 64, "LRU", load_from=c2, store_to=c2)
    return cachesim.CacheSimulator(c1, mem), [c1, c2, llc]


GEOM = st.tuples(st.integers(1, 9), st.integers(1, 6))  # (sets, ways), any set count


@settings(max_examples=150, deadline=None)
@given(
    l1=GEOM,
    l2=GEOM,
    kind=st.sampled_from([KIND_DATA, KIND_WALK, KIND_FETCH]),
    lines=st.lists(st.integers(0, POOL - 1), min_size=1, max_size=400),
    offsets=st.integers(0, 63),
)
def test_hits_and_misses_per_level_match_pycachesim(
    l1: tuple[int, int], l2: tuple[int, int], kind: int, lines: list[int], offsets: int
) -> None:
    ours = _ours(l1, l2)
    sim, levels = _theirs(l1, l2)
    for line in lines:
        pa = line * 64 + offsets
        ours.access(pa, kind)
        sim.load(pa, length=1)  # type: ignore[attr-defined]
    stats = {s["name"]: s for s in sim.stats()}  # type: ignore[attr-defined]
    c = ours.counters
    l1_hits, l1_misses = (c.l1i_hits, c.l1i_misses) if kind == KIND_FETCH else (c.l1d_hits, c.l1d_misses)
    assert (l1_hits, l1_misses) == (stats["L1"]["HIT_count"], stats["L1"]["MISS_count"])
    assert (c.l2_hits, c.l2_misses) == (stats["L2"]["HIT_count"], stats["L2"]["MISS_count"])
    assert (c.llc_hits, c.llc_misses) == (stats["LLC"]["HIT_count"], stats["LLC"]["MISS_count"])
    assert c.dram_reads == stats["MEM"]["LOAD_count"]
    assert c.llc_back_invalidations == 0
