"""Two speeds, one semantics: the compiled engine against the reference MMU.

Random page tables (built with `PageTable`, then corrupted raw: reserved bits, non-present
entries, PS where it is reserved or turns a table pointer into a large page, cleared A bits),
random CPU states (PCIDE, PGE, SMEP, SMAP, AC, WP, NXE, PKE + PKRU, 4/5-level, MAXPHYADDR, 1 GiB
pages) and random event streams with locality (accesses at CPL 0/1/3 to mapped, unmapped and
non-canonical addresses, MOV to CR3 with and without NOFLUSH over several PCIDs, MOV to CR4,
INVLPG, INVPCID 0-3, WRITE_PHYS edits that leave stale TLB and paging-structure-cache entries)
are replayed from the same warm state through `replay_reference` and `Engine.replay`. Required:
identical counters, identical final TLB arrays (every field of every way, LRU stamps and clock),
identical registers, and identical physical memory (A/D bits, edits, frames touched).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.x86.bits import CR0, CR4, EFER, PTE, RFLAGS, BitsError
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.engine import Engine
from kaiser.x86.events import EVENT_DTYPE, Ev, EventBuilder, replay_reference
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL
from kaiser.x86.mmu import GeneralProtection, InvalidOpcode, Mmu
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory, PhysMemError
from kaiser.x86.rights import Op
from kaiser.x86.tlb import Tlb
from kaiser.x86.tlb_geometry import INDEX_MOD, INDEX_XOR, SKYLAKE_CLIENT, CacheGeometry, TlbGeometry

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
RAM = 4 << 30
DATA_BASE = 2 << 30  # 4 KiB / 2 MiB data frames live in [2 GiB, 3 GiB); the 1 GiB page at 1 GiB
FRESH_BASE = 3 << 30  # frames no table uses: WRITE_PHYS builds new page tables there

# Small structures so that evictions, STLB hits after L1 misses and PSC misses are frequent.
TINY = TlbGeometry(
    name="tiny",
    itlb=(CacheGeometry("iTLB 4K", 4, 2, (12,)), CacheGeometry("iTLB 2M", 2, 2, (21,))),
    dtlb=(
        CacheGeometry("dTLB 4K", 4, 2, (12,)),
        CacheGeometry("dTLB 2M", 2, 1, (21,)),
        CacheGeometry("dTLB 1G", 1, 1, (30,)),
    ),
    stlb=(CacheGeometry("STLB 4K+2M", 16, 4, (12, 21), INDEX_XOR),),  # 1 GiB pages as 2 MiB pieces
    psc=(
        CacheGeometry("PML5E cache", 1, 1, (48,)),
        CacheGeometry("PML4E cache", 2, 1, (39,)),
        CacheGeometry("PDPTE cache", 2, 2, (30,)),
        CacheGeometry("PDE cache", 4, 2, (21,)),
    ),
)
# One L1 dTLB holding every size; an iTLB of 4 KiB only (large code pages as 4 KiB pieces); a
# modulo-indexed STLB; no PML5E/PML4E caches.
ODD = TlbGeometry(
    name="odd",
    itlb=(CacheGeometry("iTLB 4K", 8, 4, (12,)),),
    dtlb=(CacheGeometry("dTLB all", 8, 2, (12, 21, 30)),),
    stlb=(CacheGeometry("STLB 4K", 32, 4, (12,), INDEX_MOD), CacheGeometry("STLB 2M+1G", 8, 8, (21, 30))),
    psc=(CacheGeometry("PDPTE cache", 2, 2, (30,)), CacheGeometry("PDE cache", 8, 4, (21,))),
)
GEOMETRIES = {"skylake": SKYLAKE_CLIENT, "tiny": TINY, "odd": ODD}

USER_4K = 0x400000
USER_2M = 0x40000000
USER_1G = 0x80000000
KTEXT = 0xFFFFFFFF81000000
KBIG = 0xFFFFFFFF82000000
DIRECT = 0xFFFF888000000000
DIRECT_5L = 0xFF11000000000000  # a 5-level direct-map base


@dataclass
class World:
    mem: PhysicalMemory
    tables: list[PageTable]
    features: CpuFeatures
    state: CpuState
    pages: list[tuple[int, int]]  # (va, page size) of every mapping made
    slots: list[tuple[int, int]]  # (physical address of an entry, depth) on the mapped paths
    table_frames: list[int]  # page-table frames (targets for edited table pointers)


@dataclass(frozen=True)
class Cpu:
    la57: bool
    pcide: bool
    pge: bool
    smep: bool
    smap: bool
    pke: bool
    wp: bool
    nxe: bool
    ac: bool
    pkru: int
    maxphyaddr: int
    gbpages: bool


CPUS = st.builds(
    Cpu,
    la57=st.booleans(),
    pcide=st.booleans(),
    pge=st.booleans(),
    smep=st.booleans(),
    smap=st.booleans(),
    pke=st.booleans(),
    wp=st.booleans(),
    nxe=st.booleans(),
    ac=st.booleans(),
    pkru=st.one_of(st.just(0), st.integers(0, (1 << 32) - 1)),
    maxphyaddr=st.sampled_from([36, 39, 46, 52]),
    gbpages=st.booleans(),
)


def build_world(rng: random.Random, cpu: Cpu) -> World:
    """Three address spaces sharing the kernel half (top-level entries copied, as Linux does)."""
    mem = PhysicalMemory(RAM, maxphyaddr=cpu.maxphyaddr)
    mode = FIVE_LEVEL if cpu.la57 else FOUR_LEVEL
    tables = [PageTable(mem, mode, gbpages=cpu.gbpages) for _ in range(3)]
    pages: list[tuple[int, int]] = []

    def flags(user: bool) -> int:
        f = int(PTE.US) if user and rng.random() < 0.93 else 0
        f |= int(PTE.RW) if rng.random() < 0.75 else 0
        f |= int(PTE.NX) if rng.random() < 0.2 else 0
        f |= int(PTE.G) if rng.random() < (0.1 if user else 0.7) else 0
        f |= int(PTE.A) if rng.random() < 0.3 else 0
        f |= int(PTE.D) if rng.random() < 0.2 else 0
        return f

    def pkey() -> int:
        return rng.randrange(4) if rng.random() < 0.4 else 0

    # The same user layout in every address space (like forked processes), own frames and flags.
    layout = [(USER_4K + i * K4, K4) for i in range(rng.randrange(8, 40)) if rng.random() < 0.85]
    layout += [(USER_2M + i * M2, M2) for i in range(rng.randrange(0, 4))]
    if cpu.gbpages and rng.random() < 0.6:
        layout.append((USER_1G, G1))
    for pt in tables:
        for va, size in layout:
            pa = G1 if size == G1 else DATA_BASE + rng.randrange((1 << 30) // size) * size
            pt.map(va, pa, size, flags(True), page_size=size, pkey=pkey())
    pages += layout
    kernel = tables[0]
    for i in range(rng.randrange(4, 24)):
        kernel.map(KTEXT + i * K4, DATA_BASE + rng.randrange(1 << 16) * K4, K4, flags(False))
        pages.append((KTEXT + i * K4, K4))
    for i in range(rng.randrange(0, 3)):
        kernel.map(KBIG + i * M2, DATA_BASE + rng.randrange(256) * M2, M2, flags(False), page_size=M2)
        pages.append((KBIG + i * M2, M2))
    direct = DIRECT_5L if cpu.la57 else DIRECT
    if cpu.gbpages:
        kernel.map(direct, G1, G1, flags(False), page_size=G1)
        pages.append((direct, G1))
    for pt in tables[1:]:  # the kernel half is shared: copy its top-level entries
        mem.table(pt.root)[256:] = mem.table(kernel.root)[256:]
    # Every entry slot on a mapped path, for raw edits.
    slots: set[tuple[int, int]] = set()
    for pt in tables:
        for va, size in pages:
            for depth in range(mode.level_for_size(size) + 1):
                try:
                    slot = pt.entry_slot(va, depth)
                except Exception:  # a large page above this depth in this table
                    break
                if slot is not None:
                    slots.add((slot, depth))
    slot_list = sorted(slots)
    table_frames = sorted({s & ~0xFFF for s, _ in slot_list})
    # Raw corruption (not via PageTable): reserved bits, P=0, PS where reserved, A cleared.
    for slot, _depth in rng.sample(slot_list, k=min(len(slot_list), rng.randrange(0, 6))):
        value = mem.read_u64(slot)
        choice = rng.randrange(5)
        if choice == 0 and cpu.maxphyaddr < 52:
            value |= 1 << rng.randrange(cpu.maxphyaddr, 52)  # reserved address bit
        elif choice == 1:
            value &= ~int(PTE.P)
        elif choice == 2:
            value |= int(PTE.PS)  # reserved at the top; a "large page" made of a table pointer below
        elif choice == 3:
            value &= ~int(PTE.A)
        else:
            value ^= int(PTE.NX) | int(PTE.US)
        mem.write_u64(slot, value)
    cr4 = CR4.PAE
    for on, bit in (
        (cpu.pge, CR4.PGE),
        (cpu.pcide, CR4.PCIDE),
        (cpu.smep, CR4.SMEP),
        (cpu.smap, CR4.SMAP),
        (cpu.pke, CR4.PKE),
        (cpu.la57, CR4.LA57),
    ):
        if on:
            cr4 |= bit
    state = CpuState(
        cr3=tables[0].cr3(pcide=cpu.pcide, pcid=1 if cpu.pcide else 0),
        cr0=CR0.PE | CR0.PG | (CR0.WP if cpu.wp else 0),
        cr4=int(cr4),
        efer=EFER.LME | EFER.LMA | (EFER.NXE if cpu.nxe else 0),
        rflags=0x2 | (RFLAGS.AC if cpu.ac else 0),
        pkru=cpu.pkru,
    )
    features = CpuFeatures(maxphyaddr=cpu.maxphyaddr, gbpages=cpu.gbpages)
    return World(mem, tables, features, state, pages, slot_list, table_frames)


def make_stream(rng: random.Random, world: World, n: int, state: CpuState | None = None) -> np.ndarray:
    """`n` valid events with locality, from `state` (default: the world's); the generator tracks
    CR3/CR4 to keep every instruction legal."""
    eb = EventBuilder()
    state = state or world.state
    cr3, cr4 = state.cr3, state.cr4
    mode = FIVE_LEVEL if cr4 & CR4.LA57 else FOUR_LEVEL
    pool = [va + rng.randrange(size) // 8 * 8 for va, size in world.pages for _ in range(2)]
    pool += [va + size for va, size in world.pages[:8]]  # just past a mapping
    pool += [0x1234000, 0x7FFFFFFFF000, mode.canonicalize(0xFFFF800000000000) if mode.va_bits == 48 else 0]
    noncanonical = [1 << (mode.va_bits - 1), 0x8000_0000_0000_0000, 0x4000_0000_0000_1000]
    recent: list[int] = pool[:4]
    fresh_pt = FRESH_BASE
    for _ in range(n):
        r = rng.random()
        pcide = bool(cr4 & CR4.PCIDE)
        if r < 0.86:
            x = rng.random()
            if x < 0.75:  # near a recently used address: TLB and PSC hits
                va = (rng.choice(recent) + rng.choice((0, 0, 0, 8, 64, K4, -K4))) & ((1 << 64) - 1)
            elif x < 0.97:
                va = rng.choice(pool)
                recent = [*recent[-5:], va]
            else:
                va = rng.choice(noncanonical)
            op = rng.choices((Op.READ, Op.WRITE, Op.FETCH), (5, 3, 2))[0]
            user_va = va < 1 << (mode.va_bits - 1)
            cpl = rng.choices((0, 3, 1), (1, 8, 0.3) if user_va else (10, 0.5, 0.5))[0]
            eb.access(va, op, cpl, implicit=op is not Op.FETCH and rng.random() < 0.05)
        elif r < 0.90:
            table = rng.choice(world.tables).root
            if pcide:
                value = table | rng.randrange(4) | ((1 << 63) if rng.random() < 0.5 else 0)
            else:
                value = table | rng.choice((0, 0, 0x8, 0x10))
            eb.mov_cr3(value)
            cr3 = value & ~(1 << 63)
        elif r < 0.915:
            bit = rng.choice((CR4.PGE, CR4.PGE, CR4.SMEP, CR4.SMAP, CR4.PKE, CR4.PCIDE))
            new = cr4 ^ bit
            if bit == CR4.PCIDE and new & CR4.PCIDE and cr3 & 0xFFF:
                continue  # setting PCIDE needs CR3[11:0] = 0
            eb.mov_cr4(int(new))
            cr4 = new
        elif r < 0.935:
            eb.invlpg(rng.choice(pool + noncanonical[:1]))
        elif r < 0.955:
            kind = rng.randrange(4)
            pcid = rng.randrange(4) if pcide or kind >= 2 else 0
            eb.invpcid(kind, pcid, rng.choice(pool) if kind == 0 else 0)
        else:
            slot, depth = rng.choice(world.slots)
            if depth < len(mode.levels) - 2 and rng.random() < 0.7:
                slot, depth = rng.choice(world.slots)  # mostly edit the lower levels
            value = world.mem.read_u64(slot)
            y = rng.randrange(8)
            if y == 0:
                value ^= rng.choice((int(PTE.P), int(PTE.RW), int(PTE.US), int(PTE.NX), int(PTE.G)))
            elif y == 1:
                value &= ~int(PTE.A | PTE.D)
            elif y == 2 and depth < len(mode.levels) - 1:  # point at another table (stale PSCs)
                value = (value & ~0x000F_FFFF_FFFF_F000) | rng.choice(world.table_frames)
            elif y == 3:
                value ^= int(PTE.PS)
            elif y == 4 and world.features.maxphyaddr < 52:
                value |= 1 << rng.randrange(world.features.maxphyaddr, 52)
            elif y == 5 and depth < len(mode.levels) - 1:  # a new table in a frame never touched
                for i in rng.sample(range(512), 3):
                    eb.write_phys(fresh_pt + 8 * i, DATA_BASE + i * K4 | 0x67)
                value = (value & ~0x000F_FFFF_FFFF_F000) | fresh_pt
                fresh_pt += K4
            elif y == 6:
                value = 0
            eb.write_phys(slot, value)
    return eb.array()


def assert_same(mmu: Mmu, engine: Engine, ref_mem: PhysicalMemory, what: str) -> None:
    """Counters, registers, every TLB and PSC array (stamps included), the clock, and memory."""
    assert engine.counters == mmu.counters, f"{what}: counters differ: " + ", ".join(
        f"{k} ref={v} engine={getattr(engine.counters, k)}"
        for k, v in mmu.counters.as_dict().items()
        if v != getattr(engine.counters, k)
    )
    assert engine.state == mmu.state, f"{what}: registers differ"
    got = engine.to_tlb()
    for ref, eng in zip((*mmu.tlb.arrays, *mmu.tlb.psc), (*got.arrays, *got.psc), strict=True):
        for name, value in vars(ref).items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, getattr(eng, name)), f"{what}: {ref.name}.{name} differs"
    assert got.clock == mmu.tlb.clock, f"{what}: LRU clock differs"
    assert set(engine.mem._row_of) == set(ref_mem._row_of), f"{what}: frames touched differ"
    for pfn in ref_mem._row_of:
        assert np.array_equal(ref_mem.read_frame(pfn * K4), engine.mem.read_frame(pfn * K4)), (
            f"{what}: frame {pfn * K4:#x} differs (A/D bits or edits)"
        )


def first_divergence(world_mem: PhysicalMemory, mmu0: Mmu, events: np.ndarray) -> int:
    """Index of the first event after which counters differ (for the failure message)."""
    lo, hi = 0, len(events)
    while lo < hi:
        mid = (lo + hi) // 2
        mem_r, mem_e = copy.deepcopy(world_mem), copy.deepcopy(world_mem)
        ref = Mmu(mem_r, mmu0.state, features=mmu0.features, tlb=copy.deepcopy(mmu0.tlb))
        eng = Engine(mem_e, mmu0.state, mmu0.features, tlb=mmu0.tlb)
        if replay_reference(ref, events[: mid + 1]) == eng.replay(events[: mid + 1]):
            lo = mid + 1
        else:
            hi = mid
    return lo


def run_both(seed: int, cpu: Cpu, geometry: TlbGeometry, chunks: int, sync: bool, n: int = 400) -> None:
    rng = random.Random(seed)
    world = build_world(rng, cpu)
    mmu = Mmu(world.mem, world.state, features=world.features, geometry=geometry)
    replay_reference(mmu, make_stream(rng, world, 150))  # a warm start: TLBs, PSCs, A/D bits
    events = make_stream(rng, world, n, mmu.state)
    ref_mem, eng_mem = world.mem, copy.deepcopy(world.mem)
    start = (copy.deepcopy(ref_mem), Mmu(ref_mem, mmu.state, features=mmu.features, tlb=copy.deepcopy(mmu.tlb)))
    engine = Engine(eng_mem, mmu.state, world.features, geometry, tlb=mmu.tlb)
    mmu.counters = type(mmu.counters)()
    for part in np.array_split(events, chunks):
        got = engine.replay(part, sync=sync)
        want = replay_reference(mmu, part)
        if got != want:
            at = first_divergence(start[0], start[1], events)
            pytest.fail(f"counters diverge at event {at}: {events[at]}; ref={want} engine={got}")
    if not sync:
        engine.sync_back()
    assert_same(mmu, engine, ref_mem, f"seed={seed} geometry={geometry.name}")


# The default suite draws 40 worlds (a few seconds); the slow suite 500.
worlds = given(
    seed=st.integers(0, 2**32 - 1),
    cpu=CPUS,
    geometry=st.sampled_from(sorted(GEOMETRIES)),
    chunks=st.integers(1, 3),
    sync=st.booleans(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@worlds
def test_engine_matches_reference(seed: int, cpu: Cpu, geometry: str, chunks: int, sync: bool) -> None:
    run_both(seed, cpu, GEOMETRIES[geometry], chunks, sync)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@worlds
def test_engine_matches_reference_500_worlds(seed: int, cpu: Cpu, geometry: str, chunks: int, sync: bool) -> None:
    run_both(seed, cpu, GEOMETRIES[geometry], chunks, sync)


def test_streams_exercise_every_path() -> None:
    """The generator reaches what the property test claims to compare: L1, STLB and PSC hits,
    evictions, stale PSCs, dirty assists, faults from walks and from cached rights, each
    invalidation, and `WRITE_PHYS` into fresh frames."""
    total: dict[str, int] = {}
    evictions = 0
    cpu = Cpu(False, True, True, True, True, True, True, True, False, 0x0C, 46, True)
    for seed in range(6):
        for geometry in (TINY, ODD):
            rng = random.Random(seed)
            world = build_world(rng, cpu)
            engine = Engine(world.mem, world.state, world.features, geometry)
            before = len(world.mem._row_of)
            engine.replay(make_stream(rng, world, 2000))
            for k, v in engine.counters.as_dict().items():
                total[k] = total.get(k, 0) + v
            fills = engine.counters.walks - engine.counters.faults
            evictions += fills > sum(g.entries for g in geometry.dtlb)
            assert len(world.mem._row_of) >= before
    for name in (
        "itlb_hits",
        "dtlb_hits",
        "stlb_hits_i",
        "stlb_hits_d",
        "psc_hits_pml4e",
        "psc_hits_pdpte",
        "psc_hits_pde",
        "psc_stale",
        "dirty_assists",
        "faults",
        "tlb_faults",
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
    ):
        assert total[name] > 0, f"the streams never reach {name}"
    assert evictions


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_five_level_and_no_pcid(geometry: str) -> None:
    """Fixed corners the random draw may miss: 5-level with PML5E caches, PCIDE=0 with PGE."""
    for la57, pcide in ((True, True), (False, False), (True, False)):
        cpu = Cpu(la57, pcide, True, False, False, False, True, True, False, 0, 46, True)
        run_both(7, cpu, GEOMETRIES[geometry], 2, True, n=600)


BAD_EVENTS = [
    (Ev.MOV_CR3, 0, 0, 1 << 60, 0, GeneralProtection),  # reserved bits 62:MAXPHYADDR
    (Ev.MOV_CR4, 0, 0, 0, 0, GeneralProtection),  # clearing PAE
    (Ev.MOV_CR4, 0, 0, 1 << 40, 0, GeneralProtection),
    (Ev.INVPCID, 0, 4, 0, 0, GeneralProtection),  # type > 3
    (Ev.INVPCID, 0, 1, 0, 1 << 12, GeneralProtection),  # PCID > 12 bits
    (Ev.INVPCID, 0, 0, 1 << 63, 0, GeneralProtection),  # type 0, non-canonical
    (Ev.WRITE_PHYS, 0, 0, 0x1004, 0, PhysMemError),  # misaligned
    (Ev.WRITE_PHYS, 0, 0, RAM, 0, PhysMemError),  # outside RAM
    (Ev.READ, 5, 0, 0x400000, 0, BitsError),  # CPL 5
    (9, 0, 0, 0, 0, ValueError),  # not an Ev
]


@pytest.mark.parametrize("bad", BAD_EVENTS, ids=lambda b: f"{b[0]}-{b[5].__name__}")
def test_illegal_events_raise_like_the_reference(bad: tuple[int, int, int, int, int, type]) -> None:
    """Both paths stop at the same event with the same exception type and the same state."""
    cpu = Cpu(False, True, True, True, True, True, True, True, False, 0, 46, True)
    rng = random.Random(3)
    world = build_world(rng, cpu)
    events = make_stream(rng, world, 200)
    row = np.array([bad[:5]], EVENT_DTYPE)
    events = np.concatenate([events, row, make_stream(rng, world, 20)])
    eng_mem = copy.deepcopy(world.mem)
    mmu = Mmu(world.mem, world.state, features=world.features, geometry=TINY)
    engine = Engine(eng_mem, world.state, world.features, TINY)
    with pytest.raises(bad[5]):
        replay_reference(mmu, events)
    with pytest.raises(bad[5]):
        engine.replay(events)
    assert_same(mmu, engine, world.mem, f"illegal {bad}")


def test_walk_leaving_ram_raises_like_the_reference() -> None:
    """A table pointer beyond RAM (below MAXPHYADDR): the reference raises PhysMemError mid-walk,
    after setting A in the entries above; the engine stops there with the same memory."""
    cpu = Cpu(False, False, True, False, False, False, True, True, False, 0, 46, True)
    world = build_world(random.Random(5), cpu)
    slot = world.tables[0].entry_slot(KTEXT, 1)
    assert slot is not None
    world.mem.write_u64(slot, (RAM * 4) | 0x63)
    world.mem.write_u64(world.tables[0].root + 8 * 511, world.mem.read_u64(world.tables[0].root + 8 * 511) & ~0x20)
    eb = EventBuilder()
    eb.access(world.pages[0][0], Op.READ, 0)
    eb.access(KTEXT, Op.READ, 0)
    eng_mem = copy.deepcopy(world.mem)
    mmu = Mmu(world.mem, world.state, features=world.features)
    engine = Engine(eng_mem, world.state, world.features)
    with pytest.raises(PhysMemError):
        replay_reference(mmu, eb.array())
    with pytest.raises(PhysMemError):
        engine.replay(eb.array())
    assert_same(mmu, engine, world.mem, "walk out of RAM")


def test_invpcid_without_cpuid_is_ud() -> None:
    cpu = Cpu(False, True, True, False, False, False, True, True, False, 0, 46, True)
    world = build_world(random.Random(1), cpu)
    features = CpuFeatures(maxphyaddr=46, invpcid=False)
    eb = EventBuilder()
    eb.invpcid(2)
    engine = Engine(world.mem, world.state, features)
    with pytest.raises(InvalidOpcode):
        engine.replay(eb.array())


def test_tlb_state_round_trips() -> None:
    """load_tlb then store_tlb gives back the reference arrays exactly, invalid ways included."""
    cpu = Cpu(False, True, True, True, True, True, True, True, False, 0, 46, True)
    rng = random.Random(11)
    world = build_world(rng, cpu)
    mmu = Mmu(world.mem, world.state, features=world.features, geometry=TINY)
    replay_reference(mmu, make_stream(rng, world, 300))
    out = Tlb(TINY)
    Engine.from_mmu(mmu).store_tlb(out)
    for ref, eng in zip((*mmu.tlb.arrays, *mmu.tlb.psc), (*out.arrays, *out.psc), strict=True):
        for name, value in vars(ref).items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, getattr(eng, name)), f"{ref.name}.{name}"
    assert out.clock == mmu.tlb.clock
