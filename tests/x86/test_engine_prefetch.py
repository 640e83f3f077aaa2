"""Software prefetches and the stepped engine (issue 15 item 1), against the reference MMU.

* A READ with the PREFETCH flag (`kaiser.x86.events.PREFETCH`) is `Mmu.access(prefetch=True)`:
  LASS judges it as an explicit access at its CPL and a blocked one is dropped before any lookup
  (nothing counted); otherwise it is the read its IMPLICIT flag says. test_engine's random
  streams (and test_engine_lass's, LASS and SMAP always set) with random reads made prefetches:
  the engine leaves counters, TLBs, paging-structure caches and memory as the reference does.
* `Engine.rounds` (a batch, then each probe event alone, per address and round) and
  `Engine.stepper` are the same as `replay_reference` of the same events one call at a time:
  per probe event counters, and the state at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import GEOMETRIES, Cpu, World, assert_same, build_world, make_stream
from test_engine_lass import LASS_SMAP, lass_cpu

from kaiser.x86.bits import CR4, EFER, PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.engine import Engine, EngineError, named_counters
from kaiser.x86.events import EVENT_DTYPE, IMPLICIT, PREFETCH, Ev, replay_reference
from kaiser.x86.mmu import Mmu
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PAGE_SIZE, PhysicalMemory

CPUS = [
    Cpu(False, True, True, True, True, False, True, True, False, 0, 46, True),  # 4-level, PCID
    Cpu(True, False, True, True, True, False, True, True, False, 0, 46, True),  # LA57, no PCID
]


def _world(seed: int, lass: bool, ac: bool, cpu: int) -> tuple[random.Random, World, Mmu]:
    rng = random.Random(seed)
    world = build_world(rng, lass_cpu(ac, bool(cpu), cpu == 0) if lass else CPUS[cpu])
    features, state = world.features, world.state
    if lass:
        features = dataclasses.replace(features, lass=True)
        state = state.replace(cr4=state.cr4 | LASS_SMAP)
    return rng, world, Mmu(world.mem, state, features=features, geometry=GEOMETRIES["tiny"])


def _prefetch_stream(rng: random.Random, world: World, mmu: Mmu, lass: bool) -> np.ndarray:
    events = make_stream(rng, world, 400, mmu.state)
    if lass:
        events["a"][events["kind"] == Ev.MOV_CR4] |= np.uint64(LASS_SMAP)  # LASS stays on
    reads = np.flatnonzero(events["kind"] == Ev.READ)
    chosen = reads[np.array([rng.random() < 0.5 for _ in reads], bool)]
    events["aux"][chosen] |= PREFETCH
    return events


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), lass=st.booleans(), ac=st.booleans(), cpu=st.integers(0, 1))
def test_prefetch_events_replay_as_on_the_reference(seed: int, lass: bool, ac: bool, cpu: int) -> None:
    rng, world, mmu = _world(seed, lass, ac, cpu)
    events = _prefetch_stream(rng, world, mmu, lass)
    engine = Engine(copy.deepcopy(world.mem), mmu.state, mmu.features, mmu.tlb.geometry, tlb=mmu.tlb)
    assert engine.replay(events) == replay_reference(mmu, events)
    assert_same(mmu, engine, world.mem, f"seed={seed} lass={lass}")


def test_a_prefetch_lass_blocks_counts_nothing_and_a_load_faults() -> None:
    """Not vacuous: under LASS a CPL-3 prefetch of the upper half is dropped (no counter moves,
    on either path), the same address as a plain implicit read is looked up, as a load #GPs."""
    _, world, mmu = _world(1, True, False, 0)
    kernel_va = 0xFFFF_8880_0000_0000
    for aux, looked_up, faults in ((IMPLICIT | PREFETCH, 0, 0), (PREFETCH, 0, 0), (IMPLICIT, 1, None), (0, 0, 1)):
        events = np.array([(Ev.READ, 3, aux, kernel_va, 0)], dtype=EVENT_DTYPE)
        engine = Engine(copy.deepcopy(world.mem), mmu.state, mmu.features, mmu.tlb.geometry, tlb=mmu.tlb)
        got = engine.replay(events)
        assert got == replay_reference(copy.deepcopy(mmu), events)
        assert got.dtlb_hits + got.dtlb_misses == looked_up, aux
        if faults is not None:
            assert got.faults == faults, aux


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    lass=st.booleans(),
    n_vas=st.integers(1, 6),
    reps=st.integers(1, 3),
    n_probe=st.integers(1, 2),
)
def test_rounds_and_stepper_are_one_call_at_a_time(seed: int, lass: bool, n_vas: int, reps: int, n_probe: int) -> None:
    """`Engine.rounds(before, probe, vas, reps)` and the same calls through `stepper()` give each
    probe event the counters `replay_reference` of it alone gives, and end in the same state."""
    rng, world, mmu = _world(seed, lass, False, 0)
    stream = _prefetch_stream(rng, world, mmu, lass)
    # repeated from whatever state it leaves: accesses, INVLPG and table edits only (a CR3 or CR4
    # write, or INVPCID, is legal only in the state the generator tracked for it)
    keep = np.isin(stream["kind"], [Ev.READ, Ev.WRITE, Ev.FETCH, Ev.INVLPG, Ev.WRITE_PHYS])
    before = stream[keep][:30]
    pool = [va + rng.randrange(size) for va, size in world.pages] + [0xFFFF_8880_0000_0000, 1 << 47]
    vas = [rng.choice(pool) for _ in range(n_vas)]
    probe = np.array(
        [(Ev.READ, rng.choice((0, 3)), rng.choice((0, IMPLICIT, IMPLICIT | PREFETCH)), 0, 0) for _ in range(n_probe)],
        dtype=before.dtype,
    )
    reference = Mmu(copy.deepcopy(world.mem), mmu.state, features=mmu.features, tlb=copy.deepcopy(mmu.tlb))
    expected = np.zeros((n_vas, reps, n_probe), object)
    for i, va in enumerate(vas):
        for r in range(reps):
            replay_reference(reference, before)
            for j in range(n_probe):
                one = probe[j : j + 1].copy()
                one["a"] = va
                expected[i, r, j] = replay_reference(reference, one)
    engines = [Engine(copy.deepcopy(world.mem), mmu.state, mmu.features, mmu.tlb.geometry, tlb=mmu.tlb) for _ in "ab"]
    batched = engines[0].rounds(before, probe, np.array(vas, np.uint64), reps)
    engines[1].prepare(before)  # table edits to frames mem has no storage for yet
    step = engines[1].stepper()
    for i, va in enumerate(vas):
        for r in range(reps):
            step(before)
            for j in range(n_probe):
                one = probe[j : j + 1].copy()
                one["a"] = va
                assert named_counters(step(one)) == expected[i, r, j], (i, r, j)
                assert named_counters(batched[i, r, j]) == expected[i, r, j], (i, r, j)
    for engine in engines:
        engine.sync_back()
        assert_same(reference, engine, reference.mem, f"seed={seed}")


def test_stepper_refuses_a_table_edit_to_an_unprepared_frame() -> None:
    """A stepper replaying a `WRITE_PHYS` to a frame the engine's copy has no storage for (its
    events not `prepare`d) raises EngineError at that event, naming `prepare`, instead of writing
    through row -1 of the copy; after `prepare` the same events replay."""
    mem = PhysicalMemory(1 << 30)
    table = PageTable(mem)
    table.map(0x400000, 0x200000, PAGE_SIZE, PTE.US | PTE.RW)
    state = CpuState(cr3=table.cr3(), cr4=CR4.PAE | CR4.PGE, cpl=3, efer=EFER.LME | EFER.LMA | EFER.NXE)
    pa = 0x3000_0008  # in RAM, in a frame nothing has written: no storage in mem or the copy
    events = np.array([(Ev.READ, 3, 0, 0x400000, 0), (Ev.WRITE_PHYS, 0, 0, pa, 0x1234)], EVENT_DTYPE)
    engine = Engine(mem, state)
    step = engine.stepper()
    with pytest.raises(EngineError, match=r"Engine\.prepare.*at event 1 "):
        step(events)
    engine.prepare(events)
    step = engine.stepper()
    step(events[1:])
    engine.sync_back()
    assert mem.read_u64(pa) == 0x1234
