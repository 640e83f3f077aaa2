"""Counts to cycles: the cost model.

Cycles are a sum of named terms, each a count times a parameter of `kaiser.cost.params`:
translation (STLB hits, walks and the paging-structure entries they read), CR3 writes with and
without a flush, INVLPG/INVPCID/CR4 invalidations, every memory reference at L1D cost, and the
per-operation work that is the same in every variant (SYSCALL/SYSRET, SWAPGS, interrupt
delivery, page-fault and scheduler work, each system call's own body, the user's computation).
An L1 TLB hit costs nothing beyond the reference itself (hidden in the load pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser.cost.params import SKYLAKE, CostParams
from kaiser.linux.entry import OpCounts
from kaiser.x86.tlb import TlbCounters


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


def price(c: TlbCounters, ops: OpCounts, p: CostParams = SKYLAKE) -> Cycles:
    """Cycles of a replayed stream with counters `c` and compiled operations `ops`."""
    flushing = c.cr3_writes - c.cr3_noflush
    extra_loads = max(0, c.walk_loads - c.walks)
    terms = {
        "translation": c.stlb_hits * p.stlb_hit + c.walks * p.walk_base + extra_loads * p.walk_load_extra,
        "cr3": c.cr3_noflush * p.cr3_write_noflush + flushing * p.cr3_write_flush,
        "invalidation": c.invlpg * p.invlpg
        + c.invpcid * p.invpcid
        + (c.cr4_flush_all + c.cr4_flush_pcid) * p.cr4_write,
        "memory_refs": (ops.user_refs + ops.kernel_refs) * p.mem_ref,
        "entry_exit": ops.syscalls * p.syscall_sysret
        + ops.user_entries * 2 * p.swapgs
        + (ops.interrupts + ops.nmis + ops.exceptions) * p.interrupt_entry_exit,
        "kernel_work": ops.body_cycles + ops.exceptions * p.page_fault + ops.context_switches * p.context_switch,
        "user_work": ops.work_cycles,
    }
    return Cycles(terms)


def overhead_percent(cycles: float, baseline: float) -> float:
    """Extra time against `baseline` at the same work, in percent."""
    return 100.0 * (cycles - baseline) / baseline if baseline else 0.0


def rate_per_second(count: float, cycles: float, p: CostParams = SKYLAKE) -> float:
    """`count` events in `cycles` of modelled time at `p.clock_ghz`: events per second."""
    return count * p.clock_ghz * 1e9 / cycles if cycles else 0.0
