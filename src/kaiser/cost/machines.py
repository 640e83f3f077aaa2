"""Machines by name: the hardware and settings a published KPTI measurement was taken on.

A `Machine` picks what a user would pick by hand for a known setup: the processor
(`kaiser.x86.processor`: its cache hierarchy and their latencies, TLBs, features), the clock that
turns cycles into seconds, the transparent-huge-page mode of its kernel (the workloads' `thp`
knob) and whether it ran as a guest. `kaiser bench --machine NAME` applies it (an explicit
`--caches`, `--thp`, `--vm/--no-vm` or `--host-page` wins). Each entry names its source; what the
facts do not say is CHOSEN; its numbers are tagged (`Machine.sources`, kaiser.sourced).

A guest (`guest` names the hypervisor) runs with nested paging (`kaiser.x86.nested`: every TLB
miss a two-dimensional walk over an EPT of `host_page` pages) and its interrupts exit
(`vm_exits_per_interrupt`, kaiser.cost.params). Every guest here ran on hardware with EPT
(Haswell and later; Xen HVM uses it as "HAP", KVM and Nitro always) and, being 2017-2018 hosts,
backed guest RAM with 2 MiB pages: CHOSEN, since none of the sources gives the host's setting
(a KVM guest's RAM is QEMU's anonymous memory, which QEMU madvises for huge pages, so the host's
transparent huge pages back it under both the madvise and always settings; Xen's HAP p2m uses
2 MiB superpages where the domain's memory is contiguous; AWS does not document Nitro's).
Not modelled: the TLB geometry is Skylake's for every machine (the only one
`kaiser.x86.tlb_geometry` holds; each processor's tags say so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kaiser.choices import HOST_PAGES, THP_MODES
from kaiser.cost.params import OUTSTANDING_L2_MISSES, SKYLAKE, CostParams
from kaiser.sourced import Source, chosen, cited
from kaiser.x86.cache_geometry import CacheHierarchy
from kaiser.x86.processor import BROADWELL_EP, GOLD_6161, HASWELL_EP, SKYLAKE_CLIENT, SKYLAKE_SP, Processor


@dataclass(frozen=True)
class Machine:
    """A machine a published figure was measured on: its processor, clock, THP setting, and the
    hypervisor when it ran as a guest, with the source that describes it."""

    name: str
    what: str  # the setup, as its source describes it
    processor: Processor  # its caches, their latencies, TLBs (kaiser.x86.processor)
    clock_ghz: float
    thp: str  # /sys/kernel/mm/transparent_hugepage/enabled of its kernel
    guest: str | None  # hypervisor when it ran as a guest (then nested paging: host_page)
    source: str
    host_page: str | None = None  # a guest's EPT page size (kaiser.x86.nested.HOST_PAGES)
    clock_source: Source = chosen("the model's calibration clock")  # the tag of clock_ghz (kaiser.sourced)

    def __post_init__(self) -> None:
        if self.thp not in THP_MODES:
            raise ValueError(f"{self.name}: THP mode {self.thp!r} is not one of {', '.join(THP_MODES)}")
        if (self.guest is None) != (self.host_page is None) or (self.host_page and self.host_page not in HOST_PAGES):
            raise ValueError(f"{self.name}: a guest needs a host page size ({', '.join(HOST_PAGES)}), bare metal none")

    @property
    def sources(self) -> dict[str, Source]:
        """The tag of every number of the setup, by dotted path (kaiser.sourced)."""
        return {"clock_ghz": self.clock_source} | {f"processor.{k}": v for k, v in self.processor.sources.items()}

    @property
    def caches(self) -> CacheHierarchy:
        return self.processor.caches

    @property
    def latencies(self) -> str:
        """The row of kaiser.cost.params.CACHE_LATENCIES its caches are priced with."""
        return self.processor.latencies.name

    def summary(self) -> dict[str, object]:
        """The setup in words and names, for JSON (`kaiser bench --machine NAME --json`)."""
        return {
            "name": self.name,
            "what": self.what,
            "caches": self.caches.name,
            "clock_ghz": self.clock_ghz,
            "thp": self.thp,
            "guest": self.guest,
            "source": self.source,
            "latencies": self.latencies,
            "host_page": self.host_page,
        }

    def params(self, base: CostParams = SKYLAKE) -> CostParams:
        """`base` at this machine's clock with its caches' latencies. L1/L2/LLC latencies are in
        cycles and kept; the DRAM latency (given at 3 GHz) is scaled to the clock, since it is
        mostly nanoseconds (CHOSEN: the LLC-miss part in cycles is small beside it). A guest's
        interrupts each exit (params SOURCES, vm_exits_per_interrupt)."""
        lat = self.processor.latencies.as_dict()
        lat["dram_latency"] = lat["dram_latency"] * self.clock_ghz / 3.0
        return base.with_overrides(
            clock_ghz=self.clock_ghz,
            **lat,
            dram_bytes_per_cycle=OUTSTANDING_L2_MISSES * 64 / lat["dram_latency"],
            vm_exits_per_interrupt=1.0 if self.guest else 0.0,
        )


_GARLOFF = "K. Garloff, 'KPTI/IBRS/Retpoline Microbenchmarks' (getppid() round trips)"
MACHINES: Final = {
    m.name: m
    for m in (
        Machine(
            "garloff-bare",
            "Xeon E5-2667 v4, bare metal",
            BROADWELL_EP,  # Haswell's cache latencies (CHOSEN, its tags)
            3.2,
            "madvise",  # CHOSEN: the distribution default of early-2018 kernels (Debian, SUSE); not stated
            None,
            _GARLOFF,
            clock_source=cited("the E5-2667 v4's base clock (Intel ARK)"),
        ),
        Machine(
            "garloff-kvm",
            "Xeon Gold 6161, KVM guest",
            GOLD_6161,
            2.2,
            "madvise",
            "kvm",
            _GARLOFF,
            "2m",  # CHOSEN: a KVM host backs guest RAM with transparent huge pages (module docstring)
            clock_source=cited("the Gold 6161's base clock (Intel ARK)"),
        ),
        Machine(
            "garloff-xen",
            "Xeon E5-2658 v3, Xen guest",
            HASWELL_EP,
            2.2,
            "madvise",
            "xen",
            _GARLOFF,
            "2m",  # CHOSEN: Xen HVM with HAP (EPT), 2 MiB p2m superpages (module docstring)
            clock_source=cited("the E5-2658 v3's base clock (Intel ARK)"),
        ),
        Machine(
            "hansen-skylake",
            "Skylake client (KAISER v1 lseek1, global entry pages with PCID)",
            SKYLAKE_CLIENT,
            3.0,
            "madvise",
            None,
            "D. Hansen, KAISER v1 cover letter (31 Oct 2017); I. Molnar quoting D. Hansen (30 Mar 2018)",
            clock_source=chosen("the model's calibration clock; the posts do not give the part"),
        ),
        Machine(
            "c5-2018",
            "AWS c5.9xlarge (Xeon Platinum 8124M, 36 vCPUs), Linux 4.14 guest, early 2018",
            SKYLAKE_SP,
            3.0,
            "madvise",  # CHOSEN [u]: Amazon Linux's setting of 2018 is not in the facts
            "nitro (kvm)",  # c5 was the first Nitro (KVM-based) instance type (AWS, Nov 2017)
            "B. Gregg, 'Linux Performance 2018' (MySQL sysbench on c5.9xlarge, 4.14)",
            "2m",  # CHOSEN: Nitro is KVM-based; AWS does not document its host pages (module docstring)
            clock_source=cited("the 8124M's base clock (Intel ARK; AWS: 'up to 3.5 GHz' turbo)"),
        ),
    )
}


class UnknownMachine(KeyError):
    """A machine name `MACHINES` does not have (its message lists the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_machine(name: str) -> Machine:
    """The machine `name`; `UnknownMachine` otherwise."""
    try:
        return MACHINES[name]
    except KeyError:
        raise UnknownMachine(f"unknown machine {name!r}; known: {', '.join(MACHINES)}") from None
