"""The referee: a differential test of our page walker against Unicorn (QEMU's TCG x86 MMU).

`run_verify(cases, seed)` builds random 4- and 5-level page tables, runs a real load, store or
instruction fetch on Unicorn at CPL 0 or 3, and compares faults, CR2, values and the A/D bits of
every entry on the walk with `kaiser.x86.walker.translate`. See docs/referee.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaiser.lazy import lazy_exports

if TYPE_CHECKING:
    from kaiser.referee.cases import Case, Probabilities, generate_case
    from kaiser.referee.machine import Observation, UnicornMachine
    from kaiser.referee.verify import KNOWN_DEVIATIONS, CaseResult, VerifyReport, run_case, run_verify


__all__ = [
    "KNOWN_DEVIATIONS",
    "Case",
    "CaseResult",
    "Observation",
    "Probabilities",
    "UnicornMachine",
    "VerifyReport",
    "generate_case",
    "run_case",
    "run_verify",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
