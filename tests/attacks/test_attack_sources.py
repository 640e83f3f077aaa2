"""Every number of the attacks' models carries a tag of the one scheme (kaiser.sourced), and the
ones that are the processor's are read off it, not restated."""

from __future__ import annotations

import pytest

from kaiser.attacks.cache import (
    DRAM_SOURCE,
    SKYLAKE_L1D,
    SKYLAKE_L2,
    SKYLAKE_L3,
    TIMER_NOISE_SOURCES,
    DataCache,
    Hit,
    TimerNoise,
)
from kaiser.attacks.core import MELTDOWN_PARAM_SOURCES
from kaiser.attacks.kaslr import KaslrParams
from kaiser.attacks.meltdown import MeltdownParams
from kaiser.attacks.timing import KASLR_PARAM_SOURCES, PROBE_COST_SOURCES, ProbeCosts
from kaiser.cost.params import SKYLAKE
from kaiser.sourced import Source, numbers, untagged_numbers
from kaiser.x86.processor import DEFAULT_PROCESSOR, SAPPHIRE_RAPIDS


@pytest.mark.parametrize(
    ("obj", "sources"),
    [
        (TimerNoise(), TIMER_NOISE_SOURCES),
        (ProbeCosts(), PROBE_COST_SOURCES),
        (MeltdownParams(), MELTDOWN_PARAM_SOURCES),
        (KaslrParams(), KASLR_PARAM_SOURCES),
    ],
    ids=["timer-noise", "probe-costs", "meltdown-params", "kaslr-params"],
)
def test_every_number_is_tagged_and_every_tag_names_a_number(obj: object, sources: dict[str, Source]) -> None:
    assert untagged_numbers(obj, sources) == []
    assert set(sources) == {path.split(".")[0] for path, _ in numbers(obj)}
    assert isinstance(DRAM_SOURCE, Source)


def test_the_attack_cache_is_the_default_processors() -> None:
    caches, lat = DEFAULT_PROCESSOR.caches, DEFAULT_PROCESSOR.latencies
    assert [(g.size, g.ways) for g in (SKYLAKE_L1D, SKYLAKE_L2, SKYLAKE_L3)] == [
        (caches.l1d.size, caches.l1d.ways),
        (caches.l2.size, caches.l2.ways),
        (caches.llc.size, caches.llc.ways),
    ]
    assert [DataCache().latency(h) for h in (Hit.L1, Hit.L2, Hit.L3)] == [lat.l1_hit, lat.l2_hit, lat.llc_hit]


def test_the_probe_prices_are_the_cost_models_and_the_processors() -> None:
    assert ProbeCosts().stlb_hit == SKYLAKE.stlb_hit
    assert ProbeCosts().walk_load == DEFAULT_PROCESSOR.latencies.l2_hit


def test_a_core_on_a_part_with_rdcl_no_forwards_nothing() -> None:
    """The Meltdown core reads its part's transient behaviour: Sapphire Rapids forwards nothing."""
    from kaiser.attacks.core import run_meltdown

    leaky = run_meltdown("nopti", region="direct-map", length=2, seed=1)
    fixed = run_meltdown("nopti", region="direct-map", length=2, seed=1, processor=SAPPHIRE_RAPIDS)
    assert leaky.vulnerable and not fixed.vulnerable
    assert leaky.recovered == list(leaky.secret.data)
    assert fixed.recovered != list(fixed.secret.data)
