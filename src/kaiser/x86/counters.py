"""What an `Mmu` run counts, for the cost model: TLB and paging-structure-cache hits and misses,
walks and their loads, faults, invalidations, and the data caches' events (`kaiser.x86.cache`).

One dataclass both replay paths fill: `kaiser.x86.mmu.Mmu` field by field, the compiled engine as
an array in the fields' order (checked at its import).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class TlbCounters:
    """Events of an `Mmu` run, for the cost model. `_i`/`_d`: instruction fetch / data access."""

    itlb_hits: int = 0  # L1 iTLB
    itlb_misses: int = 0
    dtlb_hits: int = 0  # L1 dTLB
    dtlb_misses: int = 0
    stlb_hits_i: int = 0
    stlb_hits_d: int = 0
    stlb_misses_i: int = 0
    stlb_misses_d: int = 0
    walks_i: int = 0  # page walks (STLB misses, plus dirty assists on the data side)
    walks_d: int = 0
    walk_loads: int = 0  # paging-structure entries read from memory by walks
    walk_loads_saved: int = 0  # entries a walk skipped thanks to a paging-structure-cache hit
    psc_hits_pml5e: int = 0  # walks whose deepest usable PSC hit was at this level
    psc_hits_pml4e: int = 0
    psc_hits_pdpte: int = 0
    psc_hits_pde: int = 0
    psc_stale: int = 0  # PSC entries found out of date with memory and dropped
    dirty_assists: int = 0  # writes through an entry with D=0 (a walk sets D)
    faults: int = 0  # #PF and #GP returned by accesses
    tlb_faults: int = 0  # of those, #PF decided from cached rights (possibly spurious)
    cr3_writes: int = 0
    cr3_noflush: int = 0  # MOV to CR3 with PCIDE=1 and bit 63 set: no invalidation
    cr4_flush_all: int = 0  # MOV to CR4 changing PGE, or PCIDE 1->0
    cr4_flush_pcid: int = 0  # MOV to CR4 setting SMEP
    invlpg: int = 0
    invpcid_address: int = 0  # type 0
    invpcid_single: int = 0  # type 1
    invpcid_all_global: int = 0  # type 2
    invpcid_all: int = 0  # type 3
    pf_invalidations: int = 0  # invalidations done by page faults (SDM §4.10.4.1)
    tlb_entries_dropped: int = 0  # by every invalidation above
    psc_entries_dropped: int = 0
    # The data caches (kaiser.x86.cache), all 0 when the Mmu has none. Hits and misses are demand
    # lookups (page-walk loads included in L1D/L2/LLC); prefetch lookups are not counted there.
    l1i_hits: int = 0
    l1i_misses: int = 0
    l1d_hits: int = 0
    l1d_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    llc_hits: int = 0
    llc_misses: int = 0
    dram_reads: int = 0  # lines read from DRAM, prefetches included
    pf_nl_issued: int = 0  # next-line prefetches into L1D
    pf_nl_useful: int = 0  # of those lines, first demand hits in L1D
    pf_l2_issued: int = 0  # L2 streamer prefetches
    pf_l2_useful: int = 0  # first demand hits in L2 on a streamed line
    llc_back_invalidations: int = 0  # L1/L2 copies dropped by an inclusive LLC's evictions
    walk_loads_l1: int = 0  # page-walk loads served by L1D, L2, LLC, DRAM
    walk_loads_l2: int = 0
    walk_loads_llc: int = 0
    walk_loads_dram: int = 0
    # Nested paging (kaiser.x86.nested), all 0 on bare metal: host (EPT/NPT) walks and the EPT
    # entries they read (walk_loads counts the guest entries; both kinds reach the caches as walks).
    host_walks: int = 0
    host_walk_loads: int = 0

    @property
    def stlb_hits(self) -> int:
        return self.stlb_hits_i + self.stlb_hits_d

    @property
    def stlb_misses(self) -> int:
        return self.stlb_misses_i + self.stlb_misses_d

    @property
    def walks(self) -> int:
        return self.walks_i + self.walks_d

    @property
    def invpcid(self) -> int:
        return self.invpcid_address + self.invpcid_single + self.invpcid_all_global + self.invpcid_all

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def copy(self) -> TlbCounters:
        return dataclasses.replace(self)

    def __sub__(self, other: TlbCounters) -> TlbCounters:
        return TlbCounters(**{k: v - getattr(other, k) for k, v in self.as_dict().items()})
