"""Machines by name: the hardware and settings a published KPTI measurement was taken on.

A `Machine` picks what a user would pick by hand for a known setup: the cache hierarchy
(`kaiser.x86.cache_geometry`), the clock that turns cycles into seconds, the transparent-huge-page
mode of its kernel (the workloads' `thp` knob) and whether it ran as a guest. `kaiser bench
--machine NAME` applies it (an explicit `--caches`, `--thp`, `--vm/--no-vm` or `--host-page`
wins). Each entry names its source; what the facts do not say is CHOSEN.

A guest (`guest` names the hypervisor) runs with nested paging (`kaiser.x86.nested`: every TLB
miss a two-dimensional walk over an EPT of `host_page` pages) and its interrupts exit
(`vm_exits_per_interrupt`, kaiser.cost.params). Every guest here ran on hardware with EPT
(Haswell and later; Xen HVM uses it as "HAP", KVM and Nitro always) and, being 2017-2018 hosts,
backed guest RAM with 2 MiB pages: CHOSEN, since none of the sources gives the host's setting
(a KVM guest's RAM is QEMU's anonymous memory, which QEMU madvises for huge pages, so the host's
transparent huge pages back it under both the madvise and always settings; Xen's HAP p2m uses
2 MiB superpages where the domain's memory is contiguous; AWS does not document Nitro's).
Not modelled: the TLB geometry is Skylake's for every machine (the only one
`kaiser.x86.tlb_geometry` holds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from kaiser.cost.params import CACHE_LATENCIES, OUTSTANDING_L2_MISSES, SKYLAKE, CostParams
from kaiser.x86.cache_geometry import (
    HASWELL,
    SKYLAKE_CLIENT,
    SKYLAKE_SP,
    CacheHierarchy,
    CacheLevel,
    KiB,
    MiB,
)
from kaiser.x86.nested import HOST_PAGES

THP_MODES: Final = ("always", "madvise", "never")


@dataclass(frozen=True)
class Machine:
    name: str
    what: str  # the setup, as its source describes it
    caches: CacheHierarchy
    clock_ghz: float
    thp: str  # /sys/kernel/mm/transparent_hugepage/enabled of its kernel
    guest: str | None  # hypervisor when it ran as a guest (then nested paging: host_page)
    source: str
    latencies: str  # the row of kaiser.cost.params.CACHE_LATENCIES its caches are priced with
    host_page: str | None = None  # a guest's EPT page size (kaiser.x86.nested.HOST_PAGES)

    def __post_init__(self) -> None:
        if self.thp not in THP_MODES:
            raise ValueError(f"{self.name}: THP mode {self.thp!r} is not one of {', '.join(THP_MODES)}")
        if self.latencies not in CACHE_LATENCIES:
            raise ValueError(f"{self.name}: no cache latencies {self.latencies!r}")
        if (self.guest is None) != (self.host_page is None) or (self.host_page and self.host_page not in HOST_PAGES):
            raise ValueError(f"{self.name}: a guest needs a host page size ({', '.join(HOST_PAGES)}), bare metal none")

    def params(self, base: CostParams = SKYLAKE) -> CostParams:
        """`base` at this machine's clock with its caches' latencies. L1/L2/LLC latencies are in
        cycles and kept; the DRAM latency (given at 3 GHz) is scaled to the clock, since it is
        mostly nanoseconds (CHOSEN: the LLC-miss part in cycles is small beside it). A guest's
        interrupts each exit (params SOURCES, vm_exits_per_interrupt)."""
        lat = dict(CACHE_LATENCIES[self.latencies])
        lat["dram_latency"] = lat["dram_latency"] * self.clock_ghz / 3.0
        return base.with_overrides(
            clock_ghz=self.clock_ghz,
            **lat,
            dram_bytes_per_cycle=OUTSTANDING_L2_MISSES * 64 / lat["dram_latency"],
            vm_exits_per_interrupt=1.0 if self.guest else 0.0,
        )


# Broadwell-EP, Xeon E5-2667 v4 (8 cores, 25 MiB LLC, 20-way; Intel ARK). Broadwell is Haswell's
# die shrink with the same core caches (L1 32 KiB 8-way, L2 256 KiB 8-way, inclusive LLC), so the
# Haswell hierarchy with this part's LLC; latencies are Haswell's (CHOSEN: no measurement of
# this part in the facts).
BROADWELL_EP: Final = dataclasses.replace(
    HASWELL, name="broadwell-ep", part="Xeon E5-2667 v4", llc=CacheLevel("LLC", 25 * MiB, 20)
)
# Haswell-EP, Xeon E5-2658 v3 (12 cores, 30 MiB LLC, 20-way; Intel ARK).
HASWELL_EP: Final = dataclasses.replace(
    HASWELL, name="haswell-ep", part="Xeon E5-2658 v3", llc=CacheLevel("LLC", 30 * MiB, 20)
)
# Skylake-SP, Xeon Gold 6161 (22 cores, 30.25 MiB LLC = 22 x 1.375 MiB, 11-way).
GOLD_6161: Final = dataclasses.replace(
    SKYLAKE_SP, name="skylake-sp-6161", part="Xeon Gold 6161", llc=CacheLevel("LLC", 22 * 1408 * KiB, 11)
)

_GARLOFF = "K. Garloff, 'KPTI/IBRS/Retpoline Microbenchmarks' (getppid() round trips)"
MACHINES: Final = {
    m.name: m
    for m in (
        Machine(
            "garloff-bare",
            "Xeon E5-2667 v4, bare metal",
            BROADWELL_EP,
            3.2,  # the part's base clock (Intel ARK)
            "madvise",  # CHOSEN: the distribution default of early-2018 kernels (Debian, SUSE); not stated
            None,
            _GARLOFF,
            "haswell",  # CHOSEN: Broadwell keeps Haswell's cache latencies (no measurement in the facts)
        ),
        Machine(
            "garloff-kvm",
            "Xeon Gold 6161, KVM guest",
            GOLD_6161,
            2.2,  # base clock (Intel ARK)
            "madvise",
            "kvm",
            _GARLOFF,
            "skylake-sp",
            "2m",  # CHOSEN: a KVM host backs guest RAM with transparent huge pages (module docstring)
        ),
        Machine(
            "garloff-xen",
            "Xeon E5-2658 v3, Xen guest",
            HASWELL_EP,
            2.2,  # base clock (Intel ARK)
            "madvise",
            "xen",
            _GARLOFF,
            "haswell",
            "2m",  # CHOSEN: Xen HVM with HAP (EPT), 2 MiB p2m superpages (module docstring)
        ),
        Machine(
            "hansen-skylake",
            "Skylake client (KAISER v1 lseek1, global entry pages with PCID)",
            SKYLAKE_CLIENT,
            3.0,  # CHOSEN: the model's calibration clock; the posts do not give the part
            "madvise",
            None,
            "D. Hansen, KAISER v1 cover letter (31 Oct 2017); I. Molnar quoting D. Hansen (30 Mar 2018)",
            "skylake-client",
        ),
        Machine(
            "c5-2018",
            "AWS c5.9xlarge (Xeon Platinum 8124M, 36 vCPUs), Linux 4.14 guest, early 2018",
            SKYLAKE_SP,
            3.0,  # the 8124M's base clock (Intel ARK; AWS: "up to 3.5 GHz" turbo)
            "madvise",  # CHOSEN [u]: Amazon Linux's setting of 2018 is not in the facts
            "nitro (kvm)",  # c5 was the first Nitro (KVM-based) instance type (AWS, Nov 2017)
            "B. Gregg, 'Linux Performance 2018' (MySQL sysbench on c5.9xlarge, 4.14)",
            "skylake-sp",
            "2m",  # CHOSEN: Nitro is KVM-based; AWS does not document its host pages (module docstring)
        ),
    )
}


class UnknownMachine(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_machine(name: str) -> Machine:
    try:
        return MACHINES[name]
    except KeyError:
        raise UnknownMachine(f"unknown machine {name!r}; known: {', '.join(MACHINES)}") from None
