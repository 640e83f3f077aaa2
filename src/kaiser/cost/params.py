"""Cycle costs of the events the model counts, in one table, each with its source.

Sources are rows of `shared/facts/performance.md`, tagged in the project's one scheme
(`kaiser.sourced`): CITED (a published figure as is), FIT (set so that one named published
measurement comes out of the model; the docs then do not count it as a prediction) or CHOSEN (no
published figure; the value and the reason are stated, and docs/cost.md says which outputs depend
on it). The caches' latencies are the processor's (`kaiser.x86.processor`); the defaults here are
Skylake client's. `CostParams` lets every value be overridden (`with_overrides`), to price the
same counts for another core.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Final

from kaiser.sourced import Source
from kaiser.x86.processor import DEFAULT_PROCESSOR, PROCESSORS

# Source of every parameter, for tables (docs/cost.md, `kaiser bench --json`), as each line reads.
_SOURCE_LINES: dict[str, str] = {
    "clock_ghz": "CHOSEN: nominal clock to turn cycles into seconds (Skylake-class desktop/server parts run ~3 GHz)",
    "mem_ref": "CITED: L1D load latency 4 cycles, Intel Optimization Manual 248966 (Skylake); the model has no data "
    "caches, so every reference is priced as an L1D hit, in every variant alike",
    "stlb_hit": "CITED: 9 cycles, pmu-tools (andikleen/pmu-tools) Mem_STLB_Hit_Cost for SKL/SKX",
    "walk_base": "CITED: ~9-10 cycles for a walk with hot paging-structure caches, i.e. one load (PMU walk "
    "counts of a published KPTI microbenchmark); "
    "10 taken",
    "walk_load_extra": "CITED+derived: Sniper's 30-cycle cold walk (its Skylake configuration) = 10 + 3 extra "
    "loads x ~7 cycles",
    "load_ports": "CITED: two loads a cycle, Skylake's two load ports (ports 2 and 3; Intel Optimization Manual "
    "248966, Skylake microarchitecture): the throughput of a user phase's independent loads that hit L1 (model.py)",
    "fill_buffers": "CHOSEN: 10 L1D misses in flight, Haswell's 10 line fill buffers (Intel Optimization Manual "
    "248966, Haswell microarchitecture) taken for every core here: the user phase's independent loads overlap "
    "their STLB hits and the latency of the levels beyond L1 that served them this many deep (model.py)",
    "page_walkers": "CITED: 2 page walks in parallel (Intel Optimization Manual; facts/performance.md §1): the "
    "user phase's independent loads overlap their walks two at a time (model.py)",
    "cr3_write_noflush": "FIT: getppid() 140 -> 580 cycles with PTI+PCID (K. Garloff, 'KPTI/IBRS/Retpoline "
    "Microbenchmarks') on linux-4.15 on machine garloff-bare with the recorded kernel side, two NOFLUSH writes "
    "per call; consistent with Documentation/x86/pti.rst: 'on the order of a hundred cycles'",
    "cr3_write_flush": "FIT: Garloff's getppid() 900 cycles with PTI, no PCID (linux-4.15, garloff-bare, recorded "
    "kernel side), after the refill walks are charged; the flushing write itself",
    "invlpg": "CITED: ~200 cycles, D. Hansen, linux-mm 5 Dec 2017, 'INVPCID vs. deferred CR3 write'",
    "invpcid": "CITED: INVLPG+INVPCID ~550 cycles, so ~350 for the INVPCID (same source)",
    "cr4_write": "CHOSEN: a CR4.PGE toggle (global flush fallback), no published figure: of the order of a "
    "flushing CR3 write (cr3_write_flush), both serializing and dropping the TLB",
    "syscall_sysret": "FIT with mem_ref (--kernel-side modelled only; a recorded transition is priced by "
    "kernel_cpi): SYSCALL+SYSRET and the entry/exit instructions the model does not list, so that nopti "
    "getppid() with the modelled body costs Garloff's 140 cycles",
    "swapgs": "CHOSEN: two per kernel entry from user; part of every variant's baseline",
    "kernel_cpi": "FIT: nopti getppid() = K. Garloff's 140 cycles (bare metal E5-2667v4, 'KPTI/IBRS/Retpoline "
    "Microbenchmarks') with the recorded 6.1 kernel side (--kernel-side recorded): cycles per recorded kernel "
    "instruction, L1 hits overlapped by the out-of-order core (their references cost nothing more), TLB walks and "
    "cache misses beyond L1 added; replaces syscall_sysret, swapgs, interrupt_entry_exit, page_fault and the "
    "per-reference mem_ref for a recorded transition. An effective figure: the recorded Debian 6.1 path (~380 "
    "instructions a getppid) is longer than the early-2018 kernels Garloff measured, so it comes out below a "
    "cycle",
    "interrupt_entry_exit": "CHOSEN: IDT delivery + IRETQ, no published figure found; same in every variant",
    "page_fault": "CHOSEN: #PF handler work besides its memory references (allocation, zeroing a page); no published "
    "figure found; same in every variant",
    "context_switch": "CHOSEN: schedule()/__switch_to work besides memory references and CR3; no published figure "
    "found; same in every variant",
    "asi_fault": "CHOSEN: an ASI fault's #PF delivery and return (a kernel access to memory the ASI tables lack, "
    "then asi_exit), priced as interrupt_entry_exit: the handler only checks the address and switches CR3, "
    "whose write the replay counts; no published figure (asi variant only)",
    "asi_enter_flush": "CHOSEN: the L1D flush (MSR_IA32_FLUSH_CMD) and VERW of asi_enter after the full tables "
    "ran (Shahid 2022, successors.md ASI): ~1 cycle a line for the 512 lines of a 32 KiB L1D plus the MSR "
    "write, the refill misses not counted; no published figure (asi variant only)",
    # Used only with a cache hierarchy (`kaiser bench --caches NAME`); then `mem_ref` and
    # `walk_load_extra` are not used: every reference and every walk load costs the latency of
    # the level that served it. Values per hierarchy: CACHE_LATENCIES.
    "l1_hit": "CITED: L1D load-to-use latency (per hierarchy, CACHE_SOURCES)",
    "l2_hit": "CITED: L2 load-to-use latency (per hierarchy, CACHE_SOURCES)",
    "llc_hit": "CITED: LLC load-to-use latency (per hierarchy, CACHE_SOURCES)",
    "dram_latency": "CITED [u]: load-to-use latency of a DRAM access at clock_ghz (per hierarchy, CACHE_SOURCES)",
    # In a guest with nested paging (`kaiser bench --vm`, kaiser.x86.nested): a guest's MOV to CR3 does not exit
    # with EPT (SDM Vol. 3C §26.1.3: only with "CR3-load exiting", which KVM clears when EPT is on), nor do INVLPG and
    # INVPCID, so cr3_write_* and invlpg/invpcid price a guest's instructions as on bare metal; its nested walks'
    # extra loads are counted (host_walk_loads) and priced as walk loads.
    "vm_exit": "CITED [u]: a VM exit and the re-entry, the hardware round trip with a handler that does nothing: "
    "1,344-1,376 cycles from VMRUN to back in KVM after #VMEXIT (M. Roth, LKML, Dec 2020, 'KVM: SVM: use "
    "vmsave/vmload for saving/restoring additional host state', AMD EPYC); 1,360 taken, the handler's own work not "
    "modelled; no Intel (VMX) figure found, so the same value prices an exit on Intel hosts",
    "vm_exits_per_interrupt": "CHOSEN: 1 in a guest (Machine.params), 0 on bare metal: KVM and Xen HVM run guests "
    "with 'external-interrupt exiting' set (SDM Vol. 3C §25.6.1, pin-based VM-execution controls; KVM's vmx.c "
    "sets PIN_BASED_EXT_INTR_MASK), so each timer or device "
    "interrupt exits to the host and is injected at the next VM entry",
    "dram_bytes_per_cycle": "CHOSEN: one core's DRAM bandwidth from Little's law, 16 outstanding L2 misses (the "
    "L2 superqueue, Intel Optimization Manual 248966) x 64 B / dram_latency; the time to move every line read "
    "from DRAM (prefetches included) is a lower bound on the DRAM term",
}

SOURCES: Final[dict[str, Source]] = {name: Source.parse(line) for name, line in _SOURCE_LINES.items()}

# Per cache hierarchy (kaiser.x86.cache_geometry names): latencies in cycles at clock_ghz = 3.0,
# each row a processor's (kaiser.x86.processor), with its tag.
_LATENCY_ROWS: Final = {p.latencies.name: p for p in PROCESSORS.values() if p.name == p.latencies.name}
OUTSTANDING_L2_MISSES: Final = DEFAULT_PROCESSOR.outstanding_l2_misses  # see dram_bytes_per_cycle
CACHE_LATENCIES: Final[dict[str, dict[str, float]]] = {n: p.latencies.as_dict() for n, p in _LATENCY_ROWS.items()}
CACHE_SOURCES: Final[dict[str, Source]] = {n: p.sources["latencies"] for n, p in _LATENCY_ROWS.items()}
_DEFAULT: Final = DEFAULT_PROCESSOR.latencies


@dataclass(frozen=True)
class CostParams:
    """Cycles per counted event (Skylake-class core). See `SOURCES` for where each comes from."""

    clock_ghz: float = 3.0
    # Memory references and translation.
    mem_ref: float = float(_DEFAULT.l1_hit)  # every reference an L1D hit (SOURCES)
    stlb_hit: float = 9.0
    walk_base: float = 10.0  # a walk that reads one paging-structure entry
    walk_load_extra: float = 7.0  # each further entry it reads (PSC misses)
    # How a user phase's independent loads overlap (model.py, user_overlap).
    load_ports: float = 2.0
    fill_buffers: float = 10.0
    page_walkers: float = 2.0
    # Control-register and invalidation instructions.
    cr3_write_noflush: float = 218.6
    cr3_write_flush: float = 224.6
    invlpg: float = 200.0
    invpcid: float = 350.0
    cr4_write: float = 230.0
    # Entry, exit and kernel work that is the same in every variant.
    syscall_sysret: float = 71.0
    swapgs: float = 4.0
    kernel_cpi: float = 0.3542  # a recorded transition's cycles per kernel instruction (FIT, SOURCES)
    interrupt_entry_exit: float = 200.0
    page_fault: float = 1000.0
    context_switch: float = 1500.0
    asi_fault: float = 200.0
    asi_enter_flush: float = 600.0
    # A guest (kaiser.x86.nested): the price of a VM exit, and how many an interrupt makes.
    vm_exit: float = 1360.0
    vm_exits_per_interrupt: float = 0.0
    # The data caches (only with a hierarchy; Skylake-client values, CACHE_LATENCIES).
    l1_hit: float = float(_DEFAULT.l1_hit)
    l2_hit: float = float(_DEFAULT.l2_hit)
    llc_hit: float = float(_DEFAULT.llc_hit)
    dram_latency: float = float(_DEFAULT.dram_latency)
    dram_bytes_per_cycle: float = OUTSTANDING_L2_MISSES * 64 / float(_DEFAULT.dram_latency)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def with_overrides(self, **changes: float) -> CostParams:
        """A copy with some values changed; unknown names are an error naming the name."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise ValueError(f"unknown cost parameter {name!r}; known: {', '.join(sorted(known))}")
        return replace(self, **changes)


SKYLAKE = CostParams()


def for_caches(params: CostParams, hierarchy: str) -> CostParams:
    """`params` with the latencies of the named cache hierarchy (CACHE_LATENCIES) and the DRAM
    bandwidth that follows from them."""
    try:
        lat = CACHE_LATENCIES[hierarchy]
    except KeyError:
        raise ValueError(f"no cache latencies for {hierarchy!r}; known: {', '.join(CACHE_LATENCIES)}") from None
    return params.with_overrides(**lat, dram_bytes_per_cycle=OUTSTANDING_L2_MISSES * 64 / lat["dram_latency"])
