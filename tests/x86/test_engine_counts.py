"""The engine's counters as one array, named only when asked (issue 15 item 2).

`Engine.step` returns a call's counters as an int64 array and `Engine.counter_array` the total;
`named_counters`, `Engine.counters` and `Engine.replay` name them. On test_engine's random worlds
and streams, replayed in many small batches (some through `step`, some through `replay`, with and
without `sync`), every batch's array read field by field in `TlbCounters`' order must equal the
reference's counters for that batch, the total array the sum of the batches and the reference's
total, and a returned array must not change when later calls add to the engine's total.
"""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import CPUS, GEOMETRIES, Cpu, build_world, make_stream

from kaiser.x86 import engine_core as core
from kaiser.x86.counters import TlbCounters
from kaiser.x86.engine import Engine, named_counters
from kaiser.x86.events import Ev, replay_reference
from kaiser.x86.mmu import Mmu

NAMES = [f.name for f in dataclasses.fields(TlbCounters)]


def by_name(counters: TlbCounters) -> list[int]:
    return [getattr(counters, name) for name in NAMES]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    cpu=CPUS,
    geometry=st.sampled_from(sorted(GEOMETRIES)),
    batches=st.integers(2, 30),
    sync=st.booleans(),
)
def test_named_view_of_the_array_is_the_reference(seed: int, cpu: Cpu, geometry: str, batches: int, sync: bool) -> None:
    rng = random.Random(seed)
    world = build_world(rng, cpu)
    mmu = Mmu(world.mem, world.state, features=world.features, geometry=GEOMETRIES[geometry])
    replay_reference(mmu, make_stream(rng, world, 100))  # a warm start, counted in neither total
    events = make_stream(rng, world, 300, mmu.state)
    engine = Engine(copy.deepcopy(world.mem), mmu.state, world.features, GEOMETRIES[geometry], tlb=mmu.tlb)
    mmu.counters = TlbCounters()
    total = np.zeros(len(NAMES), np.int64)
    returned: list[tuple[np.ndarray, list[int]]] = []
    for part in np.array_split(events, batches):
        want = replay_reference(mmu, part)
        if rng.random() < 0.5:
            got = engine.step(part, sync=sync)
            assert got.dtype == np.int64 and got.shape == (len(NAMES),)
            assert got.tolist() == by_name(want), f"batch of {len(part)}: the array, field by field"
            assert named_counters(got) == want
            returned.append((got, got.tolist()))
        else:
            named = engine.replay(part, sync=sync)
            assert named == want
            got = np.array(by_name(named), np.int64)
        total += got
        assert engine.counter_array().tolist() == total.tolist()
    assert engine.counters == mmu.counters
    assert engine.counter_array().tolist() == by_name(mmu.counters)
    for arr, was in returned:  # later calls added to the engine's total, not to what they returned
        assert arr.tolist() == was


def test_counters_can_be_set_and_are_copies() -> None:
    rng = random.Random(7)
    cpu = Cpu(False, True, True, False, False, False, True, True, False, 0, 46, True)
    world = build_world(rng, cpu)
    events = make_stream(rng, world, 200)
    engine = Engine(copy.deepcopy(world.mem), world.state, world.features)
    first = engine.step(events)
    assert first.any(), "the stream counts something"
    view = engine.counters
    view.walks_d += 1_000  # a named view is a new object: the engine's total does not move
    assert engine.counter_array().tolist() == first.tolist()
    engine.counter_array()[:] = 0  # so is the array copy
    assert engine.counter_array().tolist() == first.tolist()
    engine.counters = TlbCounters(walks_i=5)
    assert engine.counters == TlbCounters(walks_i=5)
    second = engine.step(events)
    assert engine.counters == named_counters(second + np.array(by_name(TlbCounters(walks_i=5))))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cpu=CPUS, batches=st.integers(2, 20))
def test_accesses_only_batches_count_as_the_reference(seed: int, cpu: Cpu, batches: int) -> None:
    """`step(accesses_only=True)` (a trace's user references: no scan for WRITE_PHYS) between
    ordinary batches leaves the same counters as the reference; `count_kind` counts like numpy."""
    rng = random.Random(seed)
    world = build_world(rng, cpu)
    mmu = Mmu(world.mem, world.state, features=world.features)
    events = make_stream(rng, world, 300)
    engine = Engine(copy.deepcopy(world.mem), world.state, world.features, tlb=mmu.tlb)
    for part in np.array_split(events, batches):
        for kind in range(int(Ev.WRITE_PHYS) + 1):
            assert core.count_kind(part, kind) == int(np.count_nonzero(part["kind"] == kind))
        only = bool(np.all(part["kind"] <= Ev.FETCH))
        want = replay_reference(mmu, part)
        assert engine.step(part, sync=False, accesses_only=only).tolist() == by_name(want)
    engine.sync_back()
    assert engine.counters == mmu.counters
