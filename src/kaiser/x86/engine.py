"""The compiled replay engine: the reference MMU's semantics at tens of millions of references/s.

Two speeds, one semantics (docs: DESIGN.md). `kaiser.x86.events.replay_reference` feeds an event
array to the readable `kaiser.x86.mmu.Mmu`; `Engine.replay` feeds the same array to a numba loop
(`kaiser.x86.engine_core`, rules in `kaiser.x86.engine_rules`) over the same page tables and
TLB state, and returns the same `TlbCounters`, counter for counter, with the same final TLB
contents (LRU stamps included) and the same accessed/dirty bits in memory
(`tests/x86/test_engine.py` checks all three on random streams).

Memory: the engine reads page tables from its own copy of the frames (`PhysicalMemory.frames`)
plus a dense pfn -> row array (-1: untouched, reads as zero), and writes A/D bits and `WRITE_PHYS`
edits into that copy. With `replay(..., sync=True)` (the default) the copy is taken from `mem`
before the replay and written back after it, so `mem` stays the one truth. With `sync=False` the
engine keeps working on its copy across calls (no per-call copying); call `sync_back()` to write
it to `mem` and `reload_memory()` after editing `mem` from Python.

TLB state: the engine holds its own arrays in a layout built for the hot loop. `load_tlb(tlb)`
copies a reference `Tlb` in (so both paths can start from the same warm state) and
`store_tlb(tlb)` copies the engine's state out, field for field and way for way.

Data caches: with `caches=` a `CacheHierarchy`, the engine keeps the hierarchy's arrays
(`kaiser.x86.engine_cache`) and `load_caches`/`store_caches` copy a reference
`kaiser.x86.cache.Caches` in and out the same way; without, they cost one test per access.

Nested paging: with `host=` a `kaiser.x86.nested.HostTable`, every walk is two-dimensional as in
`kaiser.x86.nested.NestedMmu` (`Engine.from_mmu` takes it from a `NestedMmu`); without, the
host-walk code is one test per walk.

Counters: the engine adds up its counters as one int64 array (`counter_array()`, in the order of
`engine_core.COUNTER_NAMES`, which is `TlbCounters`' field order) and builds named ones only when
asked: `counters` (the total) and `replay`'s return value are `TlbCounters`; `step` returns the
call's counters as an array and names nothing, so small batches cost a few microseconds a call
(`kaiser bench engine` reports `per_call_us`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Final

import numpy as np

from kaiser.x86 import engine_cache as ec
from kaiser.x86 import engine_core as core
from kaiser.x86.bits import CR4, EFER, BitsError, cr3_reserved_mask
from kaiser.x86.cache import Caches
from kaiser.x86.cache_geometry import CacheHierarchy
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.engine_rules import reserved_mask
from kaiser.x86.events import EVENT_DTYPE, Ev
from kaiser.x86.geometry import mode_for
from kaiser.x86.mmu import GeneralProtection, InvalidOpcode, Mmu
from kaiser.x86.nested import HostTable, NestedMmu
from kaiser.x86.physmem import ENTRIES, PAGE_SIZE, PhysicalMemory, PhysMemError
from kaiser.x86.tlb import Tlb, TlbArray
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, INDEX_XOR, CacheGeometry, TlbGeometry

if tuple(f.name for f in dataclasses.fields(TlbCounters)) != core.COUNTER_NAMES:  # pragma: no cover
    raise ImportError("kaiser.x86.engine_core.COUNTER_NAMES no longer matches TlbCounters")

_MAX_SHIFTS: Final = core.S_MAX_SHIFTS
_WRITE_PHYS: Final = int(Ev.WRITE_PHYS)  # a plain int: numpy compares it faster than the enum
_WHY: Final = {
    core.WHY_CR3_RESERVED: "MOV to CR3 {a:#x} sets reserved bits (62:MAXPHYADDR)",
    core.WHY_CR3_NOFLUSH: "MOV to CR3 {a:#x}: bit 63 is reserved with CR4.PCIDE=0",
    core.WHY_CR4_HIGH: "MOV to CR4 {a:#x} sets reserved bits 63:32",
    core.WHY_CR4_FEATURE: "MOV to CR4 {a:#x} sets a bit the CPU does not support (CPUID)",
    core.WHY_CR4_PAE: "MOV to CR4 clearing PAE in IA-32e mode",
    core.WHY_CR4_LA57: "MOV to CR4 changing LA57 in IA-32e mode",
    core.WHY_CR4_PCIDE: "MOV to CR4 setting PCIDE with CR3[11:0] != 0 (needs 0)",
    core.WHY_INVPCID_TYPE: "INVPCID type {aux} > 3",
    core.WHY_INVPCID_PCID: "INVPCID descriptor bits 63:12 not zero (pcid={b:#x})",
    core.WHY_INVPCID_PCIDE: "INVPCID type {aux} for PCID {b:#x} with CR4.PCIDE=0 (only 000H)",
    core.WHY_INVPCID_CANONICAL: "INVPCID type 0 for non-canonical address {a:#x}",
    core.WHY_PHYS_ALIGN: "physical address {a:#x} is not 8-byte aligned",
    core.WHY_PHYS_RANGE: "physical address outside RAM (size {size:#x})",
    core.WHY_CR4_LASS_SMAP: "MOV to CR4 {a:#x} sets LASS without SMAP",
    core.WHY_PHYS_UNPREPARED: "a table edit at {a:#x} writes a frame the engine's copy has no storage for"
    " (Engine.prepare the events before a stepper replays them)",
}


def named_counters(counts: np.ndarray) -> TlbCounters:
    """The `TlbCounters` an engine counter array (`Engine.step`, `Engine.counter_array`) holds."""
    return TlbCounters(*counts.tolist())


class EngineError(ValueError):
    """An engine that cannot be built for these inputs (a geometry it cannot hold)."""


def _features_bits(features: CpuFeatures) -> int:
    bits = 0
    for flag, on in (
        (core.F_PCID, features.pcid),
        (core.F_SMEP, features.smep),
        (core.F_SMAP, features.smap),
        (core.F_PKU, features.pku),
        (core.F_LA57, features.la57),
        (core.F_INVPCID, features.invpcid),
        (core.F_LASS, features.lass),
    ):
        if on:
            bits |= flag
    return bits


def _index_bits(g: CacheGeometry) -> int:
    return g.sets.bit_length() - 1 if g.index == INDEX_XOR else 0


class Engine:
    """A compiled MMU: the same registers, TLBs and page tables as an `Mmu`, replayed fast."""

    def __init__(
        self,
        mem: PhysicalMemory,
        state: CpuState,
        features: CpuFeatures | None = None,
        geometry: TlbGeometry = DEFAULT_GEOMETRY,
        *,
        tlb: Tlb | None = None,
        caches: CacheHierarchy | None = None,
        host: HostTable | None = None,
    ) -> None:
        self.mem = mem
        self.host = host  # nested paging's host table (kaiser.x86.nested), None on bare metal
        self.features = features or CpuFeatures(maxphyaddr=mem.maxphyaddr, lass=state.lass)  # as Mmu
        self.geometry = tlb.geometry if tlb is not None else geometry
        self.hierarchy = caches
        n_counters = len(core.COUNTER_NAMES)
        self._total = np.zeros(n_counters, np.int64)  # every counter since the start, added up
        self._C = np.zeros(n_counters, np.int64)  # one call's counters (the compiled loop adds)
        # Scratch for the walk, one int64 per paging level: written before read within a walk.
        self._WV, self._PR, self._WA = (np.zeros(8, np.int64) for _ in range(3))
        self._cr0, self._efer, self._rflags, self._pkru = state.cr0, state.efer, state.rflags, state.pkru
        self._build_layout()
        self._build_caches()
        self.ST = np.array([state.cr3, state.cr4, state.cpl, 0], np.int64)
        self._build_levels()
        self._frames: np.ndarray | None = None  # the engine's copy of mem.frames, as int64
        self._row: np.ndarray = np.zeros(0, np.int64)  # pfn -> row of _frames, -1: untouched
        self._loaded: np.ndarray = np.zeros(0, np.int64)  # rows copied from mem
        self._new_pfns: dict[int, int] = {}  # pfn -> row of frames mem had no storage for
        self._written: set[int] = set()  # of those, the ones WRITE_PHYS events wrote
        if tlb is not None:
            self.load_tlb(tlb)

    @classmethod
    def from_mmu(cls, mmu: Mmu) -> Engine:
        """An engine starting from `mmu`'s registers, TLB and cache contents and memory."""
        hierarchy = mmu.caches.hierarchy if mmu.caches is not None else None
        host = mmu.host if isinstance(mmu, NestedMmu) else None
        engine = cls(mmu.mem, mmu.state, mmu.features, mmu.tlb.geometry, tlb=mmu.tlb, caches=hierarchy, host=host)
        if mmu.caches is not None:
            engine.load_caches(mmu.caches)
        return engine

    # ---- data caches --------------------------------------------------------------------------
    def _build_caches(self) -> None:
        """`CM` (`kaiser.x86.engine_cache`'s layout), every way invalid, and numpy views of its
        parts: `CD` (levels x CD_FIELDS), `CH` (the CH_* fields), `STR` (streams x 3)."""
        h = self.hierarchy
        levels = h.levels if h is not None else ()
        streams = max(1, h.streamer_streams) if h is not None else 1
        rows_size = sum(2 * level.lines for level in levels)
        saved_size = sum(level.lines for level in levels)
        self.CM = np.zeros(ec.CM_HEADER + rows_size + saved_size + 3 * streams, np.int64)
        self.CD = self.CM[: ec.CM_HIER].reshape(4, ec.CD_FIELDS)
        self.CH = self.CM[ec.CM_HIER : ec.CM_HIER + ec.CH_FIELDS]
        streams_at = ec.CM_HEADER + rows_size + saved_size
        self.CM[ec.CM_STREAMS_AT] = streams_at
        self.STR = self.CM[streams_at:].reshape(streams, 3)
        self.STR[:] = -1
        base, saved = ec.CM_HEADER, ec.CM_HEADER + rows_size
        for lv, level in enumerate(levels):
            sets = level.sets
            mask = sets - 1 if not sets & (sets - 1) else -1
            self.CD[lv] = (base, sets, level.ways, mask, saved, max(1, (level.ways - 1).bit_length()))
            base += 2 * level.lines
            saved += level.lines
        if h is not None:
            self.CH[: ec.CH_CLOCK] = (1, h.inclusive_llc, h.next_line, h.streamer_distance, h.streamer_degree, streams)
        for lv in range(len(levels)):  # every way invalid
            rows = self._rows(lv)
            ways = rows.shape[1] // 2
            rows[:, :ways] = -2
            rows[:, ways:] = self._keys(lv, np.full(ways, -1, np.int64))

    def _rows(self, lv: int) -> np.ndarray:
        """Level `lv`'s (sets, 2 x ways) view of `CM`: each set's tags, then its stamps."""
        base, sets, ways = (int(x) for x in self.CD[lv, : ec.CD_MASK])
        return self.CM[base : base + 2 * sets * ways].reshape(sets, 2 * ways)

    def _keys(self, lv: int, stamps: np.ndarray) -> np.ndarray:
        """The engine's stamps of ways with reference `stamps` (-1: invalid): (stamp << shift) | way."""
        ways, shift = int(self.CD[lv, ec.CD_WAYS]), int(self.CD[lv, ec.CD_SHIFT])
        return (stamps << shift) | np.arange(ways, dtype=np.int64)

    def _saved(self, lv: int) -> np.ndarray:
        """Level `lv`'s (sets, ways) view of the saved stamps in `CM`, those of invalid ways."""
        sets, ways, lo = int(self.CD[lv, ec.CD_SETS]), int(self.CD[lv, ec.CD_WAYS]), int(self.CD[lv, ec.CD_WAYS0])
        return self.CM[lo : lo + sets * ways].reshape(sets, ways)

    def _check_geometry(self, caches: Caches) -> None:
        if caches.hierarchy != self.hierarchy:
            raise EngineError(f"cache geometry {caches.hierarchy.name} is not the engine's")

    def load_caches(self, caches: Caches) -> None:
        """Copy a reference `Caches`' lines, LRU stamps, prefetch flags, streams and clock in:
        a valid way's tag is 2 x line + pf and its stamp is kept; an invalid way's tag is
        -2 + pf, its stamp -1 (so that one smallest-stamp scan finds the reference's victim) and
        the reference's stamp is saved in `CM`."""
        self._check_geometry(caches)
        for lv, arr in enumerate(caches.arrays):
            valid = arr.tag >= 0
            limit = 1 << (62 - int(self.CD[lv, ec.CD_SHIFT]))
            if np.any(arr.stamp[valid] < 0) or np.any(arr.stamp[valid] >= limit) or caches.clock >= limit:
                raise EngineError(f"{arr.level.name}: an LRU stamp or the clock is negative or not below {limit}")
            rows, ways = self._rows(lv), arr.ways
            pf = arr.pf.astype(np.int64)
            rows[:, :ways] = np.where(valid, 2 * arr.tag + pf, -2 + pf)
            rows[:, ways:] = self._keys(lv, np.where(valid, arr.stamp, -1))
            self._saved(lv)[:] = arr.stamp
        self.STR[:] = caches.streams
        self.CH[ec.CH_CLOCK] = caches.clock

    def store_caches(self, caches: Caches) -> None:
        """Copy the engine's cache state into a reference `Caches` of its hierarchy."""
        self._check_geometry(caches)
        for lv, arr in enumerate(caches.arrays):
            rows, ways = self._rows(lv), arr.ways
            tags = rows[:, :ways]
            valid = tags >= 0
            arr.tag[:] = np.where(valid, tags >> 1, -1)
            arr.stamp[:] = np.where(valid, rows[:, ways:] >> int(self.CD[lv, ec.CD_SHIFT]), self._saved(lv))
            arr.pf[:] = (tags & 1).astype(bool)
        caches.streams[:] = self.STR
        caches.clock = int(self.CH[ec.CH_CLOCK])

    # ---- layout -------------------------------------------------------------------------------
    def _build_layout(self) -> None:
        geo = self.geometry
        groups = (geo.itlb, geo.dtlb, geo.stlb)
        structs = [g for group in groups for g in group]
        self.S = np.zeros((len(structs), core.S_FIELDS), np.int64)
        self.GRP = np.zeros((3, 2), np.int64)
        self.BEST = np.full((3, 2, 64), -1, np.int64)
        base = k = 0
        for gi, group in enumerate(groups):
            self.GRP[gi, 0] = k
            for g in group:
                if len(g.shifts) > _MAX_SHIFTS:
                    raise EngineError(f"{g.name}: the engine holds at most {_MAX_SHIFTS} page sizes per structure")
                self.S[k, : core.S_SHIFT0] = (base, g.sets, g.ways, g.index, _index_bits(g), len(g.shifts))
                self.S[k, core.S_SHIFT0 : core.S_SHIFT0 + len(g.shifts)] = g.shifts
                base += g.entries
                k += 1
            self.GRP[gi, 1] = k
            # Tlb._install: the largest held shift <= the entry's, first structure on a tie.
            for entry_shift in range(64):
                best: tuple[int, int] | None = None
                for kk in range(int(self.GRP[gi, 0]), k):
                    for shift in structs[kk].shifts:
                        if shift <= entry_shift and (best is None or shift > best[1]):
                            best = (kk, shift)
                if best is not None:
                    self.BEST[gi, 0, entry_shift], self.BEST[gi, 1, entry_shift] = best
        self._structs = structs
        self.T = np.zeros((base, core.T_FIELDS), np.int64)
        self.T[:, core.T_KEY] = -1
        self.PD = np.zeros((len(geo.psc), core.PD_FIELDS), np.int64)
        self.PSC_OF = np.full(64, -1, np.int64)
        pbase = 0
        for p, g in enumerate(geo.psc):
            self.PD[p] = (pbase, g.sets, g.ways, g.index, _index_bits(g), g.shifts[0])
            self.PSC_OF[g.shifts[0]] = p
            pbase += g.entries
        self.Pc = np.zeros((core.P_FIELDS, pbase), np.int64)

    def _build_levels(self) -> None:
        f = self.features
        la57 = bool(self.ST[core.ST_CR4] & CR4.LA57)
        nxe = bool(self._efer & EFER.NXE)
        mode = mode_for(la57)
        self.LV = np.zeros((len(mode.levels), core.LV_FIELDS), np.int64)
        for d, lv in enumerate(mode.levels):
            self.LV[d] = (
                lv.shift,
                lv.leaf_ok,
                reserved_mask(lv, d == 0, False, f, nxe),
                reserved_mask(lv, d == 0, True, f, nxe),
            )
        self.M = np.zeros(core.M_FIELDS, np.int64)
        self.M[:] = (
            self._cr0,
            self._efer,
            self._rflags,
            self._pkru,
            f.maxphyaddr,
            self.mem.size // PAGE_SIZE,
            _features_bits(f),
            mode.va_bits,
            nxe,
            *self._host_fields(),
            cr3_reserved_mask(f.maxphyaddr),
        )

    def _host_fields(self) -> tuple[int, ...]:
        """M_HOST_NLEV, M_HOST_SHIFT, M_HOST_SIZE and the four level bases (zeros: bare metal)."""
        h = self.host
        if h is None:
            return (0,) * (core.M_HOST_B0 + 4 - core.M_HOST_NLEV)
        bases = h.level_bases
        if h.end >= 1 << 52 or tuple(39 - 9 * d for d in range(len(bases))) != h.shifts:
            raise EngineError(f"host table {h} is outside what the engine holds")
        return (len(bases), h.page_shift, h.guest_size, *bases, *(0,) * (4 - len(bases)))

    # ---- CPU state ----------------------------------------------------------------------------
    @property
    def state(self) -> CpuState:
        """The registers now (CR3, CR4 and CPL move with the events; the rest is fixed)."""
        return CpuState(
            cr3=int(self.ST[core.ST_CR3]),
            cr4=int(self.ST[core.ST_CR4]),
            cpl=int(self.ST[core.ST_CPL]),
            cr0=self._cr0,
            efer=self._efer,
            rflags=self._rflags,
            pkru=self._pkru,
        )

    @property
    def clock(self) -> int:
        return int(self.ST[core.ST_CLOCK])

    # ---- TLB state in and out -----------------------------------------------------------------
    def _tlb_arrays(self, tlb: Tlb) -> list[TlbArray]:
        if tlb.geometry != self.geometry:
            raise EngineError(f"TLB geometry {tlb.geometry.name} is not the engine's ({self.geometry.name})")
        return list(tlb.arrays)

    def load_tlb(self, tlb: Tlb) -> None:
        """Copy a reference `Tlb`'s entries, LRU stamps and clock into the engine."""
        T = self.T
        for k, arr in enumerate(self._tlb_arrays(tlb)):
            lo = int(self.S[k, core.S_BASE])
            sl = slice(lo, lo + arr.geometry.entries)
            vpn = arr.vpn.ravel().astype(np.int64)
            shift = arr.shift.ravel().astype(np.int64)
            T[sl, core.T_KEY] = np.where(arr.valid.ravel(), (vpn << 6) | shift, -1)
            T[sl, core.T_OWN] = arr.pcid.ravel().astype(np.int64) | (arr.glob.ravel().astype(np.int64) << 16)
            T[sl, core.T_STAMP] = arr.stamp.ravel()
            T[sl, core.T_PFN] = arr.pfn.ravel()
            T[sl, core.T_PSHIFT] = arr.page_shift.ravel()
            T[sl, core.T_RIGHTS] = (
                arr.user.ravel().astype(np.int64) | arr.writable.ravel() << 1 | arr.nx.ravel().astype(np.int64) << 2
            )
            T[sl, core.T_DIRTY] = arr.dirty.ravel()
            T[sl, core.T_PKEY] = arr.pkey.ravel()
            T[sl, core.T_VPN] = vpn
            T[sl, core.T_SHIFT] = shift
            # a piece of a larger page (TlbEntry.piece) among them: page faults scan it whole
            self.S[k, core.S_PIECES] = int(np.any(arr.valid & (arr.shift != arr.page_shift)))
        Pc = self.Pc
        for p, psc in enumerate(tlb.psc):
            lo = int(self.PD[p, core.PD_BASE])
            sl = slice(lo, lo + psc.geometry.entries)
            Pc[core.P_VALID, sl] = psc.valid.ravel()
            Pc[core.P_TAG, sl] = psc.tag.ravel()
            Pc[core.P_PCID, sl] = psc.pcid.ravel()
            Pc[core.P_TABLE, sl] = psc.table.ravel()
            Pc[core.P_RIGHTS, sl] = (
                psc.user.ravel().astype(np.int64) | psc.writable.ravel() << 1 | psc.nx.ravel().astype(np.int64) << 2
            )
            Pc[core.P_STAMP, sl] = psc.stamp.ravel()
        self.ST[core.ST_CLOCK] = tlb.clock

    def store_tlb(self, tlb: Tlb) -> None:
        """Copy the engine's entries, LRU stamps and clock into a reference `Tlb` of its geometry."""
        T = self.T
        for k, arr in enumerate(self._tlb_arrays(tlb)):
            lo = int(self.S[k, core.S_BASE])
            shape = arr.valid.shape
            sl = slice(lo, lo + arr.geometry.entries)
            own = T[sl, core.T_OWN]
            rights = T[sl, core.T_RIGHTS]
            arr.valid[:] = (T[sl, core.T_KEY] >= 0).reshape(shape)
            arr.vpn[:] = T[sl, core.T_VPN].reshape(shape)
            arr.shift[:] = T[sl, core.T_SHIFT].reshape(shape)
            arr.page_shift[:] = T[sl, core.T_PSHIFT].reshape(shape)
            arr.pcid[:] = (own & 0xFFFF).reshape(shape)
            arr.glob[:] = (own >= core.OWN_GLOBAL).reshape(shape)
            arr.pfn[:] = T[sl, core.T_PFN].reshape(shape)
            arr.user[:] = (rights & 1).reshape(shape).astype(bool)
            arr.writable[:] = (rights & 2).reshape(shape).astype(bool)
            arr.nx[:] = (rights & 4).reshape(shape).astype(bool)
            arr.dirty[:] = T[sl, core.T_DIRTY].reshape(shape).astype(bool)
            arr.pkey[:] = T[sl, core.T_PKEY].reshape(shape)
            arr.stamp[:] = T[sl, core.T_STAMP].reshape(shape)
        Pc = self.Pc
        for p, psc in enumerate(tlb.psc):
            lo = int(self.PD[p, core.PD_BASE])
            shape = psc.valid.shape
            sl = slice(lo, lo + psc.geometry.entries)
            rights = Pc[core.P_RIGHTS, sl]
            psc.valid[:] = Pc[core.P_VALID, sl].reshape(shape).astype(bool)
            psc.tag[:] = Pc[core.P_TAG, sl].reshape(shape)
            psc.pcid[:] = Pc[core.P_PCID, sl].reshape(shape)
            psc.table[:] = Pc[core.P_TABLE, sl].reshape(shape)
            psc.user[:] = (rights & 1).reshape(shape).astype(bool)
            psc.writable[:] = (rights & 2).reshape(shape).astype(bool)
            psc.nx[:] = (rights & 4).reshape(shape).astype(bool)
            psc.stamp[:] = Pc[core.P_STAMP, sl].reshape(shape)
        tlb.clock = self.clock

    def to_tlb(self) -> Tlb:
        """A new reference `Tlb` holding the engine's TLB state."""
        tlb = Tlb(self.geometry)
        self.store_tlb(tlb)
        return tlb

    def store_into(self, mmu: Mmu) -> None:
        """Make `mmu` continue where the engine stands: registers, TLB state (memory: `sync_back`)."""
        self.store_tlb(mmu.tlb)
        mmu.state = self.state

    # ---- memory -------------------------------------------------------------------------------
    def reload_memory(self) -> None:
        """Take a fresh copy of `mem`'s frames (after `mem` was edited from Python)."""
        mem = self.mem
        rows = mem._row_of  # PhysicalMemory's storage map, pfn -> row
        pfns = np.fromiter(rows.keys(), np.int64, len(rows))
        self._loaded = np.fromiter(rows.values(), np.int64, len(rows))
        self._frames = mem.frames.view(np.int64).copy()
        self._row = np.full(int(pfns.max()) + 1 if len(pfns) else 0, -1, np.int64)
        self._row[pfns] = self._loaded
        self._new_pfns = {}
        self._written = set()

    def _ensure_rows(self, events: np.ndarray) -> None:
        """Give the engine's copy storage for every frame a `WRITE_PHYS` event of `events` writes."""
        if self._frames is None:
            self.reload_memory()
        assert self._frames is not None
        if not core.count_kind(events, _WRITE_PHYS):  # the common case, checked without the GIL
            return
        is_write = events["kind"] == _WRITE_PHYS
        writes = events["a"][is_write]
        writes = writes[writes < np.uint64(self.mem.size)]
        if not len(writes):
            return
        pfns = np.unique(writes >> np.uint64(12)).astype(np.int64)
        row = self._row
        if int(pfns.max()) >= len(row):
            row = np.concatenate([row, np.full(int(pfns.max()) + 1 - len(row), -1, np.int64)])
        missing = pfns[row[pfns] < 0]
        if len(missing):
            first = len(self._frames)
            self._frames = np.concatenate([self._frames, np.zeros((len(missing), ENTRIES), np.int64)])
            for j, pfn in enumerate(missing.tolist()):
                row[pfn] = first + j
                self._new_pfns[pfn] = first + j
        self._row = row

    def sync_back(self) -> None:
        """Write the engine's copy of memory (A/D bits, `WRITE_PHYS` edits) into `mem`: the frames
        `mem` had when the copy was taken, and the frames `WRITE_PHYS` events wrote since."""
        if self._frames is None:
            return
        mem = self.mem
        if len(self._loaded):
            mem.frames[self._loaded] = self._frames[self._loaded].view(np.uint64)
        for pfn in sorted(self._written):
            r = self._new_pfns.get(pfn)
            if r is not None:
                mem.table(pfn * PAGE_SIZE)[:] = self._frames[r].view(np.uint64)

    # ---- counters -----------------------------------------------------------------------------
    @property
    def counters(self) -> TlbCounters:
        """Every counter since the engine was built (or last set), named: a new `TlbCounters`."""
        return named_counters(self._total)

    @counters.setter
    def counters(self, value: TlbCounters) -> None:
        self._total[:] = dataclasses.astuple(value)

    def counter_array(self) -> np.ndarray:
        """Every counter since the start as a copy of the engine's int64 array (COUNTER_NAMES)."""
        return self._total.copy()

    # ---- replay -------------------------------------------------------------------------------
    def replay(self, events: np.ndarray, *, sync: bool = True) -> TlbCounters:
        """Replay `events` as `replay_reference` would on an `Mmu` in the same state; returns the
        counters this replay added. Raises what the reference raises at the same event, with the
        state (counters, TLBs, memory) as the reference leaves it there."""
        return named_counters(self.step(events, sync=sync))

    def step(self, events: np.ndarray, *, sync: bool = True, accesses_only: bool = False) -> np.ndarray:
        """`replay` with the counters this replay added as a new int64 array (in the order of
        `engine_core.COUNTER_NAMES`; `named_counters` names them): the cheap call for small
        batches, most of all with `sync=False`. `accesses_only`: the caller vouches that `events`
        are memory accesses only (a decoded trace's user references), so the scan for `WRITE_PHYS`
        events, a pass over every event, is skipped."""
        if events.dtype != EVENT_DTYPE:
            raise TypeError(f"events must be an EVENT_DTYPE array, not {events.dtype}")
        if sync:
            self.reload_memory()
        if not accesses_only:
            self._ensure_rows(events)
        elif self._frames is None:
            self.reload_memory()
        assert self._frames is not None
        C = self._C
        C[:] = 0
        outcome, stop, why = core.replay(
            events,
            self.T,
            self.S,
            self.GRP,
            self.BEST,
            self.Pc,
            self.PD,
            self.PSC_OF,
            self.LV,
            self._frames,
            self._row,
            self.M,
            self.ST,
            C,
            self._WV,
            self._PR,
            self._WA,
            self.CM,
        )
        done = C.copy()
        self._total += done
        if self._new_pfns and not accesses_only:
            done_ev = events[: int(stop)]
            written = done_ev["a"][done_ev["kind"] == Ev.WRITE_PHYS] >> np.uint64(12)
            self._written.update(int(p) for p in np.unique(written) if int(p) in self._new_pfns)
        if sync:
            self.sync_back()
        if outcome != core.OK:
            raise self._error(events, int(outcome), int(stop), int(why))
        return done

    def prepare(self, events: np.ndarray) -> None:
        """Give the engine's copy of memory storage for every frame a `WRITE_PHYS` of `events`
        writes (what `step` does per call), so that a `stepper` may replay them."""
        self._ensure_rows(events)
        self._written.update(self._new_pfns)  # sync_back writes them whether or not written

    def stepper(self) -> Callable[[np.ndarray], np.ndarray]:
        """The cheapest `step(events, sync=False)`, for a caller stepping one state in many small
        calls (an attack's system call, then each probe alone, to read the probe's counters): a
        function of the events that replays them on the engine's copy of memory and returns the
        counters they added as one scratch array, overwritten by the next call (copy it to keep
        it); the total (`counters`) counts them too. It skips `step`'s per-call handling of
        `WRITE_PHYS` to frames `mem` has no storage for: `prepare` arrays that write such frames."""
        if self._frames is None:
            self.reload_memory()
        C, total, replay = self._C, self._total, core.replay
        fixed = (self.T, self.S, self.GRP, self.BEST, self.Pc, self.PD, self.PSC_OF, self.LV)
        state = (self.M, self.ST, C, self._WV, self._PR, self._WA, self.CM)

        def run(events: np.ndarray) -> np.ndarray:
            C[:] = 0
            outcome, stop, why = replay(events, *fixed, self._frames, self._row, *state)
            np.add(total, C, out=total)
            if outcome != core.OK:
                raise self._error(events, int(outcome), int(stop), int(why))
            return C

        return run

    def rounds(self, before: np.ndarray, probe: np.ndarray, vas: np.ndarray, reps: int) -> np.ndarray:
        """For each address of `vas` in turn, `reps` times: `before` (a system call), then each
        event of `probe` alone with its address set to that one; the same as those `step`s with
        `sync=False` one by one, in one compiled call (`engine_core.replay_rounds`). Returns the
        counters each probe event added, as an int64 array of shape (len(vas), reps, len(probe),
        counters); `counters` counts everything."""
        for events in (before, probe):
            if events.dtype != EVENT_DTYPE:
                raise TypeError(f"events must be an EVENT_DTYPE array, not {events.dtype}")
            self.prepare(events)
        probe = probe.copy()  # its addresses are set per round
        out = np.zeros((len(vas), reps, len(probe), len(self._total)), np.int64)
        C = self._C
        C[:] = 0
        outcome, stop, why, at, part = core.replay_rounds(
            before, probe, np.asarray(vas, np.uint64), reps, out,
            self.T, self.S, self.GRP, self.BEST, self.Pc, self.PD, self.PSC_OF, self.LV, self._frames, self._row,
            self.M, self.ST, C, self._WV, self._PR, self._WA, self.CM,
        )  # fmt: skip
        self._total += C
        if outcome != core.OK:
            events = before if part < 0 else probe[part : part + 1]
            raise self._error(events, int(outcome), int(stop), int(why))
        return out

    def _error(self, events: np.ndarray, outcome: int, at: int, why: int) -> Exception:
        kind, cpl, aux, a, b = events[at].tolist()
        text = _WHY.get(why, "").format(a=a, b=b, aux=aux, size=self.mem.size)
        where = f"event {at} (kind {kind})"
        if outcome == core.ERR_GP:
            return GeneralProtection(f"{text} at {where}")
        if outcome == core.ERR_UD:
            return InvalidOpcode(f"INVPCID is not supported at {where}")
        if outcome == core.ERR_PHYS and why == core.WHY_PHYS_UNPREPARED:
            return EngineError(f"{text} at {where}")
        if outcome == core.ERR_PHYS:
            return PhysMemError(f"{text} at {where}")
        if outcome == core.ERR_CPL:
            return BitsError(f"cpl={cpl} is not 0..3 at {where}")
        return ValueError(f"event kind {kind} is not an Ev at {where}")


def warm_up() -> None:
    """Compile every entry point of the engine (or load them from numba's cache): a replay of
    every event kind with data caches and nested paging on, and `rounds`, on a page of RAM
    mapped once. tests/conftest.py runs it in a process of its own at the start of a parallel
    suite, so that the workers load the engine instead of each compiling it."""
    from kaiser.x86.bits import PTE
    from kaiser.x86.cache_geometry import get_hierarchy
    from kaiser.x86.pagetable import PageTable

    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem)
    pt.map(0x400000, 0x200000, PAGE_SIZE, PTE.US | PTE.RW)
    state = CpuState(cr3=pt.cr3(), cr4=CR4.PAE | CR4.PGE, cpl=3, efer=EFER.LME | EFER.LMA | EFER.NXE)
    rows = [(int(kind), 3, 0, 0x400000, 0) for kind in (Ev.READ, Ev.WRITE, Ev.FETCH)]
    rows += [(int(Ev.MOV_CR3), 0, 0, pt.cr3(), 0), (int(Ev.INVLPG), 0, 0, 0x400000, 0)]
    rows += [(int(Ev.MOV_CR4), 0, 0, int(CR4.PAE), 0), (int(Ev.WRITE_PHYS), 0, 0, 0x200000, 0)]
    events = np.array(rows, EVENT_DTYPE)
    host = HostTable.build(mem.size, "2m")
    engine = Engine(mem, state, caches=get_hierarchy("skylake-client"), host=host)
    engine.replay(events)
    engine.rounds(events[:3], events[:1], np.array([0x400000], np.uint64), 1)
