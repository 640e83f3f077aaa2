"""The data cache and timer: LRU per set, fills, CLFLUSH, the spatial prefetcher, seeded noise."""

from __future__ import annotations

import statistics

from kaiser.attacks.cache import (
    DRAM_LATENCY,
    LINE,
    QUIET,
    SKYLAKE_L1D,
    SKYLAKE_L2,
    SKYLAKE_L3,
    DataCache,
    DataCacheLevel,
    Hit,
    Timer,
    TimerNoise,
)


def test_latencies_are_the_cited_skylake_numbers() -> None:
    cache = DataCache()
    assert [cache.latency(h) for h in Hit] == [4, 12, 44, DRAM_LATENCY]  # facts/performance.md §1
    assert (SKYLAKE_L1D.sets, SKYLAKE_L2.sets, SKYLAKE_L3.sets) == (64, 1024, 8192)


def test_a_miss_fills_every_level_and_clflush_empties_them() -> None:
    cache = DataCache(spatial_prefetch=False)
    assert cache.access(0x1000) is Hit.DRAM
    assert cache.access(0x1000 + LINE - 1) is Hit.L1  # same line
    cache.clflush(0x1000)
    assert cache.where(0x1000) is Hit.DRAM
    assert cache.access(0x1000) is Hit.DRAM


def test_lru_evicts_the_least_recently_used_way_of_a_set() -> None:
    cache = DataCache((DataCacheLevel("L1", 2 * LINE, 2, 4),), spatial_prefetch=False)  # 1 set, 2 ways
    a, b, c = 0, 64, 128
    cache.access(a)
    cache.access(b)
    cache.access(a)  # b is now LRU
    cache.access(c)
    assert cache.where(a) is Hit.L1 and cache.where(b) is Hit.DRAM and cache.where(c) is Hit.L1


def test_lines_a_page_apart_share_an_l1_set_and_fall_back_to_l3() -> None:
    """256 probe lines at stride 4096 all index L1 set 0 (8 ways) and 16 L2 sets: after the
    reload loop a touched line lives on in L3, still far below DRAM."""
    cache = DataCache(spatial_prefetch=False)
    cache.access(0)
    for i in range(1, 256):
        cache.access(i * 4096)
    assert cache.where(0) is Hit.L3


def test_spatial_prefetcher_fetches_the_buddy_line_only() -> None:
    cache = DataCache()
    cache.access(0x2000)
    assert cache.where(0x2040) is Hit.L2  # the other half of the 128-byte pair
    assert cache.where(0x2080) is Hit.DRAM
    assert cache.where(0x3000) is Hit.DRAM  # never the next page: stride 4096 is safe


def test_timer_is_seeded_and_separates_hits_from_misses_by_a_threshold() -> None:
    a = [Timer(7).measure(44) for _ in range(50)]
    b = [Timer(7).measure(44) for _ in range(50)]
    assert a == b
    timer = Timer(1)
    hits = [timer.measure(44) for _ in range(5000)]
    misses = [timer.measure(DRAM_LATENCY) for _ in range(5000)]
    threshold = (statistics.median(hits) + statistics.median(misses)) / 2
    false_hits = sum(t < threshold for t in misses)
    false_misses = sum(t >= threshold for t in hits)
    assert 0 < false_hits < 50  # rare but present: one probe can lie
    assert false_misses < 20
    assert max(hits) > 1000  # an interrupt outlier
    assert Timer(3, QUIET).measure(44) == TimerNoise().overhead + 44
