"""TLB and paging-structure-cache geometry as data: one frozen table per modelled core.

Every number cites its source (facts/performance.md §1 lists them). Sizes the vendor does not
publish are marked CHOSEN and say why. The structures are set-associative with LRU replacement;
`index` names the set-index function (see `set_index`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kaiser.sourced import Source, chosen, cited

SHIFT_4K: Final = 12
SHIFT_2M: Final = 21
SHIFT_1G: Final = 30

# Set-index functions, as small integers so a compiled engine can switch on them.
INDEX_MOD: Final = 0  # set = tag mod sets
INDEX_XOR: Final = 1  # set = (tag XOR tag >> log2(sets)) mod sets (TLBleed's "XOR-7" for 128 sets)


class GeometryError(ValueError):
    """A TLB geometry that cannot be built (entries not a multiple of ways, ...)."""


@dataclass(frozen=True)
class CacheGeometry:
    """One set-associative structure: `entries` split into `entries // ways` sets of `ways`.

    For a TLB, `shifts` are the page sizes (log2 bytes) it holds, smallest first. For a
    paging-structure cache, `shifts` is the single shift of the level whose entries it caches
    (PDE cache: 21, tagged by VA bits 47:21; SDM §4.10.3.1).
    """

    name: str
    entries: int
    ways: int
    shifts: tuple[int, ...]
    index: int = INDEX_MOD  # INDEX_MOD or INDEX_XOR

    def __post_init__(self) -> None:
        if self.entries <= 0 or self.ways <= 0 or self.entries % self.ways:
            raise GeometryError(f"{self.name}: {self.entries} entries do not split into {self.ways}-way sets")
        if not self.shifts or list(self.shifts) != sorted(set(self.shifts)):
            raise GeometryError(f"{self.name}: shifts {self.shifts} must be non-empty, distinct and ascending")
        if self.index not in (INDEX_MOD, INDEX_XOR):
            raise GeometryError(f"{self.name}: unknown set-index function {self.index}")
        if self.index == INDEX_XOR and self.sets & (self.sets - 1):
            raise GeometryError(f"{self.name}: the XOR index needs a power-of-two set count, not {self.sets}")

    @property
    def sets(self) -> int:
        return self.entries // self.ways


def set_index(geometry: CacheGeometry, tag: int) -> int:
    """Set of `tag` (a page number, or a paging-structure-cache tag).

    `INDEX_MOD`: the low bits of the tag. `INDEX_XOR`: the low log2(sets) bits XOR the next
    log2(sets) bits; for Skylake's 128-set STLB that is VA[18:12] XOR VA[25:19], the "XOR-7"
    function TLBleed (Gras et al., USENIX Security 2018) reverse-engineered for 4 KiB pages.
    Applying the same function to the 2 MiB page number is our assumption (not measured).
    """
    sets = geometry.sets
    if geometry.index == INDEX_XOR:
        bits = sets.bit_length() - 1
        return (tag ^ (tag >> bits)) & (sets - 1)
    return tag % sets


@dataclass(frozen=True)
class TlbGeometry:
    """A core's translation caches.

    `itlb`/`dtlb` are the L1 structures searched first for fetches/data; `stlb` the unified
    second level; `psc` the paging-structure caches (SDM §4.10.3), one per non-leaf level shift.
    Within one level each page size is held by at most one structure; a page size no structure of
    a level holds is cached there as pieces of the largest smaller size it holds ("fractured",
    SDM §4.10.2.3: a processor may cache multiple smaller-page entries for a large page).
    """

    name: str
    itlb: tuple[CacheGeometry, ...]
    dtlb: tuple[CacheGeometry, ...]
    stlb: tuple[CacheGeometry, ...]
    psc: tuple[CacheGeometry, ...]

    def __post_init__(self) -> None:
        for level_name, level in (("itlb", self.itlb), ("dtlb", self.dtlb), ("stlb", self.stlb)):
            held = [s for g in level for s in g.shifts]
            if len(held) != len(set(held)):
                raise GeometryError(f"{self.name}: two {level_name} structures hold the same page size")
            if level and SHIFT_4K not in held:
                raise GeometryError(f"{self.name}: the {level_name} must hold 4 KiB pages")
        psc_shifts = [g.shifts for g in self.psc]
        if any(len(s) != 1 for s in psc_shifts) or len({s[0] for s in psc_shifts}) != len(psc_shifts):
            raise GeometryError(f"{self.name}: each paging-structure cache caches exactly one level")


# Intel Skylake client (e.g. Core i7-6700K), one logical processor.
SKYLAKE_CLIENT: Final = TlbGeometry(
    name="skylake-client",
    itlb=(
        # Intel Optimization Reference Manual 248966-045, Table 2-15: 128 entries, 8-way.
        CacheGeometry("iTLB 4K", 128, 8, (SHIFT_4K,)),
        # Same table: "8 per thread" for 2M/4M, associativity not given: modelled fully associative.
        # No 1 GiB iTLB is listed: 1 GiB code pages are cached as 2 MiB pieces (fractured).
        CacheGeometry("iTLB 2M", 8, 8, (SHIFT_2M,)),
    ),
    dtlb=(
        CacheGeometry("dTLB 4K", 64, 4, (SHIFT_4K,)),  # 248966-045 Table 2-15: 64 entries, 4-way
        CacheGeometry("dTLB 2M", 32, 4, (SHIFT_2M,)),  # same: 32 entries, 4-way
        CacheGeometry("dTLB 1G", 4, 4, (SHIFT_1G,)),  # same: 4 entries, 4-way
    ),
    stlb=(
        # WikiChip Skylake; TLBleed (USENIX Sec 2018): 1536 entries, 12-way (128 sets), 4K and 2M
        # pages share it, set index hashes VA bits by XOR (see `set_index`).
        CacheGeometry("STLB 4K+2M", 1536, 12, (SHIFT_4K, SHIFT_2M), INDEX_XOR),
        # [u] secondary sources only (facts/performance.md §1): 16 entries, 4-way.
        CacheGeometry("STLB 1G", 16, 4, (SHIFT_1G,)),
    ),
    psc=(
        # Paging-structure caches (SDM §4.10.3). Intel does not publish their sizes
        # (facts/performance.md §1; "Malicious Management Unit", USENIX Sec 2018, probed them).
        # All CHOSEN, small on purpose, so that a model run shows their effect rather than hides it:
        # PML5E: 2, fully associative. Not a Skylake structure (Skylake has no LA57); present so
        #   that a 5-level run is not charged a load per walk for a cache later cores have.
        CacheGeometry("PML5E cache", 2, 2, (48,)),
        # PML4E: 2, fully associative. One entry covers 512 GiB; a process plus the kernel
        #   touches only a handful of PML4 slots (user half, direct map, kernel image, CEA).
        CacheGeometry("PML4E cache", 2, 2, (39,)),
        # PDPTE: 4, fully associative. One entry covers 1 GiB.
        CacheGeometry("PDPTE cache", 4, 4, (30,)),
        # PDE: 32, 4-way (8 sets). One entry covers 2 MiB, so 64 MiB of reach: well beyond the
        #   STLB's 6 MiB of 4 KiB pages, so most STLB misses cost one load (the PTE), matching the
        #   "~9-10 cycles with hot paging-structure caches" walk in facts/performance.md §1.
        CacheGeometry("PDE cache", 32, 4, (21,)),
    ),
)

# The tag of every number of SKYLAKE_CLIENT (kaiser.sourced), by the path of its structure; a
# structure's tag covers its entries, ways, page sizes and set-index function.
_TABLE_2_15: Final = "Intel Optimization Reference Manual 248966-045, Table 2-15"
SKYLAKE_CLIENT_SOURCES: Final[dict[str, Source]] = {
    "itlb.0": cited(f"128 entries, 8-way, 4 KiB pages ({_TABLE_2_15})"),
    "itlb.1": cited(f"8 entries for 2M/4M pages ({_TABLE_2_15}); no associativity given: modelled fully associative"),
    "dtlb": cited(f"64 entries 4-way (4 KiB), 32 4-way (2 MiB), 4 4-way (1 GiB) ({_TABLE_2_15})"),
    "stlb.0": cited(
        "1536 entries, 12-way (128 sets), 4 KiB and 2 MiB pages, XOR-7 set index: WikiChip Skylake; TLBleed (Gras "
        "et al., USENIX Security 2018)"
    ),
    "stlb.1": cited("16 entries, 4-way, 1 GiB pages (secondary sources, facts/performance.md §1)", " [u]"),
    "psc": chosen(
        "Intel does not publish the paging-structure caches' sizes ('Malicious Management Unit', USENIX Security "
        "2018, probed them): 2 PML5E, 2 PML4E, 4 PDPTE fully associative and 32 PDE 4-way, small on purpose so "
        "that a run shows their effect; the PDE cache's 64 MiB reach makes most STLB misses one load, the ~9-10 "
        "cycle hot walk of facts/performance.md §1"
    ),
}

DEFAULT_GEOMETRY: Final = SKYLAKE_CLIENT
