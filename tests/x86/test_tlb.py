"""TLBs and paging-structure caches: each SDM invalidation rule (Vol. 3A §4.10.4.1) stated and
checked, the #GP/#UD rules kvm-unit-tests' x86/pcid.c checks, stale and spurious behaviour,
LRU, counters, and a property test against an infinite fully-associative reference model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kaiser.x86.bits import CR4, PTE, make_entry
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.mmu import Access, GeneralProtection, InvalidOpcode, Mmu
from kaiser.x86.pagetable import DEFAULT_TABLE_FLAGS, PageTable
from kaiser.x86.physmem import FrameKind, PhysicalMemory
from kaiser.x86.rights import Op
from kaiser.x86.tlb import HitLevel, Tlb, TlbEntry
from kaiser.x86.tlb_geometry import (
    INDEX_MOD,
    INDEX_XOR,
    SKYLAKE_CLIENT,
    CacheGeometry,
    GeometryError,
    TlbGeometry,
    set_index,
)
from kaiser.x86.walker import Translation

USER_TABLE = DEFAULT_TABLE_FLAGS[0]  # a user-half non-leaf entry that restricts nothing

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
BASE_CR4 = int(CR4.PAE | CR4.PGE)

USER = [0x400000, 0x401000, 0x402000, 0x403000]  # 4 KiB user pages, one page table
USER_2M = 0x40000000  # a 2 MiB user page
KTEXT = 0xFFFFFFFF81000000  # global kernel text (4 KiB)
KDATA = 0xFFFFFFFF81001000  # non-global kernel data (4 KiB)
DIRECT = 0xFFFF888000000000  # a 1 GiB global kernel page (direct map)
VAS = [*USER, USER_2M, USER_2M + 0x5000, KTEXT, KDATA, DIRECT, DIRECT + 3 * M2 + 0x40]
FRAMES = [0x10000000 + i * K4 for i in range(4)]


@dataclass
class World:
    """Two address spaces (A and B) mapping the user pages to different frames and the kernel to
    the same ones, like two processes; plus a spare page table to swap under A's user PDE."""

    mem: PhysicalMemory
    a: PageTable
    b: PageTable
    pt_a: int  # physical address of A's page table for USER
    pt_spare: int  # another page table mapping USER to FRAMES reversed


def make_world() -> World:
    mem = PhysicalMemory(8 << 30)
    tables = []
    for n, base in enumerate((0x20000000, 0x30000000)):
        pt = PageTable(mem)
        for i, va in enumerate(USER):
            pt.map(va, base + i * K4, K4, PTE.US | PTE.RW)
        pt.map(USER_2M, 0x60000000 + n * M2, M2, PTE.US | PTE.RW, page_size=M2)
        pt.map(KTEXT, 0x1000000, K4, PTE.G)  # RX, global
        pt.map(KDATA, 0x1001000, K4, PTE.RW | PTE.NX)
        pt.map(DIRECT, 0, G1, PTE.RW | PTE.G, page_size=G1)
        tables.append(pt)
    a, b = tables
    pde_slot = a.entry_slot(USER[0], 2)
    assert pde_slot is not None
    pt_a = mem.read_u64(pde_slot) & ~0xFFF & ((1 << 52) - 1)
    spare = mem.alloc(FrameKind.PAGE_TABLE, "spare")
    for i, va in enumerate(USER):
        mem.write_u64(spare + 8 * ((va >> 12) & 0x1FF), make_entry(FRAMES[3 - i], PTE.P | PTE.US | PTE.RW))
    return World(mem, a, b, pt_a, spare)


def make_mmu(
    world: World,
    *,
    pcide: bool = True,
    pge: bool = True,
    pcid: int = 1,
    cpl: int = 0,
    geometry: TlbGeometry = SKYLAKE_CLIENT,
    features: CpuFeatures | None = None,
) -> Mmu:
    cr4 = CR4.PAE | (CR4.PGE if pge else 0) | (CR4.PCIDE if pcide else 0)
    state = CpuState(cr3=world.a.cr3(pcide=pcide, pcid=pcid if pcide else 0), cr4=cr4, cpl=cpl)
    return Mmu(world.mem, state, features=features, geometry=geometry)


def switch(mmu: Mmu, pt: PageTable, pcid: int, *, noflush: bool = True) -> None:
    mmu.mov_cr3(pt.cr3(pcide=True, pcid=pcid, noflush=noflush))


def cached(mmu: Mmu) -> set[tuple[int, int, bool]]:
    """(pcid, page address, global) of every TLB entry, whichever structure holds it."""
    return {(e.pcid, e.vpn << e.shift, e.global_) for _, e in mmu.tlb.entries()}


def psc_pcids(mmu: Mmu) -> set[int]:
    return {pcid for _, _, pcid, _ in mmu.tlb.psc_entries()}


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
def loaded(world: World) -> Mmu:
    """USER[0] cached for PCID 1 (table A) and PCID 2 (table B), USER[1] for PCID 1, the global
    kernel text cached once (PCID 1), non-global kernel data for PCID 2; current PCID 2."""
    mmu = make_mmu(world, pcid=1)
    mmu.access(USER[0])
    mmu.access(USER[1])
    mmu.access(KTEXT, Op.FETCH)
    switch(mmu, world.b, 2)
    mmu.access(USER[0])
    mmu.access(KDATA)
    assert mmu.access(KTEXT, Op.FETCH).level is HitLevel.L1  # global entry of PCID 1 used by PCID 2
    return mmu


P1_U0, P1_U1, P2_U0 = (1, USER[0], False), (1, USER[1], False), (2, USER[0], False)
G_KT, P2_KD = (1, KTEXT, True), (2, KDATA, False)
ALL = {P1_U0, P1_U1, P2_U0, G_KT, P2_KD}


# ---- lookups: PCID tags and the global bit ---------------------------------------------------
def test_loaded_fixture_holds_what_it_says(loaded: Mmu) -> None:
    assert cached(loaded) == ALL
    assert psc_pcids(loaded) == {1, 2}


def test_pcid_tag_separates_address_spaces(world: World) -> None:
    """SDM §4.10.1/§4.10.2.4: a lookup uses only entries of the current PCID (or global ones), so
    the same linear address cached under PCID 1 does not hit under PCID 2."""
    mmu = make_mmu(world, pcid=1)
    assert mmu.access(USER[0]).pa == 0x20000000
    switch(mmu, world.b, 2)
    second = mmu.access(USER[0])
    assert second.level is HitLevel.MISS and second.pa == 0x30000000
    switch(mmu, world.a, 1)
    assert mmu.access(USER[0]).level is HitLevel.L1


def test_global_honoured_only_with_pge(world: World) -> None:
    """SDM §4.10.2.4: a TLB entry is global only if G=1 in the leaf *and* CR4.PGE=1; without PGE
    a MOV to CR3 drops the kernel text entry like any other."""
    mmu = make_mmu(world, pcide=False, pge=False)
    mmu.access(KTEXT, Op.FETCH)
    assert cached(mmu) == {(0, KTEXT, False)}
    mmu.mov_cr3(world.a.cr3())
    assert cached(mmu) == set()
    mmu = make_mmu(world, pcide=False, pge=True)
    mmu.access(KTEXT, Op.FETCH)
    mmu.mov_cr3(world.a.cr3())
    assert cached(mmu) == {(0, KTEXT, True)}
    assert mmu.access(KTEXT, Op.FETCH).level is HitLevel.L1


# ---- MOV to CR3 ------------------------------------------------------------------------------
def test_mov_cr3_pcide0_flushes_pcid0_nonglobal(world: World) -> None:
    """SDM §4.10.4.1, MOV to CR3 with CR4.PCIDE=0: invalidates all TLB entries of PCID 000H except
    global ones, and all paging-structure-cache entries of PCID 000H."""
    mmu = make_mmu(world, pcide=False)
    for va in (USER[0], KDATA):
        mmu.access(va)
    mmu.access(KTEXT, Op.FETCH)
    assert psc_pcids(mmu) == {0}
    mmu.mov_cr3(world.b.cr3())
    assert cached(mmu) == {(0, KTEXT, True)}
    assert psc_pcids(mmu) == set()
    assert mmu.access(USER[0]).pa == 0x30000000


def test_mov_cr3_flushes_the_new_pcid_only(loaded: Mmu, world: World) -> None:
    """SDM §4.10.4.1, MOV to CR3 with CR4.PCIDE=1 and bit 63=0: invalidates the non-global TLB
    entries of the PCID in bits 11:0 of the *new* value, and that PCID's paging-structure-cache
    entries; other PCIDs and global entries survive."""
    switch(loaded, world.a, 1, noflush=False)  # current was 2: the old PCID is not flushed
    assert cached(loaded) == {P2_U0, G_KT, P2_KD}
    assert psc_pcids(loaded) == {2}


def test_mov_cr3_noflush_invalidates_nothing(loaded: Mmu, world: World) -> None:
    """SDM §4.10.4.1, MOV to CR3 with CR4.PCIDE=1 and bit 63=1: not required to invalidate
    anything (we invalidate nothing); bit 63 is not stored in CR3."""
    switch(loaded, world.a, 1, noflush=True)
    assert cached(loaded) == ALL
    assert psc_pcids(loaded) == {1, 2}
    assert not loaded.state.cr3 >> 63
    assert loaded.access(USER[0]).level is HitLevel.L1
    assert loaded.counters.cr3_noflush == 2 and loaded.counters.cr3_writes == 2


# ---- MOV to CR4 ------------------------------------------------------------------------------
@pytest.mark.parametrize("start_pge", [True, False])
def test_mov_cr4_pge_change_flushes_everything(world: World, start_pge: bool) -> None:
    """SDM §4.10.4.1, MOV to CR4 changing PGE (either way): invalidates all TLB entries, global
    ones included, and all paging-structure-cache entries of all PCIDs."""
    mmu = make_mmu(world, pge=start_pge, pcid=1)
    mmu.access(USER[0])
    mmu.access(KTEXT, Op.FETCH)
    switch(mmu, world.b, 2)
    mmu.access(USER[0])
    assert len(cached(mmu)) == 3
    mmu.mov_cr4(mmu.state.cr4 ^ CR4.PGE)
    assert cached(mmu) == set() and psc_pcids(mmu) == set()
    assert mmu.counters.cr4_flush_all == 1


def test_mov_cr4_clearing_pcide_flushes_everything(loaded: Mmu) -> None:
    """SDM §4.10.4.1, MOV to CR4 changing PCIDE from 1 to 0: invalidates all TLB entries (global
    included) and all paging-structure-cache entries. (CR3[11:0] must be 0 to set PCIDE again.)"""
    loaded.mov_cr3(loaded.state.cr3 & ~0xFFF | 1 << 63)  # PCID 0, keep everything
    assert cached(loaded) == ALL
    loaded.mov_cr4(loaded.state.cr4 & ~CR4.PCIDE)
    assert cached(loaded) == set() and psc_pcids(loaded) == set()


def test_mov_cr4_setting_pcide_flushes_nothing(world: World) -> None:
    """SDM §4.10.4.1 lists no invalidation for setting PCIDE (0 -> 1); entries made with PCIDE=0
    belong to PCID 000H, which is the current PCID afterwards (CR3[11:0] = 0)."""
    mmu = make_mmu(world, pcide=False)
    mmu.access(USER[0])
    mmu.mov_cr4(mmu.state.cr4 | CR4.PCIDE)
    assert cached(mmu) == {(0, USER[0], False)}
    assert mmu.access(USER[0]).level is HitLevel.L1


def test_mov_cr4_setting_smep_flushes_current_pcid(loaded: Mmu) -> None:
    """SDM §4.10.4.1, MOV to CR4 changing SMEP from 0 to 1: invalidates all TLB entries and all
    paging-structure-cache entries for the current PCID. Global entries (usable by the current
    PCID, §4.10.2.4) go too: extra invalidation is always allowed. SMEP 1 -> 0 invalidates nothing."""
    loaded.mov_cr4(loaded.state.cr4 | CR4.SMEP)  # current PCID 2
    assert cached(loaded) == {P1_U0, P1_U1}
    assert psc_pcids(loaded) == {1}
    before = cached(loaded)
    loaded.mov_cr4(loaded.state.cr4 & ~CR4.SMEP)
    assert cached(loaded) == before


# ---- INVLPG ----------------------------------------------------------------------------------
def test_invlpg(loaded: Mmu, world: World) -> None:
    """SDM §4.10.4.1, INVLPG: invalidates the TLB entries for the page of its operand that belong
    to the current PCID, and global entries for that page whatever their PCID; and all
    paging-structure-cache entries of the current PCID, whatever their address."""
    switch(loaded, world.a, 1)
    loaded.invlpg(USER[0])
    assert cached(loaded) == ALL - {P1_U0}  # PCID 2's entry for the same page survives
    assert psc_pcids(loaded) == {2}
    switch(loaded, world.b, 2)
    loaded.invlpg(KTEXT)  # global entry (tagged PCID 1) dropped from PCID 2
    assert cached(loaded) == ALL - {P1_U0, G_KT}


def test_invlpg_drops_every_piece_of_a_large_page(world: World) -> None:
    """SDM §4.10.2.3 and §4.10.4.1 footnote 1: a large page may be cached as several smaller
    entries (our Skylake iTLB has no 1 GiB entries, so a 1 GiB code page is cached in 2 MiB
    pieces); INVLPG of any address in the page invalidates all of them."""
    mmu = make_mmu(world)
    mmu.access(DIRECT, Op.FETCH)
    mmu.access(DIRECT + 5 * M2, Op.FETCH)
    itlb = [e for name, e in mmu.tlb.entries() if name.startswith("iTLB")]
    assert {(e.shift, e.page_shift) for e in itlb} == {(21, 30)} and len(itlb) == 2
    mmu.invlpg(DIRECT + 100 * M2)
    assert list(mmu.tlb.entries()) == []


def test_invlpg_noncanonical_is_a_nop(loaded: Mmu) -> None:
    """SDM Vol. 2 INVLPG: with a non-canonical address in 64-bit mode INVLPG is a NOP."""
    loaded.invlpg(0x0000_8000_0000_0000)
    assert cached(loaded) == ALL and loaded.counters.invlpg == 0


# ---- INVPCID ---------------------------------------------------------------------------------
def test_invpcid_individual_address(loaded: Mmu) -> None:
    """SDM §4.10.4.1, INVPCID type 0: invalidates mappings, except global translations, of the
    descriptor's PCID that would translate the descriptor's address (TLB entries for its page and
    the PCID's paging-structure-cache entries on its path); the PCID need not be current."""

    def on_path(va: int, pcid: int) -> set[tuple[str, int]]:
        return {
            (p.name, int(t))
            for p in loaded.tlb.psc
            for t, c, v in zip(p.tag.flat, p.pcid.flat, p.valid.flat, strict=True)
            if v and c == pcid and t == va >> p.level_shift
        }

    assert on_path(USER[0], 1) and on_path(KTEXT, 1) and on_path(USER[0], 2)
    loaded.invpcid(0, 1, USER[0])
    assert cached(loaded) == ALL - {P1_U0}
    assert not on_path(USER[0], 1)  # PCID 1's entries on USER[0]'s path went
    assert on_path(KTEXT, 1) and on_path(USER[0], 2)  # other addresses and other PCIDs stayed
    loaded.invpcid(0, 1, KTEXT)
    assert G_KT in cached(loaded)  # "except global translations"


def test_invpcid_single_context(loaded: Mmu) -> None:
    """SDM §4.10.4.1, INVPCID type 1: invalidates all mappings of the descriptor's PCID except
    global translations, paging-structure caches of that PCID included."""
    loaded.invpcid(1, 1)
    assert cached(loaded) == {P2_U0, G_KT, P2_KD}
    assert psc_pcids(loaded) == {2}


def test_invpcid_all_including_globals(loaded: Mmu) -> None:
    """SDM §4.10.4.1, INVPCID type 2: invalidates all mappings of all PCIDs, globals included."""
    loaded.invpcid(2, 10)  # the descriptor's PCID is ignored (kvm-unit-tests pcid.c uses 10)
    assert cached(loaded) == set() and psc_pcids(loaded) == set()


def test_invpcid_all_contexts(loaded: Mmu) -> None:
    """SDM §4.10.4.1, INVPCID type 3: invalidates all mappings of all PCIDs except globals."""
    loaded.invpcid(3)
    assert cached(loaded) == {G_KT} and psc_pcids(loaded) == set()
    assert loaded.counters.invpcid == 1 and loaded.counters.invpcid_all == 1


# ---- #GP and #UD -----------------------------------------------------------------------------
def test_setting_pcide_needs_cr3_low_bits_zero(world: World) -> None:
    """SDM Vol. 2 MOV CR, kvm-unit-tests x86/pcid.c `test_pcid_enabled`: setting CR4.PCIDE while
    CR3[11:0] != 0 is #GP(0); with CR3[11:0] = 0 it succeeds."""
    mmu = make_mmu(world, pcide=False)
    mmu.mov_cr3(world.a.cr3() | 0x001)  # bit 0 is ignored with PCIDE=0: a legal write
    with pytest.raises(GeneralProtection, match="CR3\\[11:0\\]=0x1"):
        mmu.mov_cr4(mmu.state.cr4 | CR4.PCIDE)
    assert not mmu.state.pcide
    mmu.mov_cr3(world.a.cr3())
    mmu.mov_cr4(mmu.state.cr4 | CR4.PCIDE)
    assert mmu.state.pcide


def test_pcide_without_cpuid_pcid_is_gp(world: World) -> None:
    """kvm-unit-tests x86/pcid.c `test_pcid_disabled`: without CPUID.PCID, setting PCIDE is #GP."""
    mmu = make_mmu(world, pcide=False, features=CpuFeatures(pcid=False, invpcid=False))
    with pytest.raises(GeneralProtection):
        mmu.mov_cr4(mmu.state.cr4 | CR4.PCIDE)


def test_invpcid_faults(world: World) -> None:
    """SDM Vol. 2 INVPCID and kvm-unit-tests x86/pcid.c `test_invpcid_enabled`: type > 3 is #GP;
    descriptor bits 63:12 non-zero is #GP; with PCIDE=0, types 0/1 are #GP unless the PCID is
    000H (type 1 with PCID 0 succeeds); type 0 with a non-canonical address is #GP; without
    CPUID.INVPCID the instruction is #UD (`test_invpcid_disabled`)."""
    mmu = make_mmu(world, pcide=False)
    mmu.invpcid(1, 0)
    for kind, pcid, va in ((1, 1, 0), (0, 1, USER[0]), (4, 0, 0), (2, 0x1000, 0), (0, 0, 1 << 47)):
        with pytest.raises(GeneralProtection):
            mmu.invpcid(kind, pcid, va)
    mmu.invpcid(2, 10)
    mmu.mov_cr4(mmu.state.cr4 | CR4.PCIDE)
    mmu.invpcid(1, 5)
    mmu.invpcid(2, 10)
    mmu = make_mmu(world, features=CpuFeatures(invpcid=False))
    with pytest.raises(InvalidOpcode):
        mmu.invpcid(2, 0)


def test_privileged_and_reserved_bits(world: World) -> None:
    """SDM Vol. 2 MOV CR/INVLPG/INVPCID: #GP(0) at CPL > 0; MOV to CR3 with bit 63 set while
    PCIDE=0, or with bits 62:MAXPHYADDR set, is #GP(0); clearing PAE or changing LA57 in IA-32e
    mode is #GP(0). A faulting write changes nothing."""
    mmu = make_mmu(world, cpl=3)
    for op in (
        lambda: mmu.mov_cr3(world.a.cr3()),
        lambda: mmu.mov_cr4(BASE_CR4),
        lambda: mmu.invlpg(0),
        lambda: mmu.invpcid(3),
    ):
        with pytest.raises(GeneralProtection, match="CPL 3"):
            op()
    mmu = make_mmu(world, pcide=False)
    cr3 = mmu.state.cr3
    with pytest.raises(GeneralProtection, match="bit 63"):
        mmu.mov_cr3(cr3 | 1 << 63)
    with pytest.raises(GeneralProtection, match="reserved"):
        mmu.mov_cr3(cr3 | 1 << 50)
    with pytest.raises(GeneralProtection, match="PAE"):
        mmu.mov_cr4(int(CR4.PGE))
    with pytest.raises(GeneralProtection, match="LA57"):
        mmu.mov_cr4(BASE_CR4 | CR4.LA57)
    assert mmu.state.cr3 == cr3 and mmu.state.cr4 == BASE_CR4


# ---- stale and spurious behaviour, dirty assists ---------------------------------------------
def test_stale_hit_until_invlpg(world: World) -> None:
    """SDM §4.10.2.3/§4.10.4.2: the processor may keep using a TLB entry after software changes
    the paging-structure entry in memory, until software invalidates it. A remapped (even
    unmapped) page still hits its old frame; after INVLPG the walk sees the new entry."""
    mmu = make_mmu(world)
    assert mmu.access(USER[0]).pa == 0x20000000
    world.a.unmap(USER[0], K4)
    world.a.map(USER[0], FRAMES[0], K4, PTE.US | PTE.RW)
    stale = mmu.access(USER[0])
    assert stale.level is HitLevel.L1 and stale.pa == 0x20000000
    mmu.invlpg(USER[0])
    fresh = mmu.access(USER[0])
    assert fresh.level is HitLevel.MISS and fresh.pa == FRAMES[0]
    world.a.unmap(USER[0], K4)
    assert mmu.access(USER[0]).pa == FRAMES[0]  # unmapped, but still cached
    mmu.invlpg(USER[0])
    assert not mmu.access(USER[0]).ok


def test_spurious_fault_from_cached_rights(world: World) -> None:
    """SDM §4.10.4.3: after R/W goes 0 -> 1 without invalidation a write may fault from the cached
    rights ("spurious" #PF), and the page fault invalidates the page's entries (§4.10.4.1), so the
    retried write walks and succeeds."""
    mmu = make_mmu(world)
    world.a.protect(USER[0], K4, PTE.US)
    mmu.access(USER[0])
    world.a.protect(USER[0], K4, PTE.US | PTE.RW)
    first = mmu.access(USER[0], Op.WRITE)
    assert first.fault is not None and first.fault.error_code == 0x3 and first.level is HitLevel.L1
    assert mmu.counters.tlb_faults == 1 and cached(mmu) == set()
    again = mmu.access(USER[0], Op.WRITE)
    assert again.ok and again.level is HitLevel.MISS


def test_dirty_assist_walks_once(world: World) -> None:
    """SDM §4.8/§4.10.2.2: the TLB caches the dirty flag; the first write through a clean entry
    must set D in memory, which we model as a walk (a dirty assist); later writes just hit."""
    mmu = make_mmu(world)
    mmu.access(USER[0])
    slot = world.a.entry_slot(USER[0], 3)
    assert slot is not None and not world.mem.read_u64(slot) & PTE.D
    w = mmu.access(USER[0], Op.WRITE)
    assert w.level is HitLevel.L1 and isinstance(w.walk, Translation) and w.entry is not None and w.entry.dirty
    assert world.mem.read_u64(slot) & PTE.D
    assert mmu.access(USER[0], Op.WRITE).walk is None
    assert mmu.counters.dirty_assists == 1 and mmu.counters.walks_d == 2


# ---- replacement, set index, geometry --------------------------------------------------------
def one_level(entries: int, ways: int, index: int = INDEX_MOD) -> TlbGeometry:
    return TlbGeometry(
        "test",
        itlb=(CacheGeometry("i", 1, 1, (12,)),),
        dtlb=(CacheGeometry("d", entries, ways, (12,), index),),
        stlb=(),
        psc=(),
    )


def test_lru_replacement(world: World) -> None:
    """A full set replaces its least recently used way; a hit makes a way most recent."""
    mmu = make_mmu(world, geometry=one_level(2, 2))
    for va in (USER[0], USER[1], USER[0], USER[2]):  # USER[1] is the LRU when USER[2] comes
        mmu.access(va)
    assert {va for _, va, _ in cached(mmu)} == {USER[0], USER[2]}
    assert mmu.access(USER[0]).level is HitLevel.L1
    mmu.access(USER[3])  # now USER[2] is the LRU
    assert {va for _, va, _ in cached(mmu)} == {USER[0], USER[3]}


def test_set_index_functions() -> None:
    """Modulo takes the low tag bits; XOR folds the next log2(sets) bits in (TLBleed's XOR-7
    for Skylake's 128-set STLB: VA[18:12] ^ VA[25:19])."""
    stlb = SKYLAKE_CLIENT.stlb[0]
    assert stlb.sets == 128 and stlb.index == INDEX_XOR
    vpn = (0x55 << 7) | 0x0F
    assert set_index(stlb, vpn) == 0x55 ^ 0x0F
    assert set_index(CacheGeometry("m", 64, 4, (12,)), vpn) == vpn % 16


def test_sets_map_addresses(world: World) -> None:
    """Two pages in different sets of a 2-set direct-mapped TLB do not evict each other; two
    pages in the same set do."""
    mmu = make_mmu(world, geometry=one_level(2, 1))
    mmu.access(USER[0])
    mmu.access(USER[1])  # vpn differs in bit 0: the other set
    assert len(cached(mmu)) == 2
    mmu.access(USER[2])  # same set as USER[0]
    assert {va for _, va, _ in cached(mmu)} == {USER[1], USER[2]}


def test_geometry_checks() -> None:
    with pytest.raises(GeometryError):
        CacheGeometry("bad", 10, 4, (12,))
    with pytest.raises(GeometryError):
        CacheGeometry("bad", 24, 4, (12,), INDEX_XOR)
    with pytest.raises(GeometryError):
        TlbGeometry("bad", itlb=(CacheGeometry("a", 4, 4, (21,)),), dtlb=(), stlb=(), psc=())
    sizes = {
        g.name: (g.entries, g.ways, g.sets)
        for level in (SKYLAKE_CLIENT.itlb, SKYLAKE_CLIENT.dtlb, SKYLAKE_CLIENT.stlb)
        for g in level
    }
    assert sizes == {
        "iTLB 4K": (128, 8, 16),
        "iTLB 2M": (8, 8, 1),
        "dTLB 4K": (64, 4, 16),
        "dTLB 2M": (32, 4, 8),
        "dTLB 1G": (4, 4, 1),
        "STLB 4K+2M": (1536, 12, 128),
        "STLB 1G": (16, 4, 4),
    }


# ---- counters and paging-structure caches ----------------------------------------------------
def test_counters_and_psc_loads(world: World) -> None:
    """Counts the cost model needs: L1 hit, STLB hit, miss -> walk, and walk loads after
    paging-structure-cache hits (a walk next to a cached PDE reads only the PTE)."""
    mmu = make_mmu(world)
    first = mmu.access(USER[0])
    assert first.level is HitLevel.MISS and first.walk_loads == 4
    second = mmu.access(USER[1])
    assert second.walk_loads == 1  # PDE cache hit: PML4E, PDPTE, PDE skipped
    mmu.access(USER[1])
    c = mmu.counters
    assert (c.dtlb_hits, c.dtlb_misses, c.stlb_misses, c.walks_d) == (1, 2, 2, 2)
    assert (c.walk_loads, c.walk_loads_saved) == (5, 3)
    assert c.psc_hits_pde == 1
    mmu.access(USER[1], Op.FETCH)  # the STLB holds it: an STLB hit on the instruction side
    assert (mmu.counters.itlb_misses, mmu.counters.stlb_hits_i) == (1, 1)
    assert mmu.access(USER[1], Op.FETCH).level is HitLevel.L1
    before = mmu.counters.copy()
    mmu.access(USER[2])
    delta = mmu.counters - before
    assert delta.walks == 1 and delta.walk_loads == 1


def test_stale_psc_entry_is_dropped_not_used(world: World) -> None:
    """Our limitation, stated: when the PDE in memory now points at another page table, the PDE
    cache entry no longer matches memory; the walk drops it (any entry may be dropped at any time,
    §4.10.3.1) and reads the new table, paying the full walk."""
    mmu = make_mmu(world)
    mmu.access(USER[0])
    slot = world.a.entry_slot(USER[0], 2)
    assert slot is not None
    world.mem.write_u64(slot, world.pt_spare | USER_TABLE)
    a = mmu.access(USER[1])
    assert a.pa == FRAMES[2] and a.walk_loads == 2 and mmu.counters.psc_stale == 1  # PDPTE cache hit


# ---- property: never a hit the SDM forbids ---------------------------------------------------
@dataclass(frozen=True)
class RefEntry:
    va: int  # start of the mapped page
    size: int
    pa: int
    pcid: int
    global_: bool
    user: bool
    writable: bool
    nx: bool

    def covers(self, va: int) -> bool:
        return self.va <= va < self.va + self.size


class RefTlb:
    """Infinite, fully associative: every translation ever made stays until the SDM says it is
    invalidated. The upper bound of what the real TLB may hit (§4.10.4.1, written independently)."""

    def __init__(self) -> None:
        self.entries: set[RefEntry] = set()

    def fill(self, t: Translation, state: CpuState) -> None:
        self.entries.add(
            RefEntry(
                t.va & ~(t.page_size - 1),
                t.page_size,
                t.pa & ~(t.page_size - 1),
                state.pcid,
                state.pge and t.global_,
                t.rights.user,
                t.rights.writable,
                t.rights.nx,
            )
        )

    def drop(self, pred: object) -> None:
        self.entries = {e for e in self.entries if not pred(e)}  # type: ignore[operator]

    def explains(self, e: TlbEntry, va: int, state: CpuState | None) -> bool:
        """Some reference entry gives `e`'s translation of `va` (usable under `state` if given)."""
        for r in self.entries:
            if not r.covers(va) or r.pa + (va - r.va) != e.pa_of(va) or r.global_ != e.global_:
                continue
            if (r.user, r.writable, r.nx) != (e.user, e.writable, e.nx):
                continue
            if state is None and r.pcid == e.pcid:
                return True
            if state is not None and (r.pcid == state.pcid or (state.pge and r.global_)):
                return True
        return False


def ref_apply(ref: RefTlb, op: tuple, old: CpuState, new: CpuState) -> None:
    """The SDM's required invalidations for an operation that completed (no #GP)."""
    kind = op[0]
    cur = old.pcid
    if kind == "cr3":
        noflush = op[3] and old.pcide
        target = new.pcid
        if not noflush:
            ref.drop(lambda e: e.pcid == target and not e.global_)
    elif kind == "cr4":
        if (old.cr4 ^ new.cr4) & CR4.PGE or (old.pcide and not new.pcide):
            ref.drop(lambda e: True)
        elif new.smep and not old.smep:
            ref.drop(lambda e: e.pcid == cur)
    elif kind == "invlpg":
        va = VAS[op[1]]
        ref.drop(lambda e: e.covers(va) and (e.pcid == cur or e.global_))
    elif kind == "invpcid":
        _, t, pcid, vi = op
        va = VAS[vi]
        preds = {
            0: lambda e: e.covers(va) and e.pcid == pcid and not e.global_,
            1: lambda e: e.pcid == pcid and not e.global_,
            2: lambda e: True,
            3: lambda e: not e.global_,
        }
        ref.drop(preds[t])


ACCESS = st.tuples(st.just("access"), st.integers(0, len(VAS) - 1), st.sampled_from(list(Op)), st.sampled_from([0, 3]))
OPS = st.one_of(
    ACCESS,
    ACCESS,
    ACCESS,  # weighted: accesses make the entries the other operations act on
    st.tuples(st.just("cr3"), st.integers(0, 1), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("pte"), st.integers(0, 3), st.integers(0, 1), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("pde"), st.booleans()),
    st.tuples(st.just("cr4"), st.sampled_from([CR4.PGE, CR4.SMEP, CR4.PCIDE])),
    st.tuples(st.just("invlpg"), st.integers(0, len(VAS) - 1)),
    st.tuples(st.just("invpcid"), st.integers(0, 3), st.integers(0, 2), st.integers(0, len(VAS) - 1)),
)
LEAF_FLAGS = [PTE.P | PTE.US | PTE.RW, PTE.P | PTE.US, PTE.P | PTE.US | PTE.RW | PTE.G, PTE(0)]

TINY = TlbGeometry(
    "tiny",
    itlb=(CacheGeometry("i4k", 2, 2, (12,)), CacheGeometry("i2m", 1, 1, (21,))),
    dtlb=(CacheGeometry("d4k", 4, 2, (12,)), CacheGeometry("d2m", 2, 2, (21,)), CacheGeometry("d1g", 1, 1, (30,))),
    stlb=(CacheGeometry("s", 8, 2, (12, 21), INDEX_XOR), CacheGeometry("s1g", 2, 2, (30,))),
    psc=(CacheGeometry("pml4e", 1, 1, (39,)), CacheGeometry("pdpte", 2, 2, (30,)), CacheGeometry("pde", 2, 1, (21,))),
)


def run_sequence(ops: list[tuple], geometry: TlbGeometry) -> None:
    world = make_world()
    mmu = make_mmu(world, geometry=geometry)
    ref = RefTlb()
    tables = (world.a, world.b)
    for op in ops:
        old = mmu.state
        kind = op[0]
        try:
            if kind == "access":
                _, vi, access_op, cpl = op
                mmu.set_registers(cpl=cpl)
                old = mmu.state
                result = mmu.access(VAS[vi], access_op)
                check_access_result(ref, result, old)
                continue
            if kind == "pte":
                _, ui, ti, fi, flags = op
                slot = tables[ti].entry_slot(USER[ui], 3)
                assert slot is not None
                world.mem.write_u64(slot, make_entry(FRAMES[fi], LEAF_FLAGS[flags]) if LEAF_FLAGS[flags] else 0)
                continue
            if kind == "pde":
                slot = world.a.entry_slot(USER[0], 2)
                assert slot is not None
                world.mem.write_u64(slot, (world.pt_spare if op[1] else world.pt_a) | USER_TABLE)
                continue
            mmu.set_registers(cpl=0)
            old = mmu.state
            if kind == "cr3":
                _, ti, pcid, noflush = op
                if not mmu.state.pcide and pcid == 1:
                    pcid = 0  # keep PCIDE=0 runs short; PCID choice 2 still sets CR3[1] (#GP on setting PCIDE)
                value = tables[ti].root | pcid | (1 << 63 if noflush else 0)
                mmu.mov_cr3(value)
            elif kind == "cr4":
                mmu.mov_cr4(mmu.state.cr4 ^ op[1])
            elif kind == "invlpg":
                mmu.invlpg(VAS[op[1]])
            else:
                mmu.invpcid(op[1], op[2], VAS[op[3]])
        except GeneralProtection:
            assert mmu.state == old
            continue
        ref_apply(ref, op, old, mmu.state)
        for name, e in mmu.tlb.entries():  # every cached entry is one the SDM still allows
            assert ref.explains(e, e.vpn << e.shift, None), (name, e, op)


def check_access_result(ref: RefTlb, result: Access, state: CpuState) -> None:
    if result.level is not HitLevel.MISS and result.walk is None:  # a hit (no dirty assist) needs a usable entry
        assert result.entry is not None
        assert ref.explains(result.entry, result.va, state), result
    if result.fault is not None and result.fault.vector == 14:  # §4.10.4.1: page faults invalidate
        ref.drop(lambda e: e.covers(result.va) and e.pcid == state.pcid)
    if isinstance(result.walk, Translation):
        ref.fill(result.walk, state)


A, R, W, X = "access", Op.READ, Op.WRITE, Op.FETCH


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=10, max_size=60))
@example([(A, 0, R, 0), ("cr3", 1, 2, True), (A, 0, R, 0)])  # same address, other PCID: no hit
@example([(A, 0, R, 0), ("cr3", 0, 2, True), ("cr3", 0, 1, False), (A, 0, R, 0)])  # flush the new PCID
@example([(A, 0, R, 0), ("invpcid", 0, 1, 0), (A, 0, R, 0)])  # INVPCID individual address
@example([(A, 9, X, 0), ("invlpg", 8), (A, 9, X, 0)])  # all pieces of a 1 GiB page
@example([(A, 6, X, 0), ("cr3", 1, 2, False), ("invlpg", 6), (A, 6, X, 0)])  # global, other PCID
@example([("pte", 0, 0, 0, 1), (A, 0, R, 0), ("pte", 0, 0, 0, 0), (A, 0, W, 0), (A, 0, W, 0)])  # spurious #PF
@example([(A, 0, R, 0), ("pde", True), (A, 1, R, 0), ("invlpg", 1), (A, 1, R, 0)])  # page table swapped
def test_no_forbidden_hits_tiny(ops: list[tuple]) -> None:
    """Random sequences of accesses, table edits, CR3/CR4 writes, INVLPG and INVPCID on a tiny
    TLB (evictions everywhere): every hit, and every entry held, is one the reference model says
    the SDM still allows. The set-associative TLB may miss more, never hit more."""
    run_sequence(ops, TINY)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=10, max_size=60))
def test_no_forbidden_hits_skylake(ops: list[tuple]) -> None:
    """The same property with the Skylake geometry (few evictions: the stale cases dominate)."""
    run_sequence(ops, SKYLAKE_CLIENT)


def test_tlb_fill_and_lookup_api(world: World) -> None:
    """`Tlb` used on its own: fill from a walk, lookup by level, probe without side effects."""
    from kaiser.x86.walker import translate

    state = CpuState(cr3=world.a.cr3(pcide=True, pcid=3), cr4=BASE_CR4 | CR4.PCIDE)
    tlb = Tlb()
    t = translate(world.mem, state, USER_2M + 0x1234, Op.READ)
    assert isinstance(t, Translation)
    tlb.fill(t, state, Op.READ)
    assert tlb.probe(USER_2M + 0x1FFFFF, Op.READ, state).level is HitLevel.L1
    assert tlb.probe(USER_2M, Op.FETCH, state).level is HitLevel.STLB
    clock = tlb.clock
    assert tlb.probe(USER_2M, Op.FETCH, state).level is HitLevel.STLB and tlb.clock == clock
    assert tlb.lookup(USER_2M, Op.FETCH, state).level is HitLevel.STLB
    assert tlb.lookup(USER_2M, Op.FETCH, state).level is HitLevel.L1
    other = state.replace(cr3=world.a.cr3(pcide=True, pcid=4))
    assert tlb.lookup(USER_2M, Op.READ, other).level is HitLevel.MISS
