"""Counts to cycles: the cost model.

Cycles are a sum of named terms, each a count times a parameter of `kaiser.cost.params`:
translation (STLB hits, walks and the paging-structure entries they read), CR3 writes with and
without a flush, INVLPG/INVPCID/CR4 invalidations, every memory reference at L1D cost, and the
per-operation work that is the same in every variant (SYSCALL/SYSRET, SWAPGS, interrupt
delivery, page-fault and scheduler work, each system call's own body, the user's computation).
An L1 TLB hit costs nothing beyond the reference itself (hidden in the load pipeline).

With a cache hierarchy (`caches=True`: the counters come from a replay with `kaiser.x86.cache`),
every reference and every page-walk load costs the latency of the level that served it (L1, L2,
LLC, DRAM) instead of `mem_ref` and `walk_load_extra`; a walk costs `walk_base - l1_hit` besides
its loads (so a hot walk of one L1 load still costs `walk_base`), and `dram_bandwidth` adds the
time by which moving every line read from DRAM (prefetches too) at `dram_bytes_per_cycle`
exceeds the latency-priced DRAM accesses.

A transition whose kernel side came from a recording (`--kernel-side recorded`, OpCounts'
`recorded_*`) is priced as hardware runs it: the real kernel's instructions at `kernel_cpi`
cycles each (an out-of-order core overlaps its L1 hits, so its references cost nothing on top),
plus what the instructions cannot hide: the TLB (STLB hits and walks, from the counters as for
every reference), the CR3 writes and invalidations, and with a cache hierarchy every reference of
it that missed L1, at the latency of the level that served it (CHOSEN: misses are not overlapped
with each other, the kernel's loads mostly chasing pointers). `recorded` are the counters of those
transitions' events alone (kaiser.cost.run replays them apart); without them every recorded
reference is taken as an L1 hit. Such a transition is charged no `syscall_sysret`, `swapgs`,
`interrupt_entry_exit` or `page_fault`: the instructions are that work.

A workload's user loads (`user`: the counters of its user phases' data loads alone, which
kaiser.cost.run replays apart) are independent of each other: the addresses of a strided walk do
not depend on the values loaded. An out-of-order core overlaps them, so they are priced by the
resource each one uses, not one latency after another: `load_ports` L1 hits a cycle, their STLB
hits and the latency of the levels beyond L1 that served them spread over `fill_buffers` misses
in flight, their walks over `page_walkers` walks at once (`user_overlap`). Every other reference
(kernel paths, a recorded transition's misses, instruction fetches) stays priced one after
another (CHOSEN above: the kernel's loads mostly chase pointers).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser.cost.params import SKYLAKE, CostParams
from kaiser.linux.entry import OpCounts
from kaiser.x86.counters import TlbCounters


@dataclass(frozen=True)
class Cycles:
    """Cycles by term; `total` is their sum."""

    terms: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def isolation_sensitive(self) -> float:
        """The terms isolation can change: translation, CR3 and invalidation."""
        return sum(self.terms[k] for k in ("translation", "cr3", "invalidation"))

    def as_dict(self) -> dict[str, float]:
        return {**self.terms, "total": self.total}


def _cache_terms(c: TlbCounters, p: CostParams) -> tuple[float, float, float]:
    """(walk loads, demand references, DRAM bandwidth excess) in cycles, by serving level."""
    walk_loads = (
        c.walk_loads_l1 * p.l1_hit
        + c.walk_loads_l2 * p.l2_hit
        + c.walk_loads_llc * p.llc_hit
        + c.walk_loads_dram * p.dram_latency
    )
    refs = (
        (c.l1i_hits + c.l1d_hits - c.walk_loads_l1) * p.l1_hit
        + (c.l2_hits - c.walk_loads_l2) * p.l2_hit
        + (c.llc_hits - c.walk_loads_llc) * p.llc_hit
        + (c.llc_misses - c.walk_loads_dram) * p.dram_latency
    )
    excess = max(0.0, c.dram_reads * 64 / p.dram_bytes_per_cycle - c.llc_misses * p.dram_latency)
    return walk_loads, refs, excess


def _l1_hits(c: TlbCounters) -> int:
    """Demand references served by L1I/L1D (page-walk loads not counted)."""
    return c.l1i_hits + c.l1d_hits - c.walk_loads_l1


def _walk_cycles(c: TlbCounters, p: CostParams, caches: bool) -> float:
    """The walks of counters `c`, priced one after another (as `price` prices every walk)."""
    if caches:
        return c.walks * (p.walk_base - p.l1_hit) + _cache_terms(c, p)[0]
    extra_loads = max(0, c.walk_loads - c.walks) + c.host_walk_loads
    return c.walks * p.walk_base + extra_loads * p.walk_load_extra


def user_overlap(u: TlbCounters, p: CostParams, caches: bool) -> tuple[float, float, float, float]:
    """Independent user loads with counters `u` (the module docstring): (translation priced one
    after another, translation overlapped, references one after another, references overlapped)."""
    loads = u.dtlb_hits + u.dtlb_misses
    walks = _walk_cycles(u, p, caches)
    serial_tr = u.stlb_hits * p.stlb_hit + walks
    overlapped_tr = u.stlb_hits * p.stlb_hit / p.fill_buffers + walks / p.page_walkers
    if caches:
        _, serial_refs, _ = _cache_terms(u, p)
        beyond_l1 = serial_refs - _l1_hits(u) * p.l1_hit
        overlapped_refs = _l1_hits(u) / p.load_ports + beyond_l1 / p.fill_buffers
    else:
        serial_refs = loads * p.mem_ref
        overlapped_refs = loads / p.load_ports
    return serial_tr, overlapped_tr, serial_refs, overlapped_refs


def price(
    c: TlbCounters,
    ops: OpCounts,
    p: CostParams = SKYLAKE,
    *,
    caches: bool = False,
    recorded: TlbCounters | None = None,
    user: TlbCounters | None = None,
) -> Cycles:
    """Cycles of a replayed stream with counters `c` and compiled operations `ops`; `caches`:
    the replay had a cache hierarchy (price references by the level that served them);
    `recorded`: the counters of the recorded transitions' events; `user`: those of the user
    phases' independent loads (the module docstring)."""
    flushing = c.cr3_writes - c.cr3_noflush
    extra_loads = max(0, c.walk_loads - c.walks) + c.host_walk_loads  # a nested walk's EPT loads too
    if caches:
        walk_loads, refs, _ = _cache_terms(c, p)
        translation = c.stlb_hits * p.stlb_hit + c.walks * (p.walk_base - p.l1_hit) + walk_loads
        # the recorded transitions' L1 hits are inside their instructions' cycles
        hidden = _l1_hits(recorded) if recorded is not None else ops.recorded_refs
        refs -= hidden * p.l1_hit
    else:
        translation = c.stlb_hits * p.stlb_hit + c.walks * p.walk_base + extra_loads * p.walk_load_extra
        refs = (ops.user_refs + ops.kernel_refs - ops.recorded_refs) * p.mem_ref
    dram_overlap = 0.0
    if user is not None:  # the user loads overlapped instead of one after another
        serial_tr, overlapped_tr, serial_refs, overlapped_refs = user_overlap(user, p, caches)
        translation += overlapped_tr - serial_tr
        refs += overlapped_refs - serial_refs
        # their DRAM accesses priced by latency shrink alike, so the bandwidth bound compares with that
        dram_overlap = p.dram_latency * (
            (user.llc_misses - user.walk_loads_dram) * (1 - 1 / p.fill_buffers)
            + user.walk_loads_dram * (1 - 1 / p.page_walkers)
        )
    rec_entries = ops.recorded_syscalls + ops.recorded_interrupts + ops.recorded_exceptions
    terms = {
        "translation": translation,
        "cr3": c.cr3_noflush * p.cr3_write_noflush + flushing * p.cr3_write_flush,
        "invalidation": c.invlpg * p.invlpg
        + c.invpcid * p.invpcid
        + (c.cr4_flush_all + c.cr4_flush_pcid) * p.cr4_write
        + ops.asi_enters * p.asi_enter_flush,  # asi: the L1D flush of each asi_enter
        "memory_refs": refs,
        "entry_exit": (ops.syscalls - ops.recorded_syscalls) * p.syscall_sysret
        + (ops.user_entries - rec_entries) * 2 * p.swapgs
        + (ops.interrupts + ops.nmis + ops.exceptions - ops.recorded_interrupts - ops.recorded_exceptions)
        * p.interrupt_entry_exit
        + (ops.interrupts + ops.nmis) * p.vm_exits_per_interrupt * p.vm_exit  # in a guest: each exits
        + ops.asi_faults * p.asi_fault,  # asi: the #PF delivery of each ASI fault
        "kernel_work": ops.body_cycles
        + (ops.exceptions - ops.recorded_exceptions) * p.page_fault
        + (ops.context_switches - ops.recorded_switches) * p.context_switch,
        "recorded_kernel": ops.recorded_instructions * p.kernel_cpi,
        "user_work": ops.work_cycles,
    }
    if caches:
        dram = c.llc_misses * p.dram_latency - dram_overlap
        terms["dram_bandwidth"] = max(0.0, c.dram_reads * 64 / p.dram_bytes_per_cycle - dram)
    return Cycles(terms)


def overhead_percent(cycles: float, baseline: float) -> float:
    """Extra time against `baseline` at the same work, in percent."""
    return 100.0 * (cycles - baseline) / baseline if baseline else 0.0


def rate_per_second(count: float, cycles: float, p: CostParams = SKYLAKE) -> float:
    """`count` events in `cycles` of modelled time at `p.clock_ghz`: events per second."""
    return count * p.clock_ghz * 1e9 / cycles if cycles else 0.0
