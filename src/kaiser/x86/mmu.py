"""The MMU of one logical processor: accesses through the TLBs (`kaiser.x86.tlb`), walks on a
miss (`kaiser.x86.walker.translate`), and the instructions that change what the TLBs may hold.

The reference path the compiled engine must agree with. What is modelled (Intel SDM Vol. 3A
§4.10; the TLB structures' side is `kaiser.x86.tlb`'s docstring):

* Rights are checked on every use against the cached rights and the current CR0/CR4/CPL
  (`kaiser.x86.rights.check_access`). A use the cached rights forbid raises #PF from the TLB
  without a walk (the "spurious" fault of §4.10.4.3), and that page fault invalidates the entries
  for the page (§4.10.4.1, last paragraph).
* A write through an entry whose dirty flag is 0 walks again to set D in memory (a "dirty
  assist"), as the processor must set D (§4.8) and the entry does not say whether D is set now.
* A walk's loads are cut short by the deepest paging-structure-cache hit that still equals
  memory (§4.10.3.2); its non-leaf entries fill the paging-structure caches and its leaf the TLBs.
* MOV to CR3/CR4, INVLPG and INVPCID drop what §4.10.4.1 says they drop, and fault (#GP, #UD)
  where the instruction would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from kaiser.x86.bits import CR3_NOFLUSH, CR3_PCID_MASK, CR4, PF_VECTOR, PKEY_SHIFT, PTE, cr3_reserved_mask, entry_phys
from kaiser.x86.cache import KIND_DATA, KIND_FETCH, KIND_WALK, Caches
from kaiser.x86.cache_geometry import CacheHierarchy
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.geometry import mode_for
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op, Rights, access_error_bits, check_access, lass_violation
from kaiser.x86.tlb import PSC_NAMES, HitLevel, Tlb, TlbEntry
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, TlbGeometry
from kaiser.x86.walker import GP_VECTOR, EntryRef, Fault, Translation, translate

UD_VECTOR: Final = 6


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


class _HitView:
    """What `Mmu.hit_pa` reads of one register state, computed once per state (a `CpuState` is
    frozen, so the same object means the same registers): the paging mode, PCID, CR4.PGE and
    CR4.LASS, and `check_access`'s verdicts by cached rights, protection key and access."""

    __slots__ = ("_verdicts", "lass", "mode", "pcid", "pge", "state")

    def __init__(self, state: CpuState) -> None:
        self.state = state
        self.mode = mode_for(state.la57)
        self.pcid = state.pcid
        self.pge = state.pge
        self.lass = state.lass
        self._verdicts: dict[tuple[bool, bool, bool, int, Op], bool] = {}

    def allowed(self, user: bool, writable: bool, nx: bool, pkey: int, op: Op) -> bool:
        """`check_access` of an explicit access through a TLB entry with these cached rights."""
        key = (user, writable, nx, pkey, op)
        verdict = self._verdicts.get(key)
        if verdict is None:
            check = check_access(Rights(user, writable, nx), pkey << PKEY_SHIFT, op, self.state, False)
            verdict = self._verdicts[key] = check.allowed
        return verdict


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
        self._hit_view = _HitView(state)

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

    def hit_pa(self, va: int, op: Op = Op.READ) -> int | None:
        """`access(va, op)` for its common case, at a fraction of the cost: an explicit access
        that hits an L1 TLB (iTLB for a fetch, else dTLB), or the STLB with a page size the L1
        structure holds whole, and completes there. Then it has every effect `access` has -- the
        hit counted, the LRU stamps, the L1 refill, the data caches -- and returns the physical
        address `access(va, op).pa` would. Otherwise (non-canonical, LASS, a miss, a piece to
        cut, cached rights that forbid it, a write needing a dirty assist) it changes nothing
        and returns None, so the caller's `access` finds what it would have found."""
        view = self._hit_view if self._hit_view.state is self.state else self._new_hit_view()
        if not view.mode.is_canonical(va) or (view.lass and lass_violation(va, op, view.state, False) is not None):
            return None
        tlb = self.tlb
        found = tlb.l1_way(va, op, view.pcid, view.pge)
        l1 = None
        if found is None:  # an STLB hit copied whole into L1 is taken too
            found = tlb.stlb_way(va, view.pcid, view.pge)
            if found is None:
                return None
            l1 = tlb.l1_holding(op, int(found[0].shift[found[1], found[2]]))
            if l1 is None:
                return None
        arr, s, w = found
        if not view.allowed(
            bool(arr.user[s, w]), bool(arr.writable[s, w]), bool(arr.nx[s, w]), int(arr.pkey[s, w]), op
        ):
            return None
        if op is Op.WRITE and not arr.dirty[s, w]:
            return None
        c = self._counters
        fetch = op is Op.FETCH
        if l1 is None:
            arr.stamp[s, w] = tlb._tick()
            c.itlb_hits += fetch
            c.dtlb_hits += not fetch
        else:
            tlb.stlb_to_l1(arr, s, w, l1)
            c.itlb_misses += fetch
            c.dtlb_misses += not fetch
            c.stlb_hits_i += fetch
            c.stlb_hits_d += not fetch
        shift = int(arr.shift[s, w])
        pa = (int(arr.pfn[s, w]) << shift) | (va & ((1 << shift) - 1))
        if self.caches is not None:
            self.caches.access(pa, KIND_FETCH if fetch else KIND_DATA)
        return pa

    def _new_hit_view(self) -> _HitView:
        self._hit_view = _HitView(self.state)
        return self._hit_view

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
        self._walk_loads(walked, saved)
        if isinstance(result, Fault):
            c.faults += 1
            self._page_fault_invalidate(va)
            return Access(va, op, level, None, result, result, loads)
        entry = self._fill(result, va, op, walked, saved, prefix)
        return Access(va, op, level, entry, None, result, loads)

    def _walk_loads(self, walked: Sequence[EntryRef], saved: int) -> None:
        """The walk's table reads through the data caches, in order (the first `saved` entries a
        paging-structure-cache hit skipped are not read)."""
        if self.caches is not None:
            for ref in walked[saved:]:
                self.caches.access(ref.address, KIND_WALK)

    def _fill(
        self, result: Translation, va: int, op: Op, walked: Sequence[EntryRef], saved: int, prefix: Sequence[Rights]
    ) -> TlbEntry:
        """After a walk that succeeded: the paging-structure caches, then the TLBs."""
        self._psc_fill_path(va, walked, saved, prefix)
        return self.tlb.fill(result, self.state, op)

    def _psc_fill_path(self, va: int, walked: Sequence[EntryRef], saved: int, prefix: Sequence[Rights]) -> None:
        """§4.10.3.1: cache the non-leaf entries the walk read (not the ones a cache hit gave)."""
        for depth in range(saved, len(walked) - 1):
            ref = walked[depth]
            self.tlb.psc_fill(ref.level.shift, va, self.state.pcid, entry_phys(ref.value), prefix[depth])

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
        reserved = cr3_reserved_mask(self.features.maxphyaddr)
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
