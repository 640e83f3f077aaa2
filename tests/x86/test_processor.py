"""Every modelled processor is one description whose every number carries a tag of the one
scheme, and whose tags name only numbers it has; the published machines are built from them."""

from __future__ import annotations

import pytest

from kaiser.cost.machines import MACHINES
from kaiser.cost.params import CACHE_LATENCIES, CACHE_SOURCES, SKYLAKE, SOURCES, CostParams
from kaiser.sourced import KINDS, Source, numbers, untagged_numbers
from kaiser.x86.cache_geometry import HIERARCHIES
from kaiser.x86.processor import DEFAULT_PROCESSOR, PROCESSORS, Processor
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY


def _paths(obj: object) -> set[str]:
    """Every path a tag may name: each number's, and each structure's that holds numbers."""
    out = set()
    for path, _ in numbers(obj):
        parts = path.split(".")
        out.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return out


@pytest.mark.parametrize("processor", PROCESSORS.values(), ids=list(PROCESSORS))
def test_every_number_of_a_processor_is_tagged(processor: Processor) -> None:
    assert untagged_numbers(processor, processor.sources) == []
    assert all(isinstance(t, Source) and t.kind in KINDS and t.text.strip() for t in processor.sources.values())


@pytest.mark.parametrize("processor", PROCESSORS.values(), ids=list(PROCESSORS))
def test_a_processor_tags_only_numbers_it_has(processor: Processor) -> None:
    assert set(processor.sources) - _paths(processor) == set()


@pytest.mark.parametrize("name", list(MACHINES))
def test_every_number_of_a_published_machine_is_tagged(name: str) -> None:
    machine = MACHINES[name]
    assert untagged_numbers(machine, machine.sources) == []
    assert machine.processor in PROCESSORS.values()


def test_every_cost_parameter_is_tagged() -> None:
    assert untagged_numbers(SKYLAKE, {**SOURCES}) == []
    assert set(SOURCES) == {path for path, _ in numbers(CostParams())}


def test_the_cost_defaults_are_the_default_processors() -> None:
    """The cost model's cache latencies and its L1D price of a reference read the description."""
    lat = DEFAULT_PROCESSOR.latencies
    assert (SKYLAKE.l1_hit, SKYLAKE.l2_hit, SKYLAKE.llc_hit, SKYLAKE.dram_latency) == (
        lat.l1_hit,
        lat.l2_hit,
        lat.llc_hit,
        lat.dram_latency,
    )
    assert SKYLAKE.mem_ref == lat.l1_hit
    assert DEFAULT_PROCESSOR.tlb is DEFAULT_GEOMETRY


def test_each_latency_row_is_a_processors_with_its_tag() -> None:
    assert set(CACHE_LATENCIES) == set(HIERARCHIES) == set(CACHE_SOURCES)
    for name, row in CACHE_LATENCIES.items():
        p = PROCESSORS[name]
        assert p.caches is HIERARCHIES[name]
        assert row == p.latencies.as_dict()
        assert CACHE_SOURCES[name] is p.sources["latencies"]


def test_meltdown_is_a_property_of_the_part() -> None:
    """Skylake and Haswell forward a faulting load's data; Sapphire Rapids has RDCL_NO."""
    vulnerable = {name for name, p in PROCESSORS.items() if p.transient.meltdown}
    assert "sapphire-rapids" not in vulnerable
    assert {"skylake-client", "skylake-sp", "haswell"} <= vulnerable
