"""TLBs and paging-structure caches: PCID-tagged, global-aware, set-associative with LRU.

The reference path's translation caches; `kaiser.x86.mmu.Mmu` looks them up, fills them and
invalidates them for an access or an instruction. State lives in plain numpy arrays of shape
(sets, ways), one group per structure (`TlbArray`, `PscArray`), so that a compiled engine can
hold the very same state; the operations below are the readable definition that engine must
agree with.

What is modelled (Intel SDM Vol. 3A §4.10):

* A TLB entry caches a page number -> page frame, the combined rights (R/W and U/S AND-ed, XD
  OR-ed), the protection key and the dirty flag (§4.10.2.2), tagged with the PCID current when it
  was made and a global bit (G=1 in the leaf while CR4.PGE=1, §4.10.2.4). A lookup hits an entry
  of the current PCID, or a global entry of any PCID when CR4.PGE=1 (§4.10.2.4). Entries are made
  only from walks that succeed (§4.10.2.3: only translations, only with A=1 everywhere), and are
  used without reading memory, so a hit can be *stale* until software invalidates (§4.10.4.2).
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
from dataclasses import dataclass
from typing import Final

import numpy as np

from kaiser.x86.bits import PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.rights import Op, Rights
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, INDEX_XOR, CacheGeometry, TlbGeometry, set_index
from kaiser.x86.walker import Translation

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


# The arrays a TLB way's entry is held in (besides `valid` and `stamp`).
_ENTRY_FIELDS: Final = ("vpn", "shift", "page_shift", "pcid", "glob", "pfn", "user", "writable", "nx", "dirty", "pkey")


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
        # `set_index` of this geometry without its lookups: an XOR fold by `_fold` bits (0: none)
        sets = geometry.sets
        self._set_mask = sets - 1 if sets & (sets - 1) == 0 else 0
        self._fold = sets.bit_length() - 1 if geometry.index == INDEX_XOR else 0

    def set_of(self, tag: int) -> int:
        """`set_index(self.geometry, tag)`, the hot path's way."""
        if self._fold:
            tag ^= tag >> self._fold
        return tag & self._set_mask if self._set_mask else tag % self.geometry.sets

    @property
    def name(self) -> str:
        return self.geometry.name

    def victim(self, s: int) -> int:
        """Way to replace in set `s`: the first invalid way, else the least recently used."""
        valid = self.valid[s].tolist()
        if False in valid:
            return valid.index(False)
        stamps = self.stamp[s].tolist()
        return stamps.index(min(stamps))  # the first of equal stamps, as np.argmin


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
        self._copy_pairs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # by id() of a source array

    def find(self, va: int, shift: int, pcid: int, pge: bool) -> tuple[int, int] | None:
        """The way holding the `shift`-sized page of `va` usable by `pcid`: same PCID, or global
        with CR4.PGE=1 (SDM §4.10.2.4). First matching way wins."""
        vpn = va >> shift
        s = self.set_of(vpn)
        # Way by way, the page number first from one row read (a numpy read per field and way is
        # what a lookup costs in Python), then the other fields of a way whose number matches.
        for w, way_vpn in enumerate(self.vpn[s].tolist()):
            if (
                way_vpn == vpn
                and self.valid[s, w]
                and self.shift[s, w] == shift
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

    def copy_way(self, s: int, w: int, src: TlbArray, ss: int, sw: int, stamp: int) -> None:
        """`write(s, w, src.read(ss, sw), stamp)` field by field, without the entry between."""
        pairs = self._copy_pairs.get(id(src))
        if pairs is None:
            pairs = self._copy_pairs[id(src)] = [(getattr(self, n), getattr(src, n)) for n in _ENTRY_FIELDS]
        self.valid[s, w] = True
        for dst, from_ in pairs:
            dst[s, w] = from_[ss, sw]
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
        self._l1_home: dict[tuple[bool, int], TlbArray | None] = {}  # `l1_holding`, by (fetch, shift)

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

    def l1_way(self, va: int, op: Op, pcid: int, pge: bool) -> tuple[TlbArray, int, int] | None:
        """The L1 way `lookup` would hit for `va` (array, set, way), touching nothing: the first
        step of `lookup`, for `kaiser.x86.mmu.Mmu.hit_pa`."""
        return self._search(self.l1(op), va, pcid, pge)

    def stlb_way(self, va: int, pcid: int, pge: bool) -> tuple[TlbArray, int, int] | None:
        """The STLB way `lookup` would hit for `va` after an L1 miss, touching nothing."""
        return self._search(self.stlb, va, pcid, pge)

    def l1_holding(self, op: Op, shift: int) -> TlbArray | None:
        """The L1 structure for `op` that holds pages of `shift` whole (None: `_install` would
        cut a piece of a smaller size, or keep nothing)."""
        key = (op is Op.FETCH, shift)
        if key not in self._l1_home:
            self._l1_home[key] = next((a for a in self.l1(op) if shift in a.geometry.shifts), None)
        return self._l1_home[key]

    def stlb_to_l1(self, src: TlbArray, s: int, w: int, l1: TlbArray) -> None:
        """What `lookup` does on an STLB hit at (`src`, `s`, `w`) when no L1 way holds the page
        and `l1` holds its size whole: the STLB way's LRU stamp, then the entry into `l1`'s
        victim way of its set (`_install`)."""
        src.stamp[s, w] = self._tick()
        s1 = l1.set_of(int(src.vpn[s, w]))
        l1.copy_way(s1, l1.victim(s1), src, s, w, self._tick())

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
