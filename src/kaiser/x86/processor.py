"""One modelled processor as one frozen, declarative description (angr's `archinfo` habit).

A `Processor` composes what the hardware layers read about a part: its CPU features
(`kaiser.x86.cpu.CpuFeatures`), TLB and paging-structure-cache geometry
(`kaiser.x86.tlb_geometry`), data-cache hierarchy (`kaiser.x86.cache_geometry`), the caches'
load-to-use latencies and its transient-execution behaviour (Meltdown: whether a faulting user
load of a present supervisor page forwards data to dependent instructions, and the race window
in which it does). Every number in it carries a tag of the one scheme (`kaiser.sourced`:
CITED / FIT / CHOSEN) in `sources`, keyed by the dotted path of the number or of the structure
that holds it; tests/x86/test_processor.py checks that no number goes untagged.

The processor knows nothing of Linux or of workloads: the cycle costs of kernel work, the clock a
measurement ran at, THP and virtualisation are the published setup's (`kaiser.cost.machines`,
which builds each `Machine` from a processor here, and `kaiser.cost.params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kaiser.sourced import Source, chosen, cited
from kaiser.x86 import cache_geometry as cg
from kaiser.x86.cache_geometry import CacheHierarchy, CacheLevel
from kaiser.x86.cpu import FEATURE_SOURCES, CpuFeatures
from kaiser.x86.geometry import KiB, MiB
from kaiser.x86.tlb_geometry import SKYLAKE_CLIENT as SKYLAKE_CLIENT_TLB
from kaiser.x86.tlb_geometry import SKYLAKE_CLIENT_SOURCES, TlbGeometry


@dataclass(frozen=True)
class CacheLatencies:
    """Load-to-use latencies in cycles of a hit in each level and of a DRAM access (at 3 GHz;
    `kaiser.cost.machines.Machine.params` scales DRAM to a machine's clock). `name` is the row's
    name in `kaiser.cost.params.CACHE_LATENCIES` (a part may be priced with another's row)."""

    name: str
    l1_hit: int
    l2_hit: int
    llc_hit: int
    dram_latency: int

    def as_dict(self) -> dict[str, float]:
        return {
            "l1_hit": self.l1_hit,
            "l2_hit": self.l2_hit,
            "llc_hit": self.llc_hit,
            "dram_latency": self.dram_latency,
        }


@dataclass(frozen=True)
class Transient:
    """Transient execution of a user load that faults (Lipp et al., "Meltdown", USENIX Security
    2018). `meltdown`: the load of a present supervisor page forwards its data to dependent
    instructions before the fault retires (Intel's "Rogue Data Cache Load", CVE-2017-5754; a part
    with IA32_ARCH_CAPABILITIES.RDCL_NO does not). The race: dependants run for a window of
    `window_mean` +- `window_sd` cycles (Gaussian); data that arrives later is not forwarded and
    they see 0 (Meltdown §5.2's bias towards 0), though the load still fills the line."""

    meltdown: bool
    window_mean: float
    window_sd: float


@dataclass(frozen=True)
class Processor:
    """A modelled part: features, translation caches, data caches, latencies, transient
    behaviour, and the tag of every number (`sources`, see the module docstring)."""

    name: str
    part: str  # the processor the figures are for
    features: CpuFeatures
    tlb: TlbGeometry
    caches: CacheHierarchy
    latencies: CacheLatencies
    transient: Transient
    # L2 misses one core keeps in flight (the DRAM bandwidth of kaiser.cost.params follows from it)
    outstanding_l2_misses: int = 16
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False)


# Tags every description here shares, by dotted path.
_FEATURES: Final = {f"features.{k}": v for k, v in FEATURE_SOURCES.items()}
_SKYLAKE_TLB: Final = {f"tlb.{k}": v for k, v in SKYLAKE_CLIENT_SOURCES.items()}
_OTHER_TLB: Final = {
    "tlb": chosen(
        "Skylake client's TLB and paging-structure caches (the only geometry kaiser.x86.tlb_geometry holds; "
        "the engine and the Mmu run it for every part), not this part's own"
    )
}
_PREFETCH: Final = {f"caches.{k}": v for k, v in cg.PREFETCHER_SOURCES.items()}
_OUTSTANDING: Final = {
    "outstanding_l2_misses": cited("16 outstanding L2 misses, the L2 superqueue (Intel Optimization Manual 248966)")
}
_MELTDOWN_WINDOW: Final = {
    "transient.window_mean": chosen(
        "no published figure: 150 cycles, so that a secret in any cache level (<= 44 cycles on Skylake) is "
        "forwarded and one in DRAM (~200) usually is not: cached data leaks reliably, uncached data after a retry",
        " [u]",
    ),
    "transient.window_sd": chosen("no published figure: 30 cycles of spread, so a DRAM secret sometimes wins", " [u]"),
}
_SKYLAKE_TRANSIENT: Final = Transient(meltdown=True, window_mean=150.0, window_sd=30.0)


def _processor(
    name: str,
    part: str,
    caches: CacheHierarchy,
    latencies: CacheLatencies,
    transient: Transient,
    sources: Mapping[str, Source],
) -> Processor:
    tlb = _SKYLAKE_TLB if name == "skylake-client" else _OTHER_TLB
    every = {**_FEATURES, **tlb, **_PREFETCH, **_OUTSTANDING, **_MELTDOWN_WINDOW}
    return Processor(
        name, part, CpuFeatures(), SKYLAKE_CLIENT_TLB, caches, latencies, transient, sources={**every, **sources}
    )


def _cache_sources(hierarchy_name: str) -> dict[str, Source]:
    return {f"caches.{k}": v for k, v in cg.HIERARCHY_SOURCES[hierarchy_name].items()}


SKYLAKE_CLIENT: Final = _processor(
    "skylake-client",
    "Core i7-6700K",
    cg.SKYLAKE_CLIENT,
    CacheLatencies("skylake-client", 4, 12, 44, 195),
    _SKYLAKE_TRANSIENT,
    {
        **_cache_sources("skylake-client"),
        "latencies": cited(
            "L1D/L2/L3 4/12/44 cycles, Intel Optimization Manual 248966 (Skylake); DRAM [u] 7-cpu.com 'Intel "
            "Skylake' (i7-6700): 42 cycles + 51 ns, i.e. 195 cycles at 3 GHz"
        ),
    },
)

SKYLAKE_SP: Final = _processor(
    "skylake-sp",
    "Xeon Platinum 8124M (AWS c5)",
    cg.SKYLAKE_SP,
    CacheLatencies("skylake-sp", 4, 14, 77, 270),
    _SKYLAKE_TRANSIENT,  # the same core as the client part: Meltdown-vulnerable
    {
        **_cache_sources("skylake-sp"),
        "latencies": cited(
            "L1D 4, L2 14 cycles, Intel Optimization Manual 248966, Skylake Server chapter (AnandTech's "
            "Skylake-X review measured 11-13); LLC 77 cycles, AnandTech 'The Intel Skylake-X Review' (2017); DRAM "
            "[u] ~90 ns idle latency of Skylake-SP with DDR4-2666 (AnandTech Xeon Scalable review), 270 cycles at "
            "3 GHz"
        ),
    },
)

HASWELL: Final = _processor(
    "haswell",
    "Core i7-4770",
    cg.HASWELL,
    CacheLatencies("haswell", 4, 12, 36, 207),
    _SKYLAKE_TRANSIENT,  # Meltdown-vulnerable as every Intel core before RDCL_NO; the race window kept
    {
        **_cache_sources("haswell"),
        "latencies": cited(
            "7-cpu.com 'Intel Haswell' (i7-4770): L1 4, L2 12, L3 36 cycles, RAM 36 cycles + 57 ns (207 cycles at "
            "3 GHz)",
            " [u]",
        ),
    },
)

# A current part: not Meltdown-vulnerable. It reports IA32_ARCH_CAPABILITIES.RDCL_NO (Intel's
# affected-processor tables give Whiskey Lake, Cascade Lake and later cores a hardware fix for
# rogue data cache load), so Linux sets no X86_BUG_CPU_MELTDOWN (cpu_set_bug_bits() in
# arch/x86/kernel/cpu/common.c skips it under ARCH_CAP_RDCL_NO) and pti=auto leaves PTI off.
SAPPHIRE_RAPIDS: Final = _processor(
    "sapphire-rapids",
    "Xeon Platinum 8480+",
    cg.SAPPHIRE_RAPIDS,
    CacheLatencies("sapphire-rapids", 5, 16, 100, 330),
    dataclasses.replace(_SKYLAKE_TRANSIENT, meltdown=False),
    {
        **_cache_sources("sapphire-rapids"),
        "latencies": cited(
            "Chips and Cheese, 'Sapphire Rapids: Golden Cove Hits Servers' (2023, Xeon Platinum 8480): L1D 5, L2 "
            "16 cycles, L3 ~33 ns (100 cycles at 3 GHz), DRAM ~110 ns (330 cycles)",
            " [u]",
        ),
    },
)

# The parts of the published measurements (kaiser.cost.machines), from the families above.
_HASWELL_LATENCIES_KEPT: Final = chosen("Haswell's cache latencies (no measurement of this part in the facts)")


def _part_of(
    family: Processor, name: str, part: str, llc: CacheLevel, llc_source: Source, latencies: Source
) -> Processor:
    """A part of `family` with its own LLC: the family's core caches, cache latencies (tagged
    `latencies` for this part) and transient behaviour."""
    return _processor(
        name,
        part,
        dataclasses.replace(family.caches, name=name, part=part, llc=llc),
        family.latencies,
        family.transient,
        {**_cache_sources(family.name), "caches.llc": llc_source, "latencies": latencies},
    )


# Broadwell-EP, Xeon E5-2667 v4: Haswell's die shrink with the same core caches (L1 32 KiB 8-way,
# L2 256 KiB 8-way, inclusive LLC), this part's LLC.
BROADWELL_EP: Final = _part_of(
    HASWELL,
    "broadwell-ep",
    "Xeon E5-2667 v4",
    CacheLevel("LLC", 25 * MiB, 20),
    cited("25 MiB, 20-way (8 cores; Intel ARK, Xeon E5-2667 v4)"),
    _HASWELL_LATENCIES_KEPT,
)
HASWELL_EP: Final = _part_of(
    HASWELL,
    "haswell-ep",
    "Xeon E5-2658 v3",
    CacheLevel("LLC", 30 * MiB, 20),
    cited("30 MiB, 20-way (12 cores; Intel ARK, Xeon E5-2658 v3)"),
    _HASWELL_LATENCIES_KEPT,
)
GOLD_6161: Final = _part_of(
    SKYLAKE_SP,
    "skylake-sp-6161",
    "Xeon Gold 6161",
    CacheLevel("LLC", 22 * 1408 * KiB, 11),
    cited("30.25 MiB = 22 x 1.375 MiB, 11-way (22 cores; Intel ARK, Xeon Gold 6161)"),
    chosen("Skylake-SP's cache latencies (the same core and mesh; no measurement of this part)"),
)

PROCESSORS: Final = {
    p.name: p for p in (SKYLAKE_CLIENT, SKYLAKE_SP, HASWELL, SAPPHIRE_RAPIDS, BROADWELL_EP, HASWELL_EP, GOLD_6161)
}
DEFAULT_PROCESSOR: Final = SKYLAKE_CLIENT
