"""LASS in the compiled engine, against the reference MMU (which `tests/x86/test_lass.py` checks
against the SDM's wording).

With CR4.LASS set the engine must fault the same accesses before any TLB lookup (counted in
`faults`, no lookup, no walk, no A/D), and leave TLBs, paging-structure caches, LRU clock and
memory exactly as the reference does. Streams are test_engine's random ones (accesses at CPL
0/1/3 to both halves, implicit ones, CR3/CR4 writes, INVLPG/INVPCID, table edits), with every
MOV to CR4 keeping LASS and SMAP set; and a grid of every access kind x CPL x AC x half.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from itertools import product

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import GEOMETRIES, Cpu, assert_same, build_world, make_stream

from kaiser.x86.bits import CR4, RFLAGS
from kaiser.x86.cpu import CpuState
from kaiser.x86.engine import Engine
from kaiser.x86.events import Ev, EventBuilder, replay_reference
from kaiser.x86.mmu import GeneralProtection, Mmu
from kaiser.x86.rights import Op, lass_violation

LASS_SMAP = int(CR4.LASS | CR4.SMAP)
OPS = {int(Ev.READ): Op.READ, int(Ev.WRITE): Op.WRITE, int(Ev.FETCH): Op.FETCH}


def lass_cpu(ac: bool, la57: bool, pcide: bool) -> Cpu:
    return Cpu(la57, pcide, True, True, True, False, True, True, ac, 0, 46, True)


def blocked(events: np.ndarray, state: CpuState) -> int:
    """Accesses LASS blocks in `events` (CR4 always has LASS and SMAP; CPL per event)."""
    n = 0
    for kind, cpl, aux, a, _ in events.tolist():
        if kind in OPS:
            n += lass_violation(a, OPS[kind], state.replace(cpl=cpl), bool(aux & 1)) is not None
    return n


def run_both(seed: int, ac: bool, la57: bool, pcide: bool, geometry: str) -> int:
    rng = random.Random(seed)
    world = build_world(rng, lass_cpu(ac, la57, pcide))
    features = dataclasses.replace(world.features, lass=True)
    state = world.state.replace(cr4=world.state.cr4 | LASS_SMAP)
    mmu = Mmu(world.mem, state, features=features, geometry=GEOMETRIES[geometry])
    events = make_stream(rng, world, 500, state)
    events["a"][events["kind"] == Ev.MOV_CR4] |= np.uint64(LASS_SMAP)  # LASS stays on throughout
    eng_mem = copy.deepcopy(world.mem)
    engine = Engine(eng_mem, mmu.state, features, GEOMETRIES[geometry], tlb=mmu.tlb)
    assert engine.replay(events) == replay_reference(mmu, events)
    assert_same(mmu, engine, world.mem, f"seed={seed} lass")
    return blocked(events, state)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ac=st.booleans(),
    la57=st.booleans(),
    pcide=st.booleans(),
    geometry=st.sampled_from(sorted(GEOMETRIES)),
)
def test_engine_matches_reference_under_lass(seed: int, ac: bool, la57: bool, pcide: bool, geometry: str) -> None:
    run_both(seed, ac, la57, pcide, geometry)


def test_the_streams_hit_lass() -> None:
    """The property above is not vacuous: its streams contain accesses LASS blocks."""
    assert sum(run_both(seed, seed % 2 == 0, False, True, "tiny") for seed in range(4)) > 20


LOWER = (0x40_0000, 0x4000_0000, 0x7FFF_FFFF_F000)
UPPER = (0xFFFF_FFFF_8100_0000, 0xFFFF_8880_0000_0000, 0xFFFF_C900_0000_0000)


@pytest.mark.parametrize("ac", [False, True])
def test_engine_and_walker_agree_on_the_lass_grid(ac: bool) -> None:
    """Every access kind (read, write, fetch, implicit read/write) x CPL 0/3 x lower/upper half,
    each twice (the second may hit what the first filled), in one stream per EFLAGS.AC."""
    world = build_world(random.Random(7), lass_cpu(ac, False, True))
    features = dataclasses.replace(world.features, lass=True)
    state = world.state.replace(cr4=world.state.cr4 | LASS_SMAP)
    assert bool(state.rflags & RFLAGS.AC) == ac
    eb = EventBuilder()
    for _ in range(2):
        for va, op, cpl, implicit in product((*LOWER, *UPPER), Op, (0, 3), (False, True)):
            if not (implicit and op is Op.FETCH):
                eb.access(va, op, cpl, implicit=implicit)
    events = eb.array()
    mmu = Mmu(world.mem, state, features=features)
    engine = Engine(copy.deepcopy(world.mem), state, features, tlb=mmu.tlb)
    assert engine.replay(events) == replay_reference(mmu, events)
    assert_same(mmu, engine, world.mem, f"grid ac={ac}")
    assert 0 < blocked(events, state) < len(events)


def test_lass_without_smap_or_without_the_feature_is_gp_in_both() -> None:
    world = build_world(random.Random(3), lass_cpu(False, False, True))
    for features, value in (
        (world.features, world.state.cr4 | LASS_SMAP),  # no CPUID LASS
        (dataclasses.replace(world.features, lass=True), (world.state.cr4 | int(CR4.LASS)) & ~int(CR4.SMAP)),
    ):
        eb = EventBuilder()
        eb.mov_cr4(value)
        with pytest.raises(GeneralProtection):
            replay_reference(Mmu(world.mem, world.state, features=features), eb.array())
        with pytest.raises(GeneralProtection):
            Engine(copy.deepcopy(world.mem), world.state, features).replay(eb.array())
