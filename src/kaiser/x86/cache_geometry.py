"""Data-cache hierarchy geometry as data: one frozen table per modelled core (L1I, L1D, L2, LLC).

The caches are physically indexed and tagged, 64-byte lines, set-associative. What each number
rests on is said beside it and tagged (`HIERARCHY_SOURCES`, `PREFETCHER_SOURCES`); latencies are
not here (they are a processor's, `kaiser.x86.processor`), only structure and policy. Shared in
every model:

* Replacement: true LRU in every level (first invalid way, else the least recently used), like
  the TLB model. CHOSEN: Intel documents no replacement policy for these parts (L1/L2 are
  commonly reported as tree-PLRU and the LLC as adaptive; a pseudo-LRU differs from LRU only in
  which of the older ways it evicts, which matters little at the working-set sizes the workloads
  sweep).
* The LLC is modelled as one core's view of the whole shared cache (the named part's total LLC,
  no other core competing), indexed by line number modulo the set count. CHOSEN: the real slice
  hash (reverse-engineered, e.g. Maurice et al., RAID 2015) spreads lines over slices but keeps the
  capacity and associativity, which is what the model's hit rates depend on.
* `inclusive_llc`: an inclusive LLC (Intel client parts, Haswell servers) fills on every miss
  from memory and back-invalidates a line it evicts from L1I, L1D and L2. A non-inclusive LLC
  (Skylake-SP and later Xeons) is filled by L2 evictions (a victim cache): lines from memory go to
  L2 and L1 only; an LLC hit leaves the line in the LLC (non-inclusive, not exclusive).
  L2 is non-inclusive of L1 in every part (an L2 eviction leaves the L1 copy).
* Prefetchers (Intel 64 and IA-32 Architectures Optimization Reference Manual 248966, "Data
  Prefetching" section of the Sandy Bridge chapter, and unchanged in kind through Skylake):
  - next-line ("DCU prefetcher"): on an L1D miss by a load or store, the next line of the same
    4 KiB page is fetched into L1D. Page-walk loads and instruction fetches do not train it.
  - L2 streamer: trained by every request L1 sends to L2 (demand misses of L1I/L1D and the
    next-line prefetches); a request above the last one in the same 4 KiB page continues a
    forward stream and prefetches into L2 up to `streamer_distance` lines ahead of it (the manual:
    "up to 20 lines ahead"), at most `streamer_degree` lines per request (the manual: "two
    prefetch requests on every L2 lookup"), never across the page. One stream per page, kept in
    a direct-mapped table of `streamer_streams` entries (the manual: "up to 32 streams");
    backward streams are not modelled (CHOSEN: the workloads walk buffers upward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kaiser.sourced import Source, cited
from kaiser.x86.geometry import KiB, MiB

LINE_SHIFT: Final = 6  # 64-byte lines in every modelled part (SDM Vol. 3A §11.1, Table 11-1)
LINE: Final = 1 << LINE_SHIFT


class CacheGeometryError(ValueError):
    """A cache geometry that cannot be built (a size not a multiple of ways x 64 B, ...)."""


@dataclass(frozen=True)
class CacheLevel:
    """One set-associative cache level: `size` bytes of 64-byte lines in `ways`-way sets."""

    name: str
    size: int
    ways: int

    def __post_init__(self) -> None:
        if self.size <= 0 or self.ways <= 0 or self.size % (self.ways * LINE):
            raise CacheGeometryError(f"{self.name}: {self.size} bytes do not split into {self.ways}-way sets of 64 B")

    @property
    def lines(self) -> int:
        return self.size // LINE

    @property
    def sets(self) -> int:
        return self.lines // self.ways


@dataclass(frozen=True)
class CacheHierarchy:
    """A core's data and instruction caches, inclusion policy and prefetchers."""

    name: str
    part: str  # the processor the sizes are for
    l1i: CacheLevel
    l1d: CacheLevel
    l2: CacheLevel
    llc: CacheLevel
    inclusive_llc: bool
    next_line: bool = True
    streamer_distance: int = 20  # lines ahead of the request (0: no streamer)
    streamer_degree: int = 2  # prefetches issued per L2 request at most
    streamer_streams: int = 32  # stream-table entries (one per 4 KiB page)

    def __post_init__(self) -> None:
        if not 0 <= self.streamer_distance < 64:
            raise CacheGeometryError(f"{self.name}: streamer distance {self.streamer_distance} is not 0..63 lines")
        if self.streamer_distance and (self.streamer_degree <= 0 or self.streamer_streams <= 0):
            raise CacheGeometryError(f"{self.name}: a streamer needs a positive degree and stream count")

    @property
    def levels(self) -> tuple[CacheLevel, CacheLevel, CacheLevel, CacheLevel]:
        return (self.l1i, self.l1d, self.l2, self.llc)


# Intel Skylake client, Core i7-6700K (4 cores, 8 MiB LLC). L1I/L1D 32 KiB 8-way, L2 256 KiB
# 4-way, LLC "up to 2 MB/core, up to 16-way, inclusive": Intel Optimization Reference Manual
# 248966-045, Skylake client chapter (cache parameters table); the same figures side by side with
# Skylake-SP in AnandTech, "The Intel Skylake-X Review" (2017), page "I Keep My Cache Private".
SKYLAKE_CLIENT: Final = CacheHierarchy(
    name="skylake-client",
    part="Core i7-6700K",
    l1i=CacheLevel("L1I", 32 * KiB, 8),
    l1d=CacheLevel("L1D", 32 * KiB, 8),
    l2=CacheLevel("L2", 256 * KiB, 4),
    llc=CacheLevel("LLC", 8 * MiB, 16),
    inclusive_llc=True,
)

# Intel Skylake-SP, Xeon Platinum 8124M (AWS c5, 18 cores, 24.75 MiB LLC). L2 1 MiB 16-way,
# LLC 1.375 MiB per core, 11-way, non-inclusive: AnandTech Skylake-X review (above), Intel
# Optimization Reference Manual 248966 (Skylake Server chapter: "1 MB L2 ... non-inclusive
# shared L3"). The 8124M's 24.75 MiB is 18 x 1.375 MiB (Intel ARK, Xeon Platinum 8124M).
SKYLAKE_SP: Final = CacheHierarchy(
    name="skylake-sp",
    part="Xeon Platinum 8124M (AWS c5)",
    l1i=CacheLevel("L1I", 32 * KiB, 8),
    l1d=CacheLevel("L1D", 32 * KiB, 8),
    l2=CacheLevel("L2", 1 * MiB, 16),
    llc=CacheLevel("LLC", 18 * 1408 * KiB, 11),
    inclusive_llc=False,
)

# Intel Haswell client, Core i7-4770 (4 cores, 8 MiB LLC). L1I/L1D 32 KiB 8-way, L2 256 KiB
# 8-way, inclusive LLC 16-way: Intel Optimization Reference Manual 248966, Haswell chapter
# (cache parameters table); 7-cpu.com "Intel Haswell" (i7-4770) lists the same sizes and ways.
HASWELL: Final = CacheHierarchy(
    name="haswell",
    part="Core i7-4770",
    l1i=CacheLevel("L1I", 32 * KiB, 8),
    l1d=CacheLevel("L1D", 32 * KiB, 8),
    l2=CacheLevel("L2", 256 * KiB, 8),
    llc=CacheLevel("LLC", 8 * MiB, 16),
    inclusive_llc=True,
)

# Intel Sapphire Rapids (Golden Cove cores), Xeon Platinum 8480+ (56 cores, 105 MiB LLC).
# L1D 48 KiB 12-way, L1I 32 KiB 8-way, L2 2 MiB 16-way, LLC 1.875 MiB per core 15-way,
# non-inclusive: Intel Optimization Reference Manual 248966-046 (Golden Cove / Sapphire Rapids
# cache parameters); Chips and Cheese, "Sapphire Rapids: Golden Cove Hits Servers" (2023),
# measured on a Xeon Platinum 8480.
SAPPHIRE_RAPIDS: Final = CacheHierarchy(
    name="sapphire-rapids",
    part="Xeon Platinum 8480+",
    l1i=CacheLevel("L1I", 32 * KiB, 8),
    l1d=CacheLevel("L1D", 48 * KiB, 12),
    l2=CacheLevel("L2", 2 * MiB, 16),
    llc=CacheLevel("LLC", 56 * 1920 * KiB, 15),
    inclusive_llc=False,
)

# The tag of every number above (kaiser.sourced), by field of CacheHierarchy: the prefetchers'
# (the same in every part), and each hierarchy's levels.
_OPT_MANUAL: Final = "Intel Optimization Reference Manual 248966"
PREFETCHER_SOURCES: Final[dict[str, Source]] = {
    "streamer_distance": cited(f"the L2 streamer runs 'up to 20 lines ahead' ({_OPT_MANUAL}, Data Prefetching)"),
    "streamer_degree": cited(f"'two prefetch requests on every L2 lookup' ({_OPT_MANUAL}, Data Prefetching)"),
    "streamer_streams": cited(f"'up to 32 streams' ({_OPT_MANUAL}, Data Prefetching)"),
}
HIERARCHY_SOURCES: Final[dict[str, dict[str, Source]]] = {
    "skylake-client": {
        "l1i": cited(f"32 KiB 8-way ({_OPT_MANUAL}-045, Skylake client cache parameters)"),
        "l1d": cited(f"32 KiB 8-way ({_OPT_MANUAL}-045, Skylake client cache parameters)"),
        "l2": cited(f"256 KiB 4-way ({_OPT_MANUAL}-045; AnandTech, 'The Intel Skylake-X Review', 2017)"),
        "llc": cited(f"8 MiB 16-way inclusive, i7-6700K ({_OPT_MANUAL}-045: up to 2 MB/core, up to 16-way)"),
    },
    "skylake-sp": {
        "l1i": cited(f"32 KiB 8-way ({_OPT_MANUAL}, Skylake Server chapter)"),
        "l1d": cited(f"32 KiB 8-way ({_OPT_MANUAL}, Skylake Server chapter)"),
        "l2": cited(f"1 MiB 16-way ({_OPT_MANUAL}, Skylake Server chapter; AnandTech Skylake-X review)"),
        "llc": cited("24.75 MiB = 18 x 1.375 MiB, 11-way, non-inclusive (Intel ARK, Xeon Platinum 8124M)"),
    },
    "haswell": {
        "l1i": cited(f"32 KiB 8-way ({_OPT_MANUAL}, Haswell chapter; 7-cpu.com 'Intel Haswell')"),
        "l1d": cited(f"32 KiB 8-way ({_OPT_MANUAL}, Haswell chapter; 7-cpu.com 'Intel Haswell')"),
        "l2": cited(f"256 KiB 8-way ({_OPT_MANUAL}, Haswell chapter; 7-cpu.com 'Intel Haswell')"),
        "llc": cited(f"8 MiB 16-way inclusive, i7-4770 ({_OPT_MANUAL}, Haswell chapter)"),
    },
    "sapphire-rapids": {
        "l1i": cited(f"32 KiB 8-way ({_OPT_MANUAL}-046, Golden Cove)"),
        "l1d": cited(f"48 KiB 12-way ({_OPT_MANUAL}-046, Golden Cove)"),
        "l2": cited(f"2 MiB 16-way ({_OPT_MANUAL}-046; Chips and Cheese, 2023)"),
        "llc": cited("105 MiB = 56 x 1.875 MiB, 15-way, non-inclusive (Chips and Cheese, Xeon Platinum 8480)"),
    },
}

HIERARCHIES: Final = {h.name: h for h in (SKYLAKE_CLIENT, SKYLAKE_SP, HASWELL, SAPPHIRE_RAPIDS)}


class UnknownHierarchy(KeyError):
    """No cache hierarchy of that name (the message lists the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_hierarchy(name: str) -> CacheHierarchy:
    """The hierarchy called `name`; an unknown name is an error listing the known ones."""
    try:
        return HIERARCHIES[name]
    except KeyError:
        raise UnknownHierarchy(f"unknown cache geometry {name!r}; known: {', '.join(HIERARCHIES)}") from None
