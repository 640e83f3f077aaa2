"""A physically indexed data-cache hierarchy with LRU, CLFLUSH, and a noisy cycle timer.

What Flush+Reload needs from a cache and nothing more: L1D, L2 and a last-level cache (set
associative, 64-byte lines, true LRU per set, fill on miss into every level, non-inclusive), the
L2 spatial ("adjacent line") prefetcher, `clflush` from every level, and a timer that turns the
level a load hit into measured cycles with seeded jitter and outliers. Every number is a named
parameter in one table below with its source. The model is not a coherence or timing simulator:
one core, no slices, no MSHRs, no stream prefetcher (Intel's stream prefetchers do not cross a
4 KiB page, so they never see a stride-4096 probe; Intel Optimization Manual 248966, "Data
prefetching").
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Final

from kaiser.sourced import Source, chosen, cited
from kaiser.x86.processor import DEFAULT_PROCESSOR

LINE: Final = 64  # bytes per cache line (Intel Optimization Manual 248966, Skylake: 64-byte lines)


class Hit(enum.IntEnum):
    """Where a load found its line."""

    L1 = 1
    L2 = 2
    L3 = 3
    DRAM = 4


@dataclass(frozen=True)
class DataCacheLevel:
    """One cache level: total bytes, ways, load-to-use latency in cycles."""

    name: str
    size: int
    ways: int
    latency: int

    @property
    def sets(self) -> int:
        return self.size // (LINE * self.ways)

    def __post_init__(self) -> None:
        sets = self.size // (LINE * self.ways) if self.ways > 0 else 0
        if sets < 1 or sets & (sets - 1) or sets * LINE * self.ways != self.size:
            raise ValueError(f"{self.name}: {self.size} bytes / {self.ways} ways is not a power-of-two set count")


# ---- parameters (one table; sources next to each value) -------------------------------------
# The levels are the default processor's (kaiser.x86.processor: Skylake client, i7-6700K): L1D
# 32 KiB 8-way, L2 256 KiB 4-way, L3 8 MiB 16-way, 4/12/44 cycles, each tagged there.
_P: Final = DEFAULT_PROCESSOR
SKYLAKE_L1D: Final = DataCacheLevel("L1D", _P.caches.l1d.size, _P.caches.l1d.ways, _P.latencies.l1_hit)
SKYLAKE_L2: Final = DataCacheLevel("L2", _P.caches.l2.size, _P.caches.l2.ways, _P.latencies.l2_hit)
SKYLAKE_L3: Final = DataCacheLevel("L3", _P.caches.llc.size, _P.caches.llc.ways, _P.latencies.llc_hit)
# DRAM: the attack's own figure, not the processor's 195 (its cost-model row, 7-cpu.com): kept so
# that the attack's results stay as they were measured and documented.
DRAM_LATENCY: Final = 200
DRAM_SOURCE: Final = cited(
    "~96 ns unloaded on Skylake-SP (AnandTech, 'Skylake-SP vs EPYC', LMBench random load, 2017) ~= 200 cycles at "
    "2.1 GHz; one secondary measurement, a parameter, not a fact",
    " [u]",
)


@dataclass(frozen=True)
class TimerNoise:
    """How `rdtscp; load; rdtscp` turns a latency into a measurement. Model parameters, not
    measurements [u]: chosen so that, as on real machines (Lipp et al., Meltdown, USENIX Security
    2018, §4 and Fig. 4), hits and misses are separable by one threshold but single probes
    sometimes lie, so an attacker must retry and vote."""

    overhead: int = 24  # fixed cost of the serialised timestamp pair, cycles
    jitter_abs: float = 4.0  # Gaussian jitter, cycles (sd)
    jitter_rel: float = 0.08  # plus Gaussian jitter proportional to the latency (sd / latency)
    interrupt_rate: float = 5e-4  # an interrupt lands inside the timed window (hit looks like a miss)
    interrupt_cycles: tuple[int, int] = (2_000, 20_000)
    short_rate: float = 2e-3  # a mis-ordered timestamp (no fence): a miss reads as fast
    short_scale: tuple[float, float] = (0.05, 0.45)


# The tag of every number of TimerNoise (kaiser.sourced): all CHOSEN, as its docstring says.
_SEPARABLE: Final = "hits and misses separable by one threshold, as on real machines (Meltdown §4, Fig. 4)"
TIMER_NOISE_SOURCES: Final[dict[str, Source]] = {
    "overhead": chosen("24 cycles for the serialised rdtscp pair; any constant carries no information", " [u]"),
    "jitter_abs": chosen(f"4 cycles sd of Gaussian jitter, {_SEPARABLE}", " [u]"),
    "jitter_rel": chosen(f"8 % of the latency as sd, {_SEPARABLE}", " [u]"),
    "interrupt_rate": chosen(
        "1 in 2,000 timed windows hit by an interrupt, so a hit sometimes reads as a miss", " [u]"
    ),
    "interrupt_cycles": chosen("an interrupt adds 2,000-20,000 cycles (uniform)", " [u]"),
    "short_rate": chosen("1 in 500 timestamps mis-ordered (no fence), so a miss sometimes reads as fast", " [u]"),
    "short_scale": chosen("a mis-ordered read shows 5-45 % of the latency", " [u]"),
}


QUIET: Final = TimerNoise(jitter_abs=0.0, jitter_rel=0.0, interrupt_rate=0.0, short_rate=0.0)


class _Level:
    """One set-associative level with true LRU: each set is a list of line numbers, MRU first."""

    def __init__(self, geometry: DataCacheLevel) -> None:
        self.geometry = geometry
        self.mask = geometry.sets - 1
        self.ways = geometry.ways
        self.sets: list[list[int]] = [[] for _ in range(geometry.sets)]

    def lookup(self, line: int, touch: bool = True) -> bool:
        ways = self.sets[line & self.mask]
        if line not in ways:
            return False
        if touch and ways[0] != line:
            ways.remove(line)
            ways.insert(0, line)
        return True

    def fill(self, line: int) -> None:
        ways = self.sets[line & self.mask]
        if line in ways:
            ways.remove(line)
        elif len(ways) >= self.ways:
            ways.pop()  # evict the LRU way
        ways.insert(0, line)

    def flush(self, line: int) -> None:
        ways = self.sets[line & self.mask]
        if line in ways:
            ways.remove(line)


@dataclass
class CacheStats:
    """Counts by outcome, for reports."""

    hits: dict[Hit, int] = field(default_factory=lambda: dict.fromkeys(Hit, 0))
    flushes: int = 0
    prefetches: int = 0


class DataCache:
    """L1D + L2 + L3 over DRAM, physically indexed (L1 is VIPT with index bits inside the page
    offset, so physical indexing is exact for it too)."""

    def __init__(
        self,
        levels: tuple[DataCacheLevel, ...] = (SKYLAKE_L1D, SKYLAKE_L2, SKYLAKE_L3),
        dram_latency: int = DRAM_LATENCY,
        *,
        spatial_prefetch: bool = True,
    ) -> None:
        self.levels = [_Level(g) for g in levels]
        self.dram_latency = dram_latency
        self.spatial_prefetch = spatial_prefetch
        self.stats = CacheStats()

    def latency(self, hit: Hit) -> int:
        return self.dram_latency if hit is Hit.DRAM else self.levels[hit - 1].geometry.latency

    def where(self, pa: int) -> Hit:
        """Which level holds `pa`'s line, without touching LRU state."""
        line = pa // LINE
        for i, level in enumerate(self.levels):
            if level.lookup(line, touch=False):
                return Hit(i + 1)
        return Hit.DRAM

    def access(self, pa: int) -> Hit:
        """A load of `pa`: find the line, fill it into every level that missed."""
        line = pa // LINE
        hit = Hit.DRAM
        for i, level in enumerate(self.levels):
            if level.lookup(line):
                hit = Hit(i + 1)
                break
        for level in self.levels[: hit - 1]:
            level.fill(line)
        if hit is Hit.DRAM and self.spatial_prefetch:
            # L2 spatial prefetcher: complete the 128-byte-aligned pair (Intel Optimization Manual
            # 248966, "Data prefetching to the L2 and last level cache"). Never a probe line at
            # stride 4096; the neighbouring index at stride 64.
            buddy = line ^ 1
            for level in self.levels[1:]:
                level.fill(buddy)
            self.stats.prefetches += 1
        self.stats.hits[hit] += 1
        return hit

    def clflush(self, pa: int) -> None:
        """CLFLUSH: invalidate the line from every level of the hierarchy (SDM Vol. 2A, CLFLUSH)."""
        line = pa // LINE
        for level in self.levels:
            level.flush(line)
        self.stats.flushes += 1


class Timer:
    """The cycle counter as a user program sees it around one load: latency plus seeded noise."""

    def __init__(self, seed: int, noise: TimerNoise = TimerNoise()) -> None:
        self.rng = random.Random(seed)
        self.noise = noise

    def measure(self, latency: int) -> int:
        n, rng = self.noise, self.rng
        cycles = n.overhead + latency + rng.gauss(0.0, n.jitter_abs) + rng.gauss(0.0, n.jitter_rel * latency)
        roll = rng.random()
        if roll < n.interrupt_rate:
            cycles += rng.randint(*n.interrupt_cycles)
        elif roll < n.interrupt_rate + n.short_rate:
            cycles *= rng.uniform(*n.short_scale)
        return max(1, round(cycles))
