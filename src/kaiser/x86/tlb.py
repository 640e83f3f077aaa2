"""TLBs and paging-structure caches: PCID-tagged, global-aware, set-associative with LRU.

The reference path. State lives in plain numpy arrays of shape (sets, ways), one group per
structure (`TlbArray`, `PscArray`), so that a compiled engine can hold the very same state; the
operations below are the readable definition that engine must agree with.

What is modelled (Intel SDM Vol. 3A §4.10):

* A TLB entry caches a page number -> page frame, the combined rights (R/W and U/S AND-ed, XD
  OR-ed), the protection key and the dirty flag (§4.10.2.2), tagged with the PCID current when it
  was made and a global bit (G=1 in the leaf while CR4.PGE=1, §4.10.2.4). A lookup hits an entry
  of the current PCID, or a global entry of any PCID when CR4.PGE=1 (§4.10.2.4). Entries are made
  only from walks that succeed (§4.10.2.3: only translations, only with A=1 everywhere), and are
  used without reading memory, so a hit can be *stale* until software invalidates (§4.10.4.2).
* Rights are checked on every use against the cached rights and the current CR0/CR4/CPL
  (`kaiser.x86.rights.check_access`). A use the cached rights forbid raises #PF from the TLB
  without a walk (the "spurious" fault of §4.10.4.3), and that page fault invalidates the entries
  for the page (§4.10.4.1, last paragraph).
* A write through an entry whose dirty flag is 0 walks again to set D in memory (a "dirty
  assist"), as the processor must set D (§4.8) and the entry does not say whether D is set now.
* Set index: `tlb_geometry.set_index` (modulo, or Skylake's STLB XOR-7 hash for 4 KiB pages).
  Replacement: the first invalid way, else the least recently used (smallest stamp; one clock
  per `Tlb`, ticked on every fill and every hit).
* Paging-structure caches (§4.10.3) are tagged with the PCID (never global: G lives only in
  leaves, §4.10.2.4) and hold the next table's address and the rights so far. They decide how
  many memory loads a walk costs. Limitation: the walk itself always reads memory
  (`kaiser.x86.walker.translate`); a paging-structure-cache entry whose content no longer matches
  memory is dropped when the walk finds it (the processor may drop any entry at any time,
  §4.10.3.1) instead of steering the walk. So stale *TLB* entries are modelled, stale
  *paging-structure-cache* entries are not.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from kaiser.x86.bits import CR3_NOFLUSH, CR3_PCID_MASK, CR4, PF_VECTOR, PKEY_SHIFT, PTE, entry_phys
from kaiser.x86.cache import KIND_DATA, KIND_FETCH, KIND_WALK, Caches
from kaiser.x86.cache_geometry import CacheHierarchy
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.geometry import mode_for
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op, Rights, access_error_bits, check_access, lass_violation
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, CacheGeometry, TlbGeometry, set_index
from kaiser.x86.walker import GP_VECTOR, EntryRef, Fault, Translation, translate

UD_VECTOR: Final = 6
# Paging-structure caches by the shift of the level they cache (SDM §4.10.3.1 names).
PSC_NAMES: Final = {48: "pml5e", 39: "pml4e", 30: "pdpte", 21: "pde"}


class HitLevel(enum.IntEnum):
    """Where a lookup found its translation."""

    L1 = 0  # the L1 iTLB (fetch) or dTLB (data)
    STLB = 1  # the unified second-level TLB (the entry is then copied into L1)
    MISS = 2  # neither: a page walk


@hex_fields("vpn", "pfn", "pcid")
@dataclass(frozen=True)
class TlbEntry:
    """One TLB entry, read out of the arrays (or about to be written into them)."""

    vpn: int  # linear address >> shift (sign-extended high-half addresses keep their high bits)
    shift: int  # log2 of the page size this entry covers (a piece of a larger page when fractured)
    pfn: int  # physical address >> shift
    page_shift: int  # log2 of the page the paging structures map (> shift for a piece)
    pcid: int
    global_: bool
    user: bool
    writable: bool
    nx: bool
    dirty: bool
    pkey: int

    @property
    def page_size(self) -> int:
        return 1 << self.shift

    @property
    def rights(self) -> Rights:
        return Rights(self.user, self.writable, self.nx)

    def pa_of(self, va: int) -> int:
        return (self.pfn << self.shift) | (va & (self.page_size - 1))

    def describe(self) -> str:
        """``0xffffffff81c00000 -> 0x1c00000 (2M, PCID 1, supervisor r-x, global)``."""
        va, pa = self.vpn << self.shift, self.pfn << self.shift
        size = f"{self.page_size >> 10}K" if self.shift < 20 else f"{self.page_size >> 20}M"
        rwx = f"r{'w' if self.writable else '-'}{'-' if self.nx else 'x'}"
        extra = (", global" if self.global_ else "") + (", dirty" if self.dirty else "")
        extra += f", pkey {self.pkey}" if self.pkey else ""
        who = "user" if self.user else "supervisor"
        return f"{va & ((1 << 64) - 1):#x} -> {pa:#x} ({size}, PCID {self.pcid}, {who} {rwx}{extra})"

    def piece(self, shift: int, va: int) -> TlbEntry:
        """The same translation cut down to the `shift`-sized page holding `va` (§4.10.2.3)."""
        return dataclasses.replace(self, vpn=va >> shift, shift=shift, pfn=self.pa_of(va) >> shift)


def entry_from_walk(t: Translation, state: CpuState) -> TlbEntry:
    """The TLB entry a successful walk creates (SDM §4.10.2.2), for the current PCID; global only
    if the leaf has G=1 and CR4.PGE=1 (§4.10.2.4)."""
    shift = t.page_size.bit_length() - 1
    return TlbEntry(
        vpn=t.va >> shift,
        shift=shift,
        pfn=t.pa >> shift,
        page_shift=shift,
        pcid=state.pcid,
        global_=state.pge and t.global_,
        user=t.rights.user,
        writable=t.rights.writable,
        nx=t.rights.nx,
        dirty=bool(t.leaf & PTE.D),
        pkey=t.pkey,
    )


class _SetAssociative:
    """What a TLB and a paging-structure cache share: (sets, ways) numpy arrays of validity, PCID,
    combined rights and an LRU stamp, and the replacement choice."""

    def __init__(self, geometry: CacheGeometry) -> None:
        self.geometry = geometry
        self.shape = (geometry.sets, geometry.ways)
        self.valid = np.zeros(self.shape, np.bool_)
        self.pcid = np.zeros(self.shape, np.int16)
        self.user = np.zeros(self.shape, np.bool_)
        self.writable = np.zeros(self.shape, np.bool_)
        self.nx = np.zeros(self.shape, np.bool_)
        self.stamp = np.zeros(self.shape, np.int64)

    @property
    def name(self) -> str:
        return self.geometry.name

    def victim(self, s: int) -> int:
        """Way to replace in set `s`: the first invalid way, else the least recently used."""
        for w in range(self.geometry.ways):
            if not self.valid[s, w]:
                return w
        return int(np.argmin(self.stamp[s]))


class TlbArray(_SetAssociative):
    """One set-associative TLB structure as numpy arrays of shape (sets, ways)."""

    def __init__(self, geometry: CacheGeometry) -> None:
        super().__init__(geometry)
        self.vpn = np.zeros(self.shape, np.int64)
        self.shift = np.zeros(self.shape, np.int8)
        self.page_shift = np.zeros(self.shape, np.int8)
        self.glob = np.zeros(self.shape, np.bool_)
        self.pfn = np.zeros(self.shape, np.int64)
        self.dirty = np.zeros(self.shape, np.bool_)
        self.pkey = np.zeros(self.shape, np.int8)

    def find(self, va: int, shift: int, pcid: int, pge: bool) -> tuple[int, int] | None:
        """The way holding the `shift`-sized page of `va` usable by `pcid`: same PCID, or global
        with CR4.PGE=1 (SDM §4.10.2.4). First matching way wins."""
        vpn = va >> shift
        s = set_index(self.geometry, vpn)
        for w in range(self.geometry.ways):
            if (
                self.valid[s, w]
                and self.shift[s, w] == shift
                and self.vpn[s, w] == vpn
                and (self.pcid[s, w] == pcid or (pge and self.glob[s, w]))
            ):
                return s, w
        return None

    def read(self, s: int, w: int) -> TlbEntry:
        return TlbEntry(
            vpn=int(self.vpn[s, w]),
            shift=int(self.shift[s, w]),
            pfn=int(self.pfn[s, w]),
            page_shift=int(self.page_shift[s, w]),
            pcid=int(self.pcid[s, w]),
            global_=bool(self.glob[s, w]),
            user=bool(self.user[s, w]),
            writable=bool(self.writable[s, w]),
            nx=bool(self.nx[s, w]),
            dirty=bool(self.dirty[s, w]),
            pkey=int(self.pkey[s, w]),
        )

    def write(self, s: int, w: int, e: TlbEntry, stamp: int) -> None:
        self.valid[s, w] = True
        self.vpn[s, w] = e.vpn
        self.shift[s, w] = e.shift
        self.page_shift[s, w] = e.page_shift
        self.pcid[s, w] = e.pcid
        self.glob[s, w] = e.global_
        self.pfn[s, w] = e.pfn
        self.user[s, w] = e.user
        self.writable[s, w] = e.writable
        self.nx[s, w] = e.nx
        self.dirty[s, w] = e.dirty
        self.pkey[s, w] = e.pkey
        self.stamp[s, w] = stamp

    def page_mask(self, va: int) -> np.ndarray:
        """Entries for the page holding `va`: an entry whose mapped page (`page_shift`) contains
        `va`, so every piece of a fractured large page goes with it (SDM §4.10.4.1 footnote 1)."""
        mask = np.zeros(self.valid.shape, np.bool_)
        for shift in self.geometry.shifts:
            here = self.shift == shift
            for page_shift in {int(p) for p in self.page_shift[here & self.valid]}:
                mask |= here & (self.page_shift == page_shift) & (self.vpn >> (page_shift - shift) == va >> page_shift)
        return mask

    def drop(self, mask: np.ndarray) -> int:
        """Invalidate the valid entries selected by `mask`; return how many."""
        hit = self.valid & mask
        self.valid &= ~hit
        return int(hit.sum())


class PscArray(_SetAssociative):
    """One paging-structure cache (SDM §4.10.3.1) as numpy arrays of shape (sets, ways).

    An entry for the level of shift k is tagged by VA >> k and the PCID, and holds the physical
    address of the next table plus the rights combined over the entries down to this one.
    """

    def __init__(self, geometry: CacheGeometry) -> None:
        super().__init__(geometry)
        self.level_shift = geometry.shifts[0]
        self.tag = np.zeros(self.shape, np.int64)
        self.table = np.zeros(self.shape, np.int64)

    def find(self, va: int, pcid: int) -> tuple[int, int] | None:
        tag = va >> self.level_shift
        s = set_index(self.geometry, tag)
        for w in range(self.geometry.ways):
            if self.valid[s, w] and self.tag[s, w] == tag and self.pcid[s, w] == pcid:
                return s, w
        return None

    def rights(self, s: int, w: int) -> Rights:
        return Rights(bool(self.user[s, w]), bool(self.writable[s, w]), bool(self.nx[s, w]))

    def drop(self, pcid: int | None, va: int | None) -> int:
        """Invalidate entries of `pcid` (None: every PCID) that would translate `va` (None: any)."""
        mask = self.valid.copy()
        if pcid is not None:
            mask &= self.pcid == pcid
        if va is not None:
            mask &= self.tag == va >> self.level_shift
        self.valid &= ~mask
        return int(mask.sum())


@dataclass(frozen=True)
class Lookup:
    """Result of `Tlb.lookup`: the level that hit and the entry used (None on a miss)."""

    level: HitLevel
    entry: TlbEntry | None = None


class Tlb:
    """The translation caches of one logical processor: L1 iTLB and dTLB, STLB, and the
    paging-structure caches, per `geometry`."""

    def __init__(self, geometry: TlbGeometry = DEFAULT_GEOMETRY) -> None:
        self.geometry = geometry
        self.itlb = tuple(TlbArray(g) for g in geometry.itlb)
        self.dtlb = tuple(TlbArray(g) for g in geometry.dtlb)
        self.stlb = tuple(TlbArray(g) for g in geometry.stlb)
        self.psc = tuple(PscArray(g) for g in geometry.psc)
        self._psc_by_shift = {p.level_shift: p for p in self.psc}
        self.clock = 0  # LRU time: ticks on every hit and every fill

    @property
    def arrays(self) -> tuple[TlbArray, ...]:
        return self.itlb + self.dtlb + self.stlb

    def l1(self, op: Op) -> tuple[TlbArray, ...]:
        return self.itlb if op is Op.FETCH else self.dtlb

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    # ---- lookup and fill --------------------------------------------------------------------
    @staticmethod
    def _search(arrays: Sequence[TlbArray], va: int, pcid: int, pge: bool) -> tuple[TlbArray, int, int] | None:
        for arr in arrays:
            for shift in arr.geometry.shifts:  # smallest page size first (§4.10.2.3: any may be used)
                hit = arr.find(va, shift, pcid, pge)
                if hit is not None:
                    return arr, hit[0], hit[1]
        return None

    def probe(self, va: int, op: Op, state: CpuState) -> Lookup:
        """Where `va` would hit for `op` under `state`, without touching LRU state or filling."""
        for level, arrays in ((HitLevel.L1, self.l1(op)), (HitLevel.STLB, self.stlb)):
            found = self._search(arrays, va, state.pcid, state.pge)
            if found is not None:
                arr, s, w = found
                return Lookup(level, arr.read(s, w))
        return Lookup(HitLevel.MISS)

    def lookup(self, va: int, op: Op, state: CpuState) -> Lookup:
        """Look `va` up for `op` (fetch: iTLB, else dTLB; then the STLB) under `state`'s PCID and
        CR4.PGE. A hit refreshes LRU; an STLB hit is copied into the L1 structure."""
        pcid, pge = state.pcid, state.pge
        found = self._search(self.l1(op), va, pcid, pge)
        if found is not None:
            arr, s, w = found
            arr.stamp[s, w] = self._tick()
            return Lookup(HitLevel.L1, arr.read(s, w))
        found = self._search(self.stlb, va, pcid, pge)
        if found is not None:
            arr, s, w = found
            arr.stamp[s, w] = self._tick()
            entry = arr.read(s, w)
            self._install(self.l1(op), entry, va, pcid, pge)
            return Lookup(HitLevel.STLB, entry)
        return Lookup(HitLevel.MISS)

    def fill(self, translation: Translation, state: CpuState, op: Op = Op.READ) -> TlbEntry:
        """Cache a successful walk in the STLB and in the L1 structure for `op`. Returns the entry
        as cached in L1 (a 2 MiB piece of a 1 GiB page in a core without a 1 GiB iTLB)."""
        entry = entry_from_walk(translation, state)
        self._install(self.stlb, entry, translation.va, state.pcid, state.pge)
        return self._install(self.l1(op), entry, translation.va, state.pcid, state.pge) or entry

    def _install(self, arrays: Sequence[TlbArray], entry: TlbEntry, va: int, pcid: int, pge: bool) -> TlbEntry | None:
        """Write `entry` into the structure of `arrays` holding its page size, or as a piece of the
        largest smaller size one holds. The way a lookup of `va` would hit at that size is
        overwritten (so at most one usable entry per page size); otherwise a victim is chosen."""
        best: tuple[TlbArray, int] | None = None
        for arr in arrays:
            for shift in arr.geometry.shifts:
                if shift <= entry.shift and (best is None or shift > best[1]):
                    best = (arr, shift)
        if best is None:
            return None
        arr, shift = best
        piece = entry if shift == entry.shift else entry.piece(shift, va)
        hit = arr.find(va, shift, pcid, pge)
        if hit is None:
            s = set_index(arr.geometry, piece.vpn)
            hit = (s, arr.victim(s))
        arr.write(hit[0], hit[1], piece, self._tick())
        return piece

    # ---- paging-structure caches ------------------------------------------------------------
    def psc_for(self, level_shift: int) -> PscArray | None:
        return self._psc_by_shift.get(level_shift)

    def psc_fill(self, level_shift: int, va: int, pcid: int, table: int, rights: Rights) -> None:
        psc = self.psc_for(level_shift)
        if psc is None:
            return
        hit = psc.find(va, pcid)
        if hit is None:
            s = set_index(psc.geometry, va >> level_shift)
            hit = (s, psc.victim(s))
        s, w = hit
        psc.valid[s, w] = True
        psc.tag[s, w] = va >> level_shift
        psc.pcid[s, w] = pcid
        psc.table[s, w] = table
        psc.user[s, w], psc.writable[s, w], psc.nx[s, w] = rights.user, rights.writable, rights.nx
        psc.stamp[s, w] = self._tick()

    # ---- invalidation primitives (the SDM operations are composed from these in `Mmu`) ------
    def invalidate_tlb(self, *, pcid: int | None, globals_too: bool, va: int | None = None) -> int:
        """Drop non-global entries of `pcid` (None: of every PCID) and, with `globals_too`, global
        entries of every PCID; only for the page(s) of `va` if given. Returns the count dropped."""
        dropped = 0
        for arr in self.arrays:
            which = ~arr.glob if pcid is None else ~arr.glob & (arr.pcid == pcid)
            if globals_too:
                which = which | arr.glob
            if va is not None:
                which = which & arr.page_mask(va)
            dropped += arr.drop(which)
        return dropped

    def invalidate_pcid_all(self, pcid: int) -> int:
        """Drop every TLB entry tagged `pcid`, global or not, and every global entry."""
        return sum(arr.drop((arr.pcid == pcid) | arr.glob) for arr in self.arrays)

    def invalidate_psc(self, *, pcid: int | None, va: int | None = None) -> int:
        """Drop paging-structure-cache entries of `pcid` (None: all) that would translate `va`
        (None: whatever their address)."""
        return sum(p.drop(pcid, va) for p in self.psc)

    # ---- inspection -------------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[str, TlbEntry]]:
        """Every valid TLB entry with the name of its structure."""
        for arr in self.arrays:
            for s, w in zip(*np.nonzero(arr.valid), strict=True):
                yield arr.name, arr.read(int(s), int(w))

    def psc_entries(self) -> Iterator[tuple[str, int, int, int]]:
        """Every valid paging-structure-cache entry: (structure, tag, pcid, next table)."""
        for p in self.psc:
            for s, w in zip(*np.nonzero(p.valid), strict=True):
                yield p.name, int(p.tag[s, w]), int(p.pcid[s, w]), int(p.table[s, w])


# ---- counters ---------------------------------------------------------------------------------
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


# ---- instruction exceptions -------------------------------------------------------------------
class CpuException(Exception):
    """An exception an instruction raises instead of completing (the model's input was illegal)."""

    vector: int = -1
    mnemonic: str = "#?"

    def __init__(self, reason: str) -> None:
        super().__init__(f"{self.mnemonic}: {reason}")
        self.reason = reason


class GeneralProtection(CpuException):
    """#GP(0): a general-protection fault (LASS, a non-canonical address)."""

    vector = GP_VECTOR
    mnemonic = "#GP(0)"


class InvalidOpcode(CpuException):
    """#UD: an invalid opcode (e.g. INVPCID without CR4.PCIDE support)."""

    vector = UD_VECTOR
    mnemonic = "#UD"


# ---- the MMU: TLB + walker + counters -----------------------------------------------------------
@hex_fields("va")
@dataclass(frozen=True)
class Access:
    """One memory access through the MMU.

    `level`: where the translation came from (MISS: a walk). `entry`: the TLB entry used (also
    when its cached rights caused the fault), or the one the walk filled (None if the walk
    faulted). `walk`: the walk made, if any (a miss, or a dirty assist after a hit).
    `walk_loads`: memory loads that walk made after paging-structure-cache hits. `dropped`: a
    software prefetch LASS blocked, which does nothing at all (no lookup, no walk, no fault).
    """

    va: int
    op: Op
    level: HitLevel
    entry: TlbEntry | None
    fault: Fault | None
    walk: Translation | Fault | None = None
    walk_loads: int = 0
    dropped: bool = False
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", self.fault is None)

    @property
    def pa(self) -> int | None:
        return None if self.entry is None or self.fault is not None else self.entry.pa_of(self.va)

    def describe(self) -> str:
        """``read 0x400000: STLB hit -> 0x703c000`` or ``...: walk #PF cr2=...``."""
        where = {HitLevel.L1: "L1 hit", HitLevel.STLB: "STLB hit"}.get(self.level, "walk")
        outcome = self.fault.describe() if self.fault is not None else f"-> {self.pa:#x}"
        return f"{self.op.value} {self.va:#x}: {where} {outcome}"


_CR4_NEEDS_FEATURE: Final = (
    (CR4.PCIDE, "pcid"),
    (CR4.SMEP, "smep"),
    (CR4.SMAP, "smap"),
    (CR4.PKE, "pku"),
    (CR4.LA57, "la57"),
    (CR4.LASS, "lass"),
)


class Mmu:
    """One logical processor's address translation: registers, TLBs, the walker, counters.

    Accesses go lookup -> (on a miss) walk with `kaiser.x86.walker.translate` -> fill. CR3/CR4
    writes, INVLPG and INVPCID apply the SDM's invalidation rules (Vol. 3A §4.10.4.1) and raise
    `GeneralProtection`/`InvalidOpcode` where the instruction would fault.

    With `caches` (a `CacheHierarchy`), the walk's memory loads (the entries it reads after the
    paging-structure-cache hits, in walk order) go through L1D/L2/LLC/DRAM by the entries'
    physical addresses, and then an access that completes goes to L1D (loads, stores) or L1I
    (fetches) at its physical address. Faulting accesses reach no cache.
    """

    def __init__(
        self,
        mem: PhysicalMemory,
        state: CpuState,
        *,
        features: CpuFeatures | None = None,
        geometry: TlbGeometry = DEFAULT_GEOMETRY,
        tlb: Tlb | None = None,
        caches: CacheHierarchy | None = None,
    ) -> None:
        self.mem = mem
        self.state = state
        # by default the core has what its initial state uses (LASS is off in CpuFeatures' default)
        self.features = features or CpuFeatures(maxphyaddr=mem.maxphyaddr, lass=state.lass)
        self.tlb = tlb or Tlb(geometry)
        self._counters = TlbCounters()
        self.caches = Caches(caches, self._counters) if caches is not None else None

    @property
    def counters(self) -> TlbCounters:
        return self._counters

    @counters.setter
    def counters(self, value: TlbCounters) -> None:
        """Replace the counters (the caches count into the same object)."""
        self._counters = value
        if self.caches is not None:
            self.caches.counters = value

    # ---- accesses ---------------------------------------------------------------------------
    def access(
        self, va: int, op: Op = Op.READ, *, implicit: bool = False, stack: bool = False, prefetch: bool = False
    ) -> Access:
        """Translate one access, through the TLBs and, on a miss, a walk.

        `stack`: a stack access (a LASS violation is #SS(0)). `prefetch`: a software prefetch
        (PREFETCHh never faults, SDM Vol. 2B): LASS judges it as the explicit access of code at
        the current CPL, whatever `implicit` says of how its translation is made, and a blocked
        prefetch is dropped (`Access.dropped`: no lookup, no walk, no fault counted)."""
        state = self.state
        c = self.counters
        fetch = op is Op.FETCH
        if prefetch and lass_violation(va, op, state, False) is not None:
            return Access(va, op, HitLevel.MISS, None, None, dropped=True)
        if not mode_for(state.la57).is_canonical(va) or lass_violation(va, op, state, implicit) is not None:
            # #GP (non-canonical, SDM Vol. 3A §6.15) or #GP/#SS (LASS, before paging) before any
            # TLB lookup: the walker builds the fault without reading a table
            c.faults += 1
            gp = translate(
                self.mem, state, va, op, implicit=implicit, features=self.features, set_ad=False, stack=stack
            )
            assert isinstance(gp, Fault)
            return Access(va, op, HitLevel.MISS, None, gp)
        found = self.tlb.lookup(va, op, state)
        if found.level is HitLevel.L1:
            c.itlb_hits += fetch
            c.dtlb_hits += not fetch
        else:
            c.itlb_misses += fetch
            c.dtlb_misses += not fetch
            if found.level is HitLevel.STLB:
                c.stlb_hits_i += fetch
                c.stlb_hits_d += not fetch
            else:
                c.stlb_misses_i += fetch
                c.stlb_misses_d += not fetch
        if found.entry is None:
            return self._cached(self._walk(va, op, implicit, HitLevel.MISS))
        entry = found.entry
        check = check_access(entry.rights, entry.pkey << PKEY_SHIFT, op, state, implicit)
        if not check.allowed:  # §4.10.4.3: a fault may come from the cached rights alone
            c.faults += 1
            c.tlb_faults += 1
            error = int(access_error_bits(op, state, implicit) | check.error_bits)
            fault = Fault(PF_VECTOR, va, error, f"{check.reason} (cached in the TLB)")
            self._page_fault_invalidate(va)
            return Access(va, op, found.level, entry, fault)
        if op is Op.WRITE and not entry.dirty:  # §4.8: D must be set in memory; walk to set it
            c.dirty_assists += 1
            return self._cached(self._walk(va, op, implicit, found.level))
        return self._cached(Access(va, op, found.level, entry, None))

    def _cached(self, a: Access) -> Access:
        """The access itself through the data caches, if it completed."""
        pa = a.pa
        if self.caches is not None and pa is not None:
            self.caches.access(pa, KIND_FETCH if a.op is Op.FETCH else KIND_DATA)
        return a

    def _walk(self, va: int, op: Op, implicit: bool, level: HitLevel) -> Access:
        state = self.state
        c = self.counters
        if op is Op.FETCH:
            c.walks_i += 1
        else:
            c.walks_d += 1
        result = translate(self.mem, state, va, op, implicit=implicit, features=self.features)
        walked = result.entries
        prefix = _prefix_rights(walked, state.nxe)
        saved = self._psc_saved(va, walked, prefix)
        loads = len(walked) - saved
        c.walk_loads += loads
        c.walk_loads_saved += saved
        if self.caches is not None:
            for ref in walked[saved:]:
                self.caches.access(ref.address, KIND_WALK)
        if isinstance(result, Fault):
            c.faults += 1
            self._page_fault_invalidate(va)
            return Access(va, op, level, None, result, result, loads)
        for depth in range(saved, len(walked) - 1):  # §4.10.3.1: cache the non-leaf entries used
            ref = walked[depth]
            self.tlb.psc_fill(ref.level.shift, va, state.pcid, entry_phys(ref.value), prefix[depth])
        entry = self.tlb.fill(result, state, op)
        return Access(va, op, level, entry, None, result, loads)

    def _psc_saved(self, va: int, walked: Sequence[EntryRef], prefix: Sequence[Rights]) -> int:
        """Entries the walk could skip: 1 + the depth of the deepest paging-structure-cache hit
        (PDE cache first, §4.10.3.2). A hit is used only if it still equals memory (next table,
        rights so far, and A=1 all the way down to it, so using it changes nothing); otherwise it
        is dropped as out of date and a shallower cache is tried."""
        pcid = self.state.pcid
        for depth in range(len(walked) - 2, -1, -1):
            ref = walked[depth]
            psc = self.tlb.psc_for(ref.level.shift)
            hit = psc.find(va, pcid) if psc is not None else None
            if psc is None or hit is None:
                continue
            s, w = hit
            fresh = (
                int(psc.table[s, w]) == entry_phys(ref.value)
                and psc.rights(s, w) == prefix[depth]
                and all(r.value & PTE.A for r in walked[: depth + 1])
            )
            if fresh:
                psc.stamp[s, w] = self.tlb._tick()
                name = "psc_hits_" + PSC_NAMES[ref.level.shift]
                setattr(self.counters, name, getattr(self.counters, name) + 1)
                return depth + 1
            psc.valid[s, w] = False
            self.counters.psc_stale += 1
        return 0

    def _page_fault_invalidate(self, va: int) -> None:
        """§4.10.4.1: a #PF invalidates the TLB entries for the page of the faulting address of
        the current PCID, and the paging-structure-cache entries of the current PCID that would be
        used for it. Global entries for the page are dropped too (the SDM allows extra
        invalidation, and without it a fault taken from a stale global entry would recur)."""
        pcid = self.state.pcid
        self.counters.pf_invalidations += 1
        self.counters.tlb_entries_dropped += self.tlb.invalidate_tlb(pcid=pcid, globals_too=True, va=va)
        self.counters.psc_entries_dropped += self.tlb.invalidate_psc(pcid=pcid, va=va)

    # ---- register state ---------------------------------------------------------------------
    def set_registers(self, **changes: int) -> None:
        """Change registers that do not touch the TLBs (CPL, RFLAGS, PKRU, CR0.WP...). CR3 and CR4
        change only through `mov_cr3`/`mov_cr4`; EFER (NXE) is fixed for an Mmu's life."""
        for name in ("cr3", "cr4", "efer"):
            if name in changes:
                raise ValueError(f"set_registers cannot change {name}: use mov_{name} (efer is fixed)")
        self.state = self.state.replace(**changes)

    def _privileged(self, what: str) -> None:
        if self.state.cpl != 0:
            raise GeneralProtection(f"{what} at CPL {self.state.cpl} (needs CPL 0)")

    def _drop(
        self, *, pcid: int | None, globals_too: bool, va: int | None = None, psc_va: int | None = None, psc: bool = True
    ) -> None:
        c = self.counters
        c.tlb_entries_dropped += self.tlb.invalidate_tlb(pcid=pcid, globals_too=globals_too, va=va)
        if psc:
            c.psc_entries_dropped += self.tlb.invalidate_psc(pcid=pcid, va=psc_va)

    # ---- the invalidating instructions (SDM Vol. 3A §4.10.4.1) ------------------------------------
    def mov_cr3(self, value: int) -> None:
        """MOV to CR3. PCIDE=0: invalidate PCID 000H's non-global TLB entries and its
        paging-structure-cache entries. PCIDE=1, bit 63=0: the same for the PCID in bits 11:0 of
        the new value. PCIDE=1, bit 63=1: no invalidation; bit 63 is not stored."""
        self._privileged("MOV to CR3")
        pcide = self.state.pcide
        reserved = ((1 << 63) - 1) & ~((1 << self.features.maxphyaddr) - 1)  # bits 62:MAXPHYADDR
        if value < 0 or value >> 64 or value & reserved:
            raise GeneralProtection(f"MOV to CR3 {value:#x} sets reserved bits {value & reserved:#x}")
        noflush = bool(value & CR3_NOFLUSH)
        if noflush and not pcide:
            raise GeneralProtection(f"MOV to CR3 {value:#x}: bit 63 is reserved with CR4.PCIDE=0")
        self.counters.cr3_writes += 1
        if noflush:
            self.counters.cr3_noflush += 1
        else:
            self._drop(pcid=value & CR3_PCID_MASK if pcide else 0, globals_too=False)
        self.state = self.state.replace(cr3=value & ~CR3_NOFLUSH)

    def mov_cr4(self, value: int) -> None:
        """MOV to CR4. Changing PGE, or clearing PCIDE: invalidate everything, global entries and
        every PCID's paging-structure caches included. Setting SMEP: invalidate the current
        PCID. Setting PCIDE needs CR3[11:0]=0; PAE and LA57 cannot change in IA-32e mode."""
        self._privileged("MOV to CR4")
        old = self.state.cr4
        if value < 0 or value >> 32:
            raise GeneralProtection(f"MOV to CR4 {value:#x} sets reserved bits 63:32")
        for bit, feature in _CR4_NEEDS_FEATURE:
            if value & bit and not getattr(self.features, feature):
                raise GeneralProtection(f"MOV to CR4 {value:#x}: CR4.{bit.name} is reserved without CPUID {feature}")
        if value & CR4.LASS and not value & CR4.SMAP:  # the model's rule (CpuState)
            raise GeneralProtection(f"MOV to CR4 {value:#x} sets LASS without SMAP")
        if not value & CR4.PAE:
            raise GeneralProtection("MOV to CR4 clearing PAE in IA-32e mode")
        if (old ^ value) & CR4.LA57:
            raise GeneralProtection("MOV to CR4 changing LA57 in IA-32e mode")
        if value & CR4.PCIDE and not old & CR4.PCIDE and self.state.cr3 & CR3_PCID_MASK:
            raise GeneralProtection(
                f"MOV to CR4 setting PCIDE with CR3[11:0]={self.state.cr3 & CR3_PCID_MASK:#x} (needs 0)"
            )
        if (old ^ value) & CR4.PGE or (old & CR4.PCIDE and not value & CR4.PCIDE):
            self.counters.cr4_flush_all += 1
            self._drop(pcid=None, globals_too=True)
        elif value & CR4.SMEP and not old & CR4.SMEP:
            # "all TLB entries ... for the current PCID": we also drop global entries of other
            # PCIDs, which the current PCID may use (§4.10.2.4); extra invalidation is allowed.
            self.counters.cr4_flush_pcid += 1
            pcid = self.state.pcid
            self.counters.tlb_entries_dropped += self.tlb.invalidate_pcid_all(pcid)
            self.counters.psc_entries_dropped += self.tlb.invalidate_psc(pcid=pcid)
        self.state = self.state.replace(cr4=value)

    def invlpg(self, va: int) -> None:
        """INVLPG: invalidate the TLB entries for the page of `va` of the current PCID and global
        entries for it of any PCID, and every paging-structure-cache entry of the current PCID.
        A no-op for a non-canonical address (SDM Vol. 2 INVLPG)."""
        self._privileged("INVLPG")
        if not mode_for(self.state.la57).is_canonical(va):
            return
        self.counters.invlpg += 1
        self._drop(pcid=self.state.pcid, globals_too=True, va=va)

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        """INVPCID with type `kind` and descriptor (`pcid`, `va`) (SDM Vol. 2 INVPCID; §4.10.4.1).

        0 individual address: non-global entries of `pcid` for the page of `va`, and its
        paging-structure-cache entries that would translate `va`. 1 single context: every
        non-global entry of `pcid` and its paging-structure caches. 2 all contexts including
        globals: everything. 3 all contexts: every non-global entry, all paging-structure caches.
        """
        if not self.features.invpcid:
            raise InvalidOpcode("INVPCID is not supported (CPUID.(EAX=07H,ECX=0):EBX.INVPCID=0)")
        self._privileged("INVPCID")
        if kind not in (0, 1, 2, 3):
            raise GeneralProtection(f"INVPCID type {kind} > 3")
        if pcid < 0 or pcid >> 12:
            raise GeneralProtection(f"INVPCID descriptor bits 63:12 not zero (pcid={pcid:#x})")
        if kind in (0, 1) and not self.state.pcide and pcid:
            raise GeneralProtection(f"INVPCID type {kind} for PCID {pcid:#x} with CR4.PCIDE=0 (only 000H)")
        if kind == 0 and not mode_for(self.state.la57).is_canonical(va):
            raise GeneralProtection(f"INVPCID type 0 for non-canonical address {va:#x}")
        c = self.counters
        if kind == 0:
            c.invpcid_address += 1
            self._drop(pcid=pcid, globals_too=False, va=va, psc_va=va)
        elif kind == 1:
            c.invpcid_single += 1
            self._drop(pcid=pcid, globals_too=False)
        elif kind == 2:
            c.invpcid_all_global += 1
            self._drop(pcid=None, globals_too=True)
        else:
            c.invpcid_all += 1
            self._drop(pcid=None, globals_too=False)


def _prefix_rights(walked: Sequence[EntryRef], nxe: bool) -> list[Rights]:
    """Rights combined over walked[0..d] for each non-leaf depth d the walk passed."""
    out: list[Rights] = []
    rights = Rights()
    for ref in walked[:-1]:
        rights = rights.through(ref.value, nxe)
        out.append(rights)
    return out
