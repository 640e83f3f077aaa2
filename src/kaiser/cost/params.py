"""Cycle costs of the events the model counts, in one table, each with its source.

Sources are rows of `shared/facts/performance.md` (§ numbers below). Where a fact gives a range or
only an order of magnitude, the value chosen and the reason are stated; `CostParams` lets every
value be overridden, so a user can price the same counts for another core.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class CostParams:
    """Cycles per counted event (Skylake-class core unless said)."""

    # Translation hits and misses.
    l1_tlb_hit: float = 0.0  # an L1 TLB hit is hidden in the load pipeline (Intel Opt. Manual; perf.md §1)
    stlb_hit: float = 9.0  # pmu-tools Mem_STLB_Hit_Cost for SKL/SKX (perf.md §1)
    walk_load_cached: float = 4.0  # a paging-structure load that hits L1D: L1D latency 4 cycles (perf.md §1)
    walk_base: float = 9.0  # a walk whose upper levels hit the paging-structure caches: ~9-10 cycles (perf.md §1)
    walk_load_uncached: float = 30.0  # a walk load missing the PSCs: Sniper's 30-cycle cold walk (perf.md §1)
    # Control-register and invalidation instructions.
    cr3_write_flush: float = 200.0  # a CR3 write that flushes: serializing, "on the order of a hundred
    # cycles" (pti.rst, perf.md §2); the flushing form is taken at the INVLPG-class cost (~200, Hansen 2017)
    cr3_write_noflush: float = 100.0  # CR3 write with NOFLUSH: still serializing (pti.rst, perf.md §2)
    invlpg: float = 200.0  # INVLPG ~200 cycles (D. Hansen, linux-mm 5 Dec 2017; perf.md §2)
    invpcid: float = 550.0  # INVLPG+INVPCID ~550 cycles for the pair (same source); INVPCID alone ~350
    # Entry and exit.
    syscall_sysret: float = 70.0  # SYSCALL + SYSRET round trip of a null syscall without PTI: Garloff's
    # getppid() at 140 cycles (perf.md §3) less the kernel's own work; chosen, see docs/cost.md
    swapgs: float = 4.0  # two SWAPGS per round trip are in the 140-cycle baseline; named for completeness
    interrupt_entry_exit: float = 200.0  # exception/interrupt delivery + IRET, order of magnitude (no fact)
    # Memory references that hit.
    l1d_hit: float = 0.0  # data loads are not priced beyond translation: isolation does not change them

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
