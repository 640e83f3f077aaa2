"""Cycle costs of the events the model counts, in one table, each with its source.

Sources are rows of `shared/facts/performance.md` (§ numbers below). Three kinds of value:
* CITED: taken from a published figure as is.
* FIT: set so that one published measurement comes out of the model (the docs then do not count
  that measurement as a prediction); the measurement is named.
* CHOSEN: no published figure exists in the facts; the value and the reason are stated, and
  docs/cost.md says which outputs depend on it.
`CostParams` lets every value be overridden (`with_overrides`), to price the same counts for
another core.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# Source of every parameter, for tables (docs/cost.md, `kaiser bench --json`).
SOURCES: dict[str, str] = {
    "clock_ghz": "CHOSEN: nominal clock to turn cycles into seconds (Skylake-class desktop/server parts run ~3 GHz)",
    "mem_ref": "CITED: L1D load latency 4 cycles, Intel Optimization Manual (perf.md §1); the model has no data "
    "caches, so every reference is priced as an L1D hit, in every variant alike",
    "stlb_hit": "CITED: 9 cycles, pmu-tools Mem_STLB_Hit_Cost for SKL/SKX (perf.md §1)",
    "walk_base": "CITED: ~9-10 cycles for a walk with hot paging-structure caches, i.e. one load (perf.md §1); "
    "10 taken",
    "walk_load_extra": "CITED+derived: Sniper's 30-cycle cold walk (perf.md §1) = 10 + 3 extra loads x ~7 cycles",
    "cr3_write_noflush": "FIT: Garloff getppid() 140 -> 580 cycles with PTI+PCID (perf.md §3) on linux-4.15, "
    "two NOFLUSH writes per "
    "call; consistent with pti.rst 'on the order of a hundred cycles' (perf.md §2)",
    "cr3_write_flush": "FIT: Garloff getppid() 900 cycles with PTI, no PCID (perf.md §3), after the modelled refill "
    "walks are charged; the flushing write itself",
    "invlpg": "CITED: ~200 cycles, D. Hansen, linux-mm 5 Dec 2017 (perf.md §2)",
    "invpcid": "CITED: INVLPG+INVPCID ~550 cycles, so ~350 for the INVPCID (same source)",
    "cr4_write": "CHOSEN: a CR4.PGE toggle (global flush fallback) priced like a flushing CR3 write",
    "syscall_sysret": "FIT with mem_ref: SYSCALL+SYSRET and the entry/exit instructions the model does not "
    "list, so that nopti getppid() costs Garloff's 140 cycles (perf.md §3)",
    "swapgs": "CHOSEN: two per kernel entry from user; part of every variant's baseline",
    "interrupt_entry_exit": "CHOSEN: IDT delivery + IRETQ, no figure in the facts; same in every variant",
    "page_fault": "CHOSEN: #PF handler work besides its memory references (allocation, zeroing a page); no figure "
    "in the facts; same in every variant",
    "context_switch": "CHOSEN: schedule()/__switch_to work besides memory references and CR3; no figure in the "
    "facts; same in every variant",
}


@dataclass(frozen=True)
class CostParams:
    """Cycles per counted event (Skylake-class core). See `SOURCES` for where each comes from."""

    clock_ghz: float = 3.0
    # Memory references and translation.
    mem_ref: float = 4.0
    stlb_hit: float = 9.0
    walk_base: float = 10.0  # a walk that reads one paging-structure entry
    walk_load_extra: float = 7.0  # each further entry it reads (PSC misses)
    # Control-register and invalidation instructions.
    cr3_write_noflush: float = 210.0
    cr3_write_flush: float = 258.0
    invlpg: float = 200.0
    invpcid: float = 350.0
    cr4_write: float = 230.0
    # Entry, exit and kernel work that is the same in every variant.
    syscall_sysret: float = 71.0
    swapgs: float = 4.0
    interrupt_entry_exit: float = 200.0
    page_fault: float = 1000.0
    context_switch: float = 1500.0

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
