"""The compiled replay loop: `kaiser.x86.mmu.Mmu` + `kaiser.x86.walker.translate`, in numba.

Everything here mirrors the reference path operation by operation, in the same order, so that
the LRU clock ticks at the same moments and every counter moves the same way (SDM rules and
their citations live in `kaiser.x86.engine_rules` and in the reference modules). The layout of
the arrays is built and explained by `kaiser.x86.engine`; this module only reads it.

State is plain int64 arrays:

* `T[i, field]`: every TLB entry of every structure (iTLB, dTLB, STLB in `Tlb.arrays` order), one
  row per entry, so an entry's fields share a cache line or two (`T_*`). `T_KEY` folds valid,
  page number and page-size shift into one int64
  (`vpn << 6 | shift`, -1 when invalid) and `T_OWN` holds `pcid | global << 16`, so a lookup
  compares two words per way.
* `P[field, i]`: the paging-structure caches (`P_*`).
* `S[k]`: structure k's descriptor (`S_*`); `GRP[g]`: structures of group g (0 iTLB, 1 dTLB,
  2 STLB); `BEST[g, shift]`: the structure and shift of group g that holds a `shift`-sized entry
  (or its pieces); `PD[k]`, `PSC_OF[shift]`: the same for the paging-structure caches.
* `LV[d]`: the paging mode's level d (shift, PS allowed, reserved masks).
* `F[row, word]`, `ROW[pfn]`: the engine's copy of physical memory (-1: untouched frame).
* `M`: fixed machine parameters; `ST`: cr3, cr4, cpl, LRU clock; `C`: the counters.
* Nested paging (`kaiser.x86.nested`): `M[M_HOST_NLEV]` EPT levels a host walk reads (0: bare
  metal), `M[M_HOST_B0 + d]` the host-physical base of level d's tables (entry of a
  guest-physical address: base + 8 * (gpa >> shift), the identity map's layout),
  `M[M_HOST_SHIFT]` the EPT page shift and `M[M_HOST_SIZE]` the guest RAM it covers.
* `CM`: the data caches, one array (`kaiser.x86.engine_cache`; `CM[CM_ON] == 0`: none). Walk
  loads reach them from `walk`, completed accesses from `replay`, in the order of
  `kaiser.x86.mmu.Mmu`.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from kaiser.x86.engine_cache import CACHE_COUNTER_NAMES, CM_ON, KIND_DATA, KIND_FETCH, KIND_WALK
from kaiser.x86.engine_cache import access as cache_access
from kaiser.x86.engine_jit import inline, jit
from kaiser.x86.engine_rules import (
    ADDR_MASK_52,
    CR4_LA57,
    CR4_LASS,
    CR4_PAE,
    CR4_PCIDE,
    CR4_PGE,
    CR4_PKE,
    CR4_SMAP,
    CR4_SMEP,
    NOFLUSH,
    OP_FETCH,
    OP_WRITE,
    PCID_MASK,
    PKEY_SHIFT,
    PS,
    R_ALL,
    A,
    D,
    G,
    P,
    check_access,
    lass_blocks,
    through,
)

# ---- layout constants (the Python side builds the arrays with the same names) ----------------
T_KEY, T_OWN, T_STAMP, T_PFN, T_PSHIFT, T_RIGHTS, T_DIRTY, T_PKEY, T_VPN, T_SHIFT = range(10)
T_FIELDS: Final = 10
P_VALID, P_TAG, P_PCID, P_TABLE, P_RIGHTS, P_STAMP = range(6)
P_FIELDS: Final = 6
S_BASE, S_SETS, S_WAYS, S_INDEX, S_BITS, S_NSHIFT, S_SHIFT0 = range(7)  # S_SHIFT0.. up to 3 shifts
S_MAX_SHIFTS: Final = 3
# S_PIECES: 1 once the structure may hold a piece of a larger page (an entry whose shift is not its
# page's); until then every entry for a page of `va` lies in the set of `va` for its shift.
S_PIECES: Final = S_SHIFT0 + S_MAX_SHIFTS
S_FIELDS: Final = S_PIECES + 1
PD_BASE, PD_SETS, PD_WAYS, PD_INDEX, PD_BITS, PD_SHIFT = range(6)
PD_FIELDS: Final = 6
LV_SHIFT, LV_LEAF_OK, LV_RSV, LV_RSV_LARGE = range(4)
LV_FIELDS: Final = 4
M_CR0, M_EFER, M_RFLAGS, M_PKRU, M_MAXPHYADDR, M_SIZE_PFNS, M_FEATURES, M_VA_BITS, M_NXE = range(9)
M_HOST_NLEV, M_HOST_SHIFT, M_HOST_SIZE, M_HOST_B0 = range(9, 13)  # M_HOST_B0..+3: EPT level bases
M_CR3_RSV: Final = 16  # bits.cr3_reserved_mask(MAXPHYADDR)
M_FIELDS: Final = 17
ST_CR3, ST_CR4, ST_CPL, ST_CLOCK = range(4)
OWN_GLOBAL: Final = 1 << 16
GROUP_I, GROUP_D, GROUP_S = 0, 1, 2

# CPUID features (bits of M[M_FEATURES]).
F_PCID, F_SMEP, F_SMAP, F_PKU, F_LA57, F_INVPCID, F_LASS = (1 << i for i in range(7))

# Counter indices: the fields of `kaiser.x86.counters.TlbCounters`, in order (checked at import by
# `kaiser.x86.engine`); the cache counters (indices from 32) are `engine_cache`'s.
TLB_COUNTER_NAMES: Final = (
    "itlb_hits",
    "itlb_misses",
    "dtlb_hits",
    "dtlb_misses",
    "stlb_hits_i",
    "stlb_hits_d",
    "stlb_misses_i",
    "stlb_misses_d",
    "walks_i",
    "walks_d",
    "walk_loads",
    "walk_loads_saved",
    "psc_hits_pml5e",
    "psc_hits_pml4e",
    "psc_hits_pdpte",
    "psc_hits_pde",
    "psc_stale",
    "dirty_assists",
    "faults",
    "tlb_faults",
    "cr3_writes",
    "cr3_noflush",
    "cr4_flush_all",
    "cr4_flush_pcid",
    "invlpg",
    "invpcid_address",
    "invpcid_single",
    "invpcid_all_global",
    "invpcid_all",
    "pf_invalidations",
    "tlb_entries_dropped",
    "psc_entries_dropped",
)
# Nested paging's counters follow the cache counters (`TlbCounters`' last fields).
NESTED_COUNTER_NAMES: Final = ("host_walks", "host_walk_loads")
C_HOST_WALKS, C_HOST_WALK_LOADS = range(
    len(TLB_COUNTER_NAMES) + len(CACHE_COUNTER_NAMES), len(TLB_COUNTER_NAMES) + len(CACHE_COUNTER_NAMES) + 2
)
COUNTER_NAMES: Final = TLB_COUNTER_NAMES + CACHE_COUNTER_NAMES + NESTED_COUNTER_NAMES
(
    C_ITLB_HITS,
    C_ITLB_MISSES,
    C_DTLB_HITS,
    C_DTLB_MISSES,
    C_STLB_HITS_I,
    C_STLB_HITS_D,
    C_STLB_MISSES_I,
    C_STLB_MISSES_D,
    C_WALKS_I,
    C_WALKS_D,
    C_WALK_LOADS,
    C_WALK_LOADS_SAVED,
    C_PSC_HITS_PML5E,
    C_PSC_HITS_PML4E,
    C_PSC_HITS_PDPTE,
    C_PSC_HITS_PDE,
    C_PSC_STALE,
    C_DIRTY_ASSISTS,
    C_FAULTS,
    C_TLB_FAULTS,
    C_CR3_WRITES,
    C_CR3_NOFLUSH,
    C_CR4_FLUSH_ALL,
    C_CR4_FLUSH_PCID,
    C_INVLPG,
    C_INVPCID_ADDRESS,
    C_INVPCID_SINGLE,
    C_INVPCID_ALL_GLOBAL,
    C_INVPCID_ALL,
    C_PF_INVALIDATIONS,
    C_TLB_ENTRIES_DROPPED,
    C_PSC_ENTRIES_DROPPED,
) = range(32)

# Outcome of a replay: how it stopped (the Python side raises the reference path's exception).
OK, ERR_GP, ERR_UD, ERR_PHYS, ERR_CPL, ERR_KIND = range(6)
# Detail codes for the messages.
(
    WHY_NONE,
    WHY_CR3_RESERVED,
    WHY_CR3_NOFLUSH,
    WHY_CR4_HIGH,
    WHY_CR4_FEATURE,
    WHY_CR4_PAE,
    WHY_CR4_LA57,
    WHY_CR4_PCIDE,
    WHY_INVPCID_TYPE,
    WHY_INVPCID_PCID,
    WHY_INVPCID_PCIDE,
    WHY_INVPCID_CANONICAL,
    WHY_PHYS_ALIGN,
    WHY_PHYS_RANGE,
    WHY_CR4_LASS_SMAP,
    WHY_PHYS_UNPREPARED,
) = range(16)

# Walk outcomes.
W_OK, W_FAULT, W_PHYS = 0, 1, 2


# ---- small helpers ---------------------------------------------------------------------------
@inline
def lsr(x: int, k: int) -> int:
    """Logical right shift of a 64-bit pattern held in an int64 (`k` in 1..63)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


@inline
def set_of(sets: int, kind: int, bits: int, tag: int) -> int:
    """`kaiser.x86.tlb_geometry.set_index`: modulo, or the XOR hash (tags are never negative)."""
    if kind == 1:
        return (tag ^ (tag >> bits)) & (sets - 1)
    if sets & (sets - 1) == 0:
        return tag & (sets - 1)  # the same as the modulo, without a 64-bit division
    return tag % sets


@inline
def tick(ST: np.ndarray) -> int:
    """The one LRU clock of a `Tlb`: ticks on every hit and every fill."""
    ST[ST_CLOCK] += 1
    return ST[ST_CLOCK]


@inline
def current_pcid(ST: np.ndarray) -> int:
    """The PCID of the loaded CR3 (0 without CR4.PCIDE, SDM Vol. 3A §4.10.1)."""
    return ST[ST_CR3] & PCID_MASK if ST[ST_CR4] & CR4_PCIDE else 0


@inline
def is_canonical(va: int, va_bits: int) -> bool:
    """Bits 63:va_bits-1 all equal (SDM Vol. 1 §3.3.7.1)."""
    top = va >> (va_bits - 1)
    return top == 0 or top == -1


# ---- TLB structures --------------------------------------------------------------------------
@inline
def tlb_find(T: np.ndarray, S: np.ndarray, k: int, va: int, shift: int, pcid: int, pge: bool) -> int:
    """`TlbArray.find`: the first way of structure k holding the `shift`-sized page of `va` usable
    by `pcid` (same PCID, or global with CR4.PGE=1, SDM §4.10.2.4); -1 if none."""
    vpn = lsr(va, shift)
    key = (vpn << 6) | shift
    ways = S[k, S_WAYS]
    base = S[k, S_BASE] + set_of(S[k, S_SETS], S[k, S_INDEX], S[k, S_BITS], vpn) * ways
    for i in range(base, base + ways):
        if T[i, T_KEY] == key:
            own = T[i, T_OWN]
            if (own & 0xFFFF) == pcid or (pge and own >= OWN_GLOBAL):
                return i
    return -1


@inline
def tlb_search(T: np.ndarray, S: np.ndarray, GRP: np.ndarray, g: int, va: int, pcid: int, pge: bool) -> int:
    """`Tlb._search`: the group's structures in order, each page size smallest first."""
    for k in range(GRP[g, 0], GRP[g, 1]):
        for j in range(S[k, S_NSHIFT]):
            i = tlb_find(T, S, k, va, S[k, S_SHIFT0 + j], pcid, pge)
            if i >= 0:
                return i
    return -1


@inline
def victim(T: np.ndarray, base: int, ways: int) -> int:
    """The first invalid way, else the least recently used (first smallest stamp, `np.argmin`)."""
    for i in range(base, base + ways):
        if T[i, T_KEY] < 0:
            return i
    best = base
    for i in range(base + 1, base + ways):
        if T[i, T_STAMP] < T[best, T_STAMP]:
            best = i
    return best


@inline
def tlb_install(
    T: np.ndarray,
    S: np.ndarray,
    BEST: np.ndarray,
    ST: np.ndarray,
    g: int,
    va: int,
    pcid: int,
    pge: bool,
    e_shift: int,
    e_pfn: int,
    e_pshift: int,
    e_own: int,
    e_rights: int,
    e_dirty: int,
    e_pkey: int,
) -> None:
    """`Tlb._install`: write an entry into the group's structure for its page size, or as the
    piece holding `va` of the largest smaller size it holds (SDM §4.10.2.3). The way a lookup of
    `va` would hit is overwritten, else a victim is chosen."""
    k = BEST[g, 0, e_shift]
    if k < 0:
        return
    shift = BEST[g, 1, e_shift]
    vpn = lsr(va, shift)
    pfn = e_pfn
    if shift != e_shift:  # TlbEntry.piece: the same translation cut to the `shift`-sized page
        pa = (e_pfn << e_shift) | (va & ((1 << e_shift) - 1))
        pfn = pa >> shift
    i = tlb_find(T, S, k, va, shift, pcid, pge)
    if i < 0:
        ways = S[k, S_WAYS]
        base = S[k, S_BASE] + set_of(S[k, S_SETS], S[k, S_INDEX], S[k, S_BITS], vpn) * ways
        i = victim(T, base, ways)
    if shift != e_pshift:  # a piece of a larger page (also a nested combined mapping's)
        S[k, S_PIECES] = 1
    T[i, T_KEY] = (vpn << 6) | shift
    T[i, T_OWN] = e_own
    T[i, T_PFN] = pfn
    T[i, T_PSHIFT] = e_pshift
    T[i, T_RIGHTS] = e_rights
    T[i, T_DIRTY] = e_dirty
    T[i, T_PKEY] = e_pkey
    T[i, T_VPN] = vpn
    T[i, T_SHIFT] = shift
    T[i, T_STAMP] = tick(ST)


@jit
def tlb_invalidate(T: np.ndarray, n: int, pcid: int, globals_too: bool, has_va: bool, va: int) -> int:
    """`Tlb.invalidate_tlb`: drop non-global entries of `pcid` (-1: every PCID) and, with
    `globals_too`, global entries of every PCID; with `has_va` only entries for the page of `va`
    (every piece of a large page with it, SDM §4.10.4.1 footnote 1). Returns the count."""
    dropped = 0
    for i in range(n):
        if T[i, T_KEY] < 0:
            continue
        own = T[i, T_OWN]
        which = globals_too if own >= OWN_GLOBAL else pcid < 0 or own == pcid
        if which and has_va:
            ps = T[i, T_PSHIFT]
            which = (T[i, T_VPN] >> (ps - T[i, T_SHIFT])) == lsr(va, ps)
        if which:
            T[i, T_KEY] = -1
            dropped += 1
    return dropped


@inline
def tlb_drop_page(T: np.ndarray, lo: int, hi: int, pcid: int, va: int) -> int:
    """`tlb_invalidate(..., globals_too=True, has_va=True, va)` over entries lo..hi-1."""
    dropped = 0
    for i in range(lo, hi):
        if T[i, T_KEY] < 0:
            continue
        own = T[i, T_OWN]
        if own >= OWN_GLOBAL or pcid < 0 or own == pcid:
            ps = T[i, T_PSHIFT]
            if (T[i, T_VPN] >> (ps - T[i, T_SHIFT])) == lsr(va, ps):
                T[i, T_KEY] = -1
                dropped += 1
    return dropped


@jit
def tlb_invalidate_page(T: np.ndarray, S: np.ndarray, pcid: int, va: int) -> int:
    """`tlb_invalidate(T, n, pcid, True, True, va)`, a page fault's, looking only where the
    entries can be: in a structure that never held a piece of a larger page (S_PIECES), an entry
    for the page of `va` is in the set of `va` for its own shift (`tlb_install`); a structure that
    did is scanned whole. Returns the count dropped."""
    dropped = 0
    for k in range(S.shape[0]):
        base, ways = S[k, S_BASE], S[k, S_WAYS]
        if S[k, S_PIECES]:
            dropped += tlb_drop_page(T, base, base + S[k, S_SETS] * ways, pcid, va)
            continue
        for j in range(S[k, S_NSHIFT]):
            lo = base + set_of(S[k, S_SETS], S[k, S_INDEX], S[k, S_BITS], lsr(va, S[k, S_SHIFT0 + j])) * ways
            dropped += tlb_drop_page(T, lo, lo + ways, pcid, va)
    return dropped


@jit
def tlb_invalidate_pcid_all(T: np.ndarray, n: int, pcid: int) -> int:
    """`Tlb.invalidate_pcid_all`: every entry tagged `pcid`, global or not, and every global one."""
    dropped = 0
    for i in range(n):
        if T[i, T_KEY] >= 0:
            own = T[i, T_OWN]
            if own >= OWN_GLOBAL or own == pcid:
                T[i, T_KEY] = -1
                dropped += 1
    return dropped


# ---- paging-structure caches -----------------------------------------------------------------
@inline
def psc_find(Pc: np.ndarray, PD: np.ndarray, p: int, va: int, pcid: int) -> int:
    """`PscArray.find`: the way of cache p tagged VA >> level shift and `pcid`; -1 if none."""
    tag = lsr(va, PD[p, PD_SHIFT])
    ways = PD[p, PD_WAYS]
    base = PD[p, PD_BASE] + set_of(PD[p, PD_SETS], PD[p, PD_INDEX], PD[p, PD_BITS], tag) * ways
    for i in range(base, base + ways):
        if Pc[P_VALID, i] and Pc[P_TAG, i] == tag and Pc[P_PCID, i] == pcid:
            return i
    return -1


@inline
def psc_fill(
    Pc: np.ndarray, PD: np.ndarray, ST: np.ndarray, p: int, va: int, pcid: int, table: int, rights: int
) -> None:
    """`Tlb.psc_fill`: cache a non-leaf entry a walk used (SDM §4.10.3.1)."""
    i = psc_find(Pc, PD, p, va, pcid)
    tag = lsr(va, PD[p, PD_SHIFT])
    if i < 0:
        ways = PD[p, PD_WAYS]
        base = PD[p, PD_BASE] + set_of(PD[p, PD_SETS], PD[p, PD_INDEX], PD[p, PD_BITS], tag) * ways
        i = base
        found = False
        for j in range(base, base + ways):  # first invalid way, else LRU
            if not Pc[P_VALID, j]:
                i = j
                found = True
                break
        if not found:
            for j in range(base + 1, base + ways):
                if Pc[P_STAMP, j] < Pc[P_STAMP, i]:
                    i = j
    Pc[P_VALID, i] = 1
    Pc[P_TAG, i] = tag
    Pc[P_PCID, i] = pcid
    Pc[P_TABLE, i] = table
    Pc[P_RIGHTS, i] = rights
    Pc[P_STAMP, i] = tick(ST)


@jit
def psc_invalidate(Pc: np.ndarray, PD: np.ndarray, pcid: int, has_va: bool, va: int) -> int:
    """`Tlb.invalidate_psc`: entries of `pcid` (-1: all) that would translate `va` (if given)."""
    dropped = 0
    for p in range(PD.shape[0]):
        base = PD[p, PD_BASE]
        tag = lsr(va, PD[p, PD_SHIFT])
        for i in range(base, base + PD[p, PD_SETS] * PD[p, PD_WAYS]):
            if Pc[P_VALID, i] and (pcid < 0 or Pc[P_PCID, i] == pcid) and (not has_va or Pc[P_TAG, i] == tag):
                Pc[P_VALID, i] = 0
                dropped += 1
    return dropped


@jit
def pf_invalidate(
    T: np.ndarray, S: np.ndarray, Pc: np.ndarray, PD: np.ndarray, C: np.ndarray, va: int, pcid: int
) -> None:
    """`Mmu._page_fault_invalidate`: a #PF drops the page's TLB entries of the current PCID
    (global ones too) and the current PCID's paging-structure-cache entries for `va`
    (SDM §4.10.4.1)."""
    C[C_PF_INVALIDATIONS] += 1
    C[C_TLB_ENTRIES_DROPPED] += tlb_invalidate_page(T, S, pcid, va)
    C[C_PSC_ENTRIES_DROPPED] += psc_invalidate(Pc, PD, pcid, True, va)


@jit
def drop(
    T: np.ndarray,
    Pc: np.ndarray,
    PD: np.ndarray,
    C: np.ndarray,
    pcid: int,
    globals_too: bool,
    has_va: bool,
    va: int,
    psc_has_va: bool,
) -> None:
    """`Mmu._drop`: TLB entries per `tlb_invalidate`, paging-structure caches of `pcid`."""
    C[C_TLB_ENTRIES_DROPPED] += tlb_invalidate(T, T.shape[0], pcid, globals_too, has_va, va)
    C[C_PSC_ENTRIES_DROPPED] += psc_invalidate(Pc, PD, pcid, psc_has_va, va)


# ---- the walk ---------------------------------------------------------------------------------
@inline
def read_phys(F: np.ndarray, ROW: np.ndarray, size_pfns: int, pa: int) -> tuple[int, int, bool]:
    """(row, word, in RAM) of the 8-byte word at `pa`; row -1: an untouched frame (reads 0)."""
    pfn = pa >> 12
    if pfn >= size_pfns:
        return -1, 0, False
    row = ROW[pfn] if pfn < ROW.shape[0] else -1
    return row, (pa & 0xFFF) >> 3, True


@inline
def translate(
    F: np.ndarray,
    ROW: np.ndarray,
    LV: np.ndarray,
    M: np.ndarray,
    ST: np.ndarray,
    WV: np.ndarray,
    PR: np.ndarray,
    WA: np.ndarray,
    va: int,
    op: int,
    cpl: int,
    implicit: bool,
) -> tuple[int, int, int, int, int, int]:
    """`kaiser.x86.walker.translate` for a canonical `va`: (outcome, entries read, page shift, pa,
    rights, leaf after the A/D update). `WV[d]` gets each entry as read, `WA[d]` its physical
    address, `PR[d]` the rights
    combined down to each non-leaf entry. A is set in each non-leaf entry as the walk passes it,
    the leaf's A (and D for a write) only if the access is allowed (SDM §4.8)."""
    nxe = M[M_NXE] != 0
    table = ST[ST_CR3] & ADDR_MASK_52
    rights = R_ALL
    nlev = LV.shape[0]
    for depth in range(nlev):
        shift = LV[depth, LV_SHIFT]
        pa = table + 8 * ((va >> shift) & 0x1FF)
        row, word, ok = read_phys(F, ROW, M[M_SIZE_PFNS], pa)
        if not ok:
            return W_PHYS, depth, 0, pa, 0, 0
        value = F[row, word] if row >= 0 else 0
        WV[depth] = value
        WA[depth] = pa
        if not value & P:  # SDM §4.7: not present; reserved bits not checked
            return W_FAULT, depth + 1, 0, 0, 0, 0
        last = depth == nlev - 1
        is_leaf = last or (LV[depth, LV_LEAF_OK] != 0 and (value & PS) != 0)
        rsv = LV[depth, LV_RSV_LARGE] if is_leaf and not last else LV[depth, LV_RSV]
        if value & rsv:  # SDM §4.5 reserved bits: #PF with P=1, RSVD=1
            return W_FAULT, depth + 1, 0, 0, 0, 0
        rights = through(rights, value, nxe)
        if not is_leaf:
            PR[depth] = rights
            if not value & A:
                F[row, word] = value | A  # SDM §4.8: A set in every entry used
            table = value & ADDR_MASK_52
            continue
        pkey = (value >> PKEY_SHIFT) & 0xF
        if check_access(rights, pkey, op, cpl, implicit, M[M_CR0], ST[ST_CR4], M[M_RFLAGS], M[M_PKRU]):
            return W_FAULT, depth + 1, 0, 0, 0, 0
        leaf = value | A
        if op == OP_WRITE:
            leaf |= D
        if leaf != value:
            F[row, word] = leaf  # SDM §4.8: A on use, D on a write through the leaf
        size_mask = (1 << shift) - 1
        pa_out = (value & ADDR_MASK_52 & ~size_mask) | (va & size_mask)
        return W_OK, depth + 1, shift, pa_out, rights, leaf
    return W_FAULT, 0, 0, 0, 0, 0  # unreachable: the last level is always a leaf


@inline
def host_walk(
    M: np.ndarray,
    C: np.ndarray,
    CM: np.ndarray,
    gpa: int,
) -> int:
    """`NestedMmu.host_walk`: one EPT walk of `gpa`, counted, its entries through the data caches
    (EPT level d's entry for `gpa` at M_HOST_B0+d's base + 8 * (gpa >> shift), SDM Vol. 3C
    §29.3.2 over the identity map's layout). Returns the host-physical address (the identity),
    -1 outside guest RAM (the reference raises there)."""
    if gpa < 0 or gpa >= M[M_HOST_SIZE]:
        return -1
    nlev = M[M_HOST_NLEV]
    C[C_HOST_WALKS] += 1
    C[C_HOST_WALK_LOADS] += nlev
    if CM[CM_ON]:
        for d in range(nlev):
            cache_access(CM, C, M[M_HOST_B0 + d] + 8 * (gpa >> (39 - 9 * d)), KIND_WALK)
    return gpa


@inline
def walk(
    T: np.ndarray,
    S: np.ndarray,
    GRP: np.ndarray,
    BEST: np.ndarray,
    Pc: np.ndarray,
    PD: np.ndarray,
    PSC_OF: np.ndarray,
    LV: np.ndarray,
    F: np.ndarray,
    ROW: np.ndarray,
    M: np.ndarray,
    ST: np.ndarray,
    C: np.ndarray,
    WV: np.ndarray,
    PR: np.ndarray,
    WA: np.ndarray,
    CM: np.ndarray,
    va: int,
    op: int,
    cpl: int,
    implicit: bool,
) -> int:
    """`Mmu._walk`: walk, charge loads after paging-structure-cache hits (through the data
    caches when there are any), then on success cache the non-leaf entries used and fill the STLB
    and the L1 structure. Returns the physical address translated to, -1 for a fault, -2 if the
    walk left RAM (the reference raises there)."""
    fetch = op == OP_FETCH
    if fetch:
        C[C_WALKS_I] += 1
    else:
        C[C_WALKS_D] += 1
    outcome, n, shift, pa, rights, leaf = translate(F, ROW, LV, M, ST, WV, PR, WA, va, op, cpl, implicit)
    if outcome == W_PHYS:
        return -2
    pcid = current_pcid(ST)
    # Mmu._psc_saved: the deepest fresh paging-structure-cache hit (PDE cache first, §4.10.3.2).
    saved = 0
    for depth in range(n - 2, -1, -1):
        lshift = LV[depth, LV_SHIFT]
        p = PSC_OF[lshift]
        if p < 0:
            continue
        i = psc_find(Pc, PD, p, va, pcid)
        if i < 0:
            continue
        fresh = Pc[P_TABLE, i] == (WV[depth] & ADDR_MASK_52) and Pc[P_RIGHTS, i] == PR[depth]
        if fresh:
            for d in range(depth + 1):
                if not WV[d] & A:
                    fresh = False
                    break
        if fresh:
            Pc[P_STAMP, i] = tick(ST)
            if lshift == 48:
                C[C_PSC_HITS_PML5E] += 1
            elif lshift == 39:
                C[C_PSC_HITS_PML4E] += 1
            elif lshift == 30:
                C[C_PSC_HITS_PDPTE] += 1
            else:
                C[C_PSC_HITS_PDE] += 1
            saved = depth + 1
            break
        Pc[P_VALID, i] = 0  # out of date with memory: dropped, a shallower cache is tried
        C[C_PSC_STALE] += 1
    C[C_WALK_LOADS] += n - saved
    C[C_WALK_LOADS_SAVED] += saved
    nested = M[M_HOST_NLEV] > 0
    caches = CM[CM_ON] != 0
    if nested or caches:  # NestedMmu._walk: a host walk for each guest table but a combined PSC entry's
        for d in range(saved, n):
            if nested and (d > saved or saved == 0) and host_walk(M, C, CM, WA[d] & ~0xFFF) < 0:
                return -2
            if caches:
                cache_access(CM, C, WA[d], KIND_WALK)
    if outcome == W_FAULT:
        C[C_FAULTS] += 1
        pf_invalidate(T, S, Pc, PD, C, va, pcid)
        return -1
    tshift = shift  # the TLB entry's page: a combined mapping's is the smaller (SDM §29.4.2)
    if nested:
        if host_walk(M, C, CM, pa) < 0:
            return -2
        tshift = min(shift, M[M_HOST_SHIFT])
    for depth in range(saved, n - 1):  # §4.10.3.1: cache the non-leaf entries used
        p = PSC_OF[LV[depth, LV_SHIFT]]
        if p >= 0:
            psc_fill(Pc, PD, ST, p, va, pcid, WV[depth] & ADDR_MASK_52, PR[depth])
    # Tlb.fill / entry_from_walk (§4.10.2.2): global only if G=1 and CR4.PGE=1 (§4.10.2.4).
    pge = (ST[ST_CR4] & CR4_PGE) != 0
    own = pcid
    if pge and leaf & G:
        own |= OWN_GLOBAL
    pfn = pa >> tshift
    dirty = 1 if leaf & D else 0
    pkey = (leaf >> PKEY_SHIFT) & 0xF
    tlb_install(T, S, BEST, ST, GROUP_S, va, pcid, pge, tshift, pfn, shift, own, rights, dirty, pkey)
    tlb_install(
        T, S, BEST, ST, GROUP_I if fetch else GROUP_D, va, pcid, pge, tshift, pfn, shift, own, rights, dirty, pkey
    )
    return pa


# ---- the replay loop --------------------------------------------------------------------------
@jit
def replay(
    events: np.ndarray,
    T: np.ndarray,
    S: np.ndarray,
    GRP: np.ndarray,
    BEST: np.ndarray,
    Pc: np.ndarray,
    PD: np.ndarray,
    PSC_OF: np.ndarray,
    LV: np.ndarray,
    F: np.ndarray,
    ROW: np.ndarray,
    M: np.ndarray,
    ST: np.ndarray,
    C: np.ndarray,
    WV: np.ndarray,
    PR: np.ndarray,
    WA: np.ndarray,
    CM: np.ndarray,
) -> tuple[int, int, int]:
    """Replay `events` (EVENT_DTYPE) as `kaiser.x86.events.replay_reference` does. Returns
    (outcome, index of the event that stopped the replay or len(events), detail). `WV`, `PR`,
    `WA`: scratch for the walk (one int64 per paging level)."""
    caches = CM[CM_ON] != 0
    va_bits = M[M_VA_BITS]
    features = M[M_FEATURES]
    cr3_reserved = M[M_CR3_RSV]
    n_tlb = T.shape[0]
    memo_page_i = memo_page_d = memo_idx_i = memo_idx_d = -1
    for n in range(events.shape[0]):
        ev = events[n]
        kind = np.int64(ev.kind)
        cpl = np.int64(ev.cpl)
        aux = np.int64(ev.aux)
        a = np.int64(ev.a)
        if kind <= OP_FETCH:
            # ---- a memory access: Mmu.access --------------------------------------------------
            if cpl > 3:
                return ERR_CPL, n, WHY_NONE
            ST[ST_CPL] = cpl
            implicit = (aux & 1) != 0
            if aux & 2 and lass_blocks(a, kind, cpl, False, ST[ST_CR4], M[M_RFLAGS]):
                continue  # a software prefetch LASS blocks is dropped: no lookup, nothing counted
            if not is_canonical(a, va_bits):  # #GP before any TLB lookup (SDM Vol. 3A §6.15)
                C[C_FAULTS] += 1
                continue
            if lass_blocks(a, kind, cpl, implicit, ST[ST_CR4], M[M_RFLAGS]):  # LASS: #GP/#SS before paging
                C[C_FAULTS] += 1
                continue
            cr4 = ST[ST_CR4]
            pcid = ST[ST_CR3] & PCID_MASK if cr4 & CR4_PCIDE else 0
            pge = (cr4 & CR4_PGE) != 0
            fetch = kind == OP_FETCH
            g = GROUP_I if fetch else GROUP_D
            # Fast path: the same 4 KiB page as the group's last L1 hit, with nothing but LRU
            # stamps changed since (every fill, invalidation or instruction clears the memo), is
            # found in the same way: the search is a function of the keys, tags and PCID/PGE only.
            page = lsr(a, 12)
            memo_page, memo_idx = (memo_page_i, memo_idx_i) if fetch else (memo_page_d, memo_idx_d)
            i = memo_idx if page == memo_page else -1
            if i < 0:
                i = tlb_search(T, S, GRP, g, a, pcid, pge)
                if i >= 0:
                    if fetch:
                        memo_page_i, memo_idx_i = page, i
                    else:
                        memo_page_d, memo_idx_d = page, i
            walked = False  # a walk (an STLB miss or a dirty assist) serves the access
            pa = 0
            if i >= 0:
                T[i, T_STAMP] = tick(ST)
                if fetch:
                    C[C_ITLB_HITS] += 1
                else:
                    C[C_DTLB_HITS] += 1
            else:
                if fetch:
                    C[C_ITLB_MISSES] += 1
                else:
                    C[C_DTLB_MISSES] += 1
                memo_page_i = memo_page_d = -1  # the L1 structures are about to change
                i = tlb_search(T, S, GRP, GROUP_S, a, pcid, pge)
                if i >= 0:
                    T[i, T_STAMP] = tick(ST)
                    if fetch:
                        C[C_STLB_HITS_I] += 1
                    else:
                        C[C_STLB_HITS_D] += 1
                    tlb_install(
                        T,
                        S,
                        BEST,
                        ST,
                        g,
                        a,
                        pcid,
                        pge,
                        T[i, T_SHIFT],
                        T[i, T_PFN],
                        T[i, T_PSHIFT],
                        T[i, T_OWN],
                        T[i, T_RIGHTS],
                        T[i, T_DIRTY],
                        T[i, T_PKEY],
                    )
                else:
                    if fetch:
                        C[C_STLB_MISSES_I] += 1
                    else:
                        C[C_STLB_MISSES_D] += 1
                    walked = True
            # One call site each for the walk and the data caches: numba types a callee's code
            # again at every site it is inlined into (`kaiser.x86.engine_jit`).
            if not walked:
                # A hit: check the cached rights (a fault may come from them alone, §4.10.4.3).
                if check_access(
                    T[i, T_RIGHTS], T[i, T_PKEY], kind, cpl, implicit, M[M_CR0], cr4, M[M_RFLAGS], M[M_PKRU]
                ):
                    C[C_FAULTS] += 1
                    C[C_TLB_FAULTS] += 1
                    memo_page_i = memo_page_d = -1
                    pf_invalidate(T, S, Pc, PD, C, a, pcid)
                    continue
                if kind == OP_WRITE and not T[i, T_DIRTY]:  # §4.8: D must be set in memory: walk
                    C[C_DIRTY_ASSISTS] += 1
                    memo_page_i = memo_page_d = -1
                    walked = True
            if walked:
                pa = walk(
                    T, S, GRP, BEST, Pc, PD, PSC_OF, LV, F, ROW, M, ST, C, WV, PR, WA, CM,
                    a, kind, cpl, implicit,
                )  # fmt: skip
                if pa == -2:
                    return ERR_PHYS, n, WHY_PHYS_RANGE
                if pa < 0:
                    continue
            elif caches:  # the access through the entry used: Mmu._cached
                sh = T[i, T_SHIFT]
                pa = (T[i, T_PFN] << sh) | (a & ((1 << sh) - 1))
            if caches:
                cache_access(CM, C, pa, KIND_FETCH if fetch else KIND_DATA)
            continue
        # ---- instructions and page-table edits run at CPL 0 ----------------------------------
        ST[ST_CPL] = 0
        memo_page_i = memo_page_d = -1
        pcide = (ST[ST_CR4] & CR4_PCIDE) != 0
        pcid = ST[ST_CR3] & PCID_MASK if pcide else 0
        if kind == 3:  # MOV to CR3 (SDM §4.10.4.1)
            if a & cr3_reserved:  # bits 62:MAXPHYADDR (bits.cr3_reserved_mask)
                return ERR_GP, n, WHY_CR3_RESERVED
            noflush = a < 0
            if noflush and not pcide:
                return ERR_GP, n, WHY_CR3_NOFLUSH
            C[C_CR3_WRITES] += 1
            if noflush:
                C[C_CR3_NOFLUSH] += 1
            else:
                drop(T, Pc, PD, C, a & PCID_MASK if pcide else 0, False, False, 0, False)
            ST[ST_CR3] = a & ~NOFLUSH
        elif kind == 4:  # INVLPG
            if not is_canonical(a, va_bits):
                continue  # a no-op for a non-canonical address (SDM Vol. 2 INVLPG)
            C[C_INVLPG] += 1
            drop(T, Pc, PD, C, pcid, True, True, a, False)
        elif kind == 5:  # INVPCID (SDM Vol. 2 INVPCID)
            if not features & F_INVPCID:
                return ERR_UD, n, WHY_NONE
            b = np.int64(ev.b)
            if aux > 3:
                return ERR_GP, n, WHY_INVPCID_TYPE
            if b < 0 or b >> 12:
                return ERR_GP, n, WHY_INVPCID_PCID
            if aux <= 1 and not pcide and b:
                return ERR_GP, n, WHY_INVPCID_PCIDE
            if aux == 0 and not is_canonical(a, va_bits):
                return ERR_GP, n, WHY_INVPCID_CANONICAL
            if aux == 0:
                C[C_INVPCID_ADDRESS] += 1
                drop(T, Pc, PD, C, b, False, True, a, True)
            elif aux == 1:
                C[C_INVPCID_SINGLE] += 1
                drop(T, Pc, PD, C, b, False, False, 0, False)
            elif aux == 2:
                C[C_INVPCID_ALL_GLOBAL] += 1
                drop(T, Pc, PD, C, -1, True, False, 0, False)
            else:
                C[C_INVPCID_ALL] += 1
                drop(T, Pc, PD, C, -1, False, False, 0, False)
        elif kind == 6:  # MOV to CR4
            old = ST[ST_CR4]
            if a < 0 or a >> 32:
                return ERR_GP, n, WHY_CR4_HIGH
            if (
                (a & CR4_PCIDE and not features & F_PCID)
                or (a & CR4_SMEP and not features & F_SMEP)
                or (a & CR4_SMAP and not features & F_SMAP)
                or (a & CR4_PKE and not features & F_PKU)
                or (a & CR4_LA57 and not features & F_LA57)
                or (a & CR4_LASS and not features & F_LASS)
            ):
                return ERR_GP, n, WHY_CR4_FEATURE
            if a & CR4_LASS and not a & CR4_SMAP:
                return ERR_GP, n, WHY_CR4_LASS_SMAP
            if not a & CR4_PAE:
                return ERR_GP, n, WHY_CR4_PAE
            if (old ^ a) & CR4_LA57:
                return ERR_GP, n, WHY_CR4_LA57
            if a & CR4_PCIDE and not old & CR4_PCIDE and ST[ST_CR3] & PCID_MASK:
                return ERR_GP, n, WHY_CR4_PCIDE
            if (old ^ a) & CR4_PGE or (old & CR4_PCIDE and not a & CR4_PCIDE):
                C[C_CR4_FLUSH_ALL] += 1
                drop(T, Pc, PD, C, -1, True, False, 0, False)
            elif a & CR4_SMEP and not old & CR4_SMEP:
                C[C_CR4_FLUSH_PCID] += 1
                C[C_TLB_ENTRIES_DROPPED] += tlb_invalidate_pcid_all(T, n_tlb, pcid)
                C[C_PSC_ENTRIES_DROPPED] += psc_invalidate(Pc, PD, pcid, False, 0)
            ST[ST_CR4] = a
        elif kind == 7:  # a page-table edit: PhysicalMemory.write_u64
            if a & 7:
                return ERR_PHYS, n, WHY_PHYS_ALIGN
            row, word, in_ram = read_phys(F, ROW, M[M_SIZE_PFNS], a) if a >= 0 else (-1, 0, False)
            if not in_ram:
                return ERR_PHYS, n, WHY_PHYS_RANGE
            if row < 0:  # a frame the copy has no storage for: Engine.stepper without prepare
                return ERR_PHYS, n, WHY_PHYS_UNPREPARED
            F[row, word] = np.int64(ev.b)
        else:
            return ERR_KIND, n, WHY_NONE
    return OK, events.shape[0], WHY_NONE


@jit
def count_kind(events: np.ndarray, kind: int) -> int:
    """How many of `events` are of `kind`: `Engine.step` asks it of every batch (are there
    WRITE_PHYS events to give storage?), here without the GIL and without numpy's strided
    temporaries, so a thread replaying many small batches leaves the others running."""
    n = 0
    for i in range(events.shape[0]):
        if events[i].kind == kind:
            n += 1
    return n


# ---- rounds: a fixed batch, then each probe event alone (the KASLR attack's loop) ---------------
@jit
def replay_rounds(
    before: np.ndarray,
    probe: np.ndarray,
    vas: np.ndarray,
    reps: int,
    OUT: np.ndarray,
    T: np.ndarray,
    S: np.ndarray,
    GRP: np.ndarray,
    BEST: np.ndarray,
    Pc: np.ndarray,
    PD: np.ndarray,
    PSC_OF: np.ndarray,
    LV: np.ndarray,
    F: np.ndarray,
    ROW: np.ndarray,
    M: np.ndarray,
    ST: np.ndarray,
    C: np.ndarray,
    WV: np.ndarray,
    PR: np.ndarray,
    WA: np.ndarray,
    CM: np.ndarray,
) -> tuple[int, int, int, int, int]:
    """For each address of `vas`, `reps` times: `replay` of `before`, then of each event of `probe`
    alone with its address set to that one, that event's counters into `OUT[i, r, j]`; all of
    them added to `C`. The same as those replays one by one. Returns `replay`'s (outcome, stop,
    detail) and the round (i * reps + r) and part (-1: `before`, else j) that stopped, if any."""
    for i in range(vas.shape[0]):
        for r in range(reps):
            outcome, stop, why = replay(before, T, S, GRP, BEST, Pc, PD, PSC_OF, LV, F, ROW, M, ST, C, WV, PR, WA, CM)
            if outcome != OK:
                return outcome, stop, why, i * reps + r, -1
            for j in range(probe.shape[0]):
                probe[j].a = vas[i]
                out = OUT[i, r, j]
                out[:] = 0
                outcome, stop, why = replay(
                    probe[j : j + 1], T, S, GRP, BEST, Pc, PD, PSC_OF, LV, F, ROW, M, ST, out, WV, PR, WA,
                    CM,
                )  # fmt: skip
                for k in range(C.shape[0]):
                    C[k] += out[k]
                if outcome != OK:
                    return outcome, stop, why, i * reps + r, j
    return OK, 0, WHY_NONE, 0, 0
