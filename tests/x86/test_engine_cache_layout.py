"""The engine's cache layout (`kaiser.x86.engine_cache`: a set's tags then stamps in one row,
the prefetched flag in the tag, invalid ways at stamp -1) converts exactly: any reference state
loaded and stored back is the same state, invalid ways' stamps and flags included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_cache import SMALL

from kaiser.x86.cache import Caches
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuState
from kaiser.x86.engine import Engine, EngineError
from kaiser.x86.physmem import PhysicalMemory


def random_caches(seed: int, name: str) -> Caches:
    rng = np.random.default_rng(seed)
    caches = Caches(SMALL[name], TlbCounters())
    for arr in caches.arrays:
        shape = arr.tag.shape
        lines = rng.integers(0, 1 << 40, shape) // arr.sets * arr.sets + np.arange(arr.sets)[:, None]
        arr.tag[:] = np.where(rng.random(shape) < 0.3, -1, lines)
        arr.stamp[:] = rng.integers(0, 1 << 50, shape)
        arr.pf[:] = rng.random(shape) < 0.5
    caches.streams[:] = rng.integers(-1, 1 << 30, caches.streams.shape)
    caches.clock = int(rng.integers(0, 1 << 50))
    return caches


def engine_for(name: str) -> Engine:
    return Engine(PhysicalMemory(1 << 24), CpuState(cr3=0), caches=SMALL[name])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(sorted(SMALL)))
def test_load_then_store_is_the_same_state(seed: int, name: str) -> None:
    ref = random_caches(seed, name)
    engine = engine_for(name)
    engine.load_caches(ref)
    got = Caches(ref.hierarchy, TlbCounters())
    engine.store_caches(got)
    for a, b in zip(ref.arrays, got.arrays, strict=True):
        for field in ("tag", "stamp", "pf"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), f"{a.level.name}.{field}"
    assert np.array_equal(ref.streams, got.streams)
    assert ref.clock == got.clock


def test_cold_engine_stores_a_cold_reference() -> None:
    name = sorted(SMALL)[0]
    got = Caches(SMALL[name], TlbCounters())
    got.l2.tag[:] = 5  # overwritten by the store
    engine_for(name).store_caches(got)
    want = Caches(SMALL[name], TlbCounters())
    for a, b in zip(want.arrays, got.arrays, strict=True):
        assert (a.tag == b.tag).all() and (a.stamp == b.stamp).all() and (a.pf == b.pf).all()


def test_a_valid_line_with_a_negative_stamp_is_refused() -> None:
    name = sorted(SMALL)[0]
    ref = Caches(SMALL[name], TlbCounters())
    ref.l1d.tag[0, 0], ref.l1d.stamp[0, 0] = 0, -3
    with pytest.raises(EngineError, match="LRU stamp or the clock is negative"):
        engine_for(name).load_caches(ref)
