"""`kaiser run` as an API: boot a variant, load the realcode image, run it on Unicorn, judge it.

Expected per variant (what the tests and the CLI check):

* every registry variant: all system calls come back (SYSRETQ) with the expected results, and the
  user's load from the direct-map alias of a kernel word faults (#PF at CPL 3, CR2 = that address);
* isolating variants: that fault happens with the *user* CR3 live, and a CPL-0 probe with that CR3
  faults too (the address is not in the user tables at all); the CR3 trace alternates user PGD
  (bit 12 set) on every exit and kernel PGD (bit 12 clear) on every entry;
* `nopti`: the load faults as well -- on U/S=0, not on absence: the CPL-0 probe reads the kernel
  word through the same CR3, which is what a Meltdown-vulnerable core forwards transiently;
* `linux-no-entry-text` (debug): the boot's first exit faults on the first fetch after its CR3
  switch; with that switch deferred to the IRETQ, the user's first SYSCALL faults on the fetch of
  entry_SYSCALL_64 itself (#PF, CR2 = MSR_LSTAR, user CR3 live), caught by Unicorn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kaiser.linux.variants import VARIANTS, UnknownVariant
from kaiser.realcode.loader import BROKEN_VARIANT, Loaded, boot, variant_names
from kaiser.realcode.machine import PF_VECTOR, Outcome, RealMachine
from kaiser.referee.unicorn_cpu import Trap


@dataclass
class RunReport:
    """One variant's run: what Unicorn observed and whether it is what the design promises."""

    loaded: Loaded
    outcome: Outcome
    entry_outcome: Outcome | None = None  # broken variant, phase 2 (deferred boot-exit CR3 switch)
    problems: list[str] = field(default_factory=list)

    @property
    def variant(self) -> str:
        return self.loaded.variant.name

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def broken(self) -> bool:
        return self.variant == BROKEN_VARIANT

    def to_json(self) -> dict[str, Any]:
        ld, out = self.loaded, self.outcome
        data: dict[str, Any] = {
            "variant": self.variant,
            "isolating": ld.variant.isolating,
            "pcid": ld.kernel.config.pcid,
            "la57": ld.kernel.config.la57,
            "seed": ld.kernel.config.seed,
            "entry": ld.variant.entry.value,
            "entry_va": f"{ld.entry_va:#018x}",
            "kernel_cr3": f"{ld.kernel_cr3:#018x}",
            "user_cr3": None if ld.user_cr3 is None else f"{ld.user_cr3:#018x}",
            "syscalls": {
                "expected": len(ld.calls),
                "entered": out.syscalls_entered,
                "completed": out.sysrets,
                "passed": out.passed,
                "results": [r.to_json() for r in out.results],
            },
            "kernel_read": {
                "target": f"{ld.kernel_target:#018x}",
                "faulted": _user_read_fault(self) is not None,
                "fault": None if out.fault is None else out.fault.to_json(),
                "live_cr3": _which_cr3(ld, out.fault),
                "leaked": None if out.leaked is None else f"{out.leaked:#x}",
                "present_in_live_tables": out.probe_value is not None,
                "probe_fault": None if out.probe is None else out.probe.to_json(),
            },
            "cr3_writes": [w.to_json() for w in out.cr3_writes],
            "error": out.error,
            "ok": self.ok,
            "problems": self.problems,
            "seconds": round(out.seconds + (self.entry_outcome.seconds if self.entry_outcome else 0), 3),
        }
        if self.entry_outcome is not None:
            eo = self.entry_outcome
            data["entry_fetch"] = {
                "note": "boot exit's CR3 switch deferred to its IRETQ so the user program can run",
                "syscalls_entered": eo.syscalls_entered,
                "fault": None if eo.fault is None else eo.fault.to_json(),
                "live_cr3": _which_cr3(ld, eo.fault),
            }
        return data


def _which_cr3(ld: Loaded, fault: Trap | None) -> str | None:
    if fault is None:
        return None
    if ld.user_cr3 is not None and fault.cr3 == ld.user_cr3:
        return "user"
    return "kernel" if fault.cr3 == ld.kernel_cr3 else "other"


def _user_read_fault(report: RunReport) -> Trap | None:
    fault = report.outcome.fault
    if fault is None or fault.vector != PF_VECTOR or fault.cpl != 3:
        return None
    return fault


def _judge(report: RunReport) -> None:
    ld, out, problems = report.loaded, report.outcome, report.problems
    if out.error:
        problems.append(f"emulation error: {out.error}")
    if report.broken:
        _judge_broken(report)
        return
    if out.sysrets != len(ld.calls) or out.passed != len(ld.calls) or not all(r.ok for r in out.results):
        problems.append(f"system calls: {out.sysrets}/{len(ld.calls)} came back, {out.passed} matched")
    fault = _user_read_fault(report)
    if fault is None or fault.where != "user_kernel_read" or fault.cr2 != ld.kernel_target:
        problems.append(f"the user's kernel load did not #PF at {ld.kernel_target:#x} (got {out.fault})")
    writes = out.cr3_writes
    if ld.variant.isolating:
        if fault is not None and fault.cr3 != ld.user_cr3:
            problems.append("the kernel load faulted without the user CR3 live")
        if out.probe_value is not None:
            problems.append("the kernel word is present in the user tables (CPL-0 probe read it)")
        expected = [True] + [False, True] * out.sysrets  # boot exit, then entry/exit per system call
        if [w.user_pgd for w in writes] != expected:
            problems.append(f"CR3 trace is not user, (kernel, user) x {out.sysrets}: {[w.user_pgd for w in writes]}")
    else:
        if writes:
            problems.append(f"nopti wrote CR3 {len(writes)} times")
        if out.probe_value != ld.kdata[0]:
            problems.append("nopti: the CPL-0 probe did not read the kernel word through the process's CR3")


def _judge_broken(report: RunReport) -> None:
    ld, out, problems = report.loaded, report.outcome, report.problems
    exit_fault = out.fault
    if exit_fault is None or exit_fault.vector != PF_VECTOR or exit_fault.cpl != 0 or exit_fault.cr2 != exit_fault.rip:
        problems.append(f"boot exit: expected a CPL-0 #PF on an instruction fetch, got {exit_fault}")
    eo = report.entry_outcome
    fault = None if eo is None else eo.fault
    if fault is None or fault.vector != PF_VECTOR or fault.cr2 != ld.entry_va or fault.rip != ld.entry_va:
        problems.append(f"SYSCALL: expected #PF with CR2 = entry {ld.entry_va:#x}, got {fault}")
    elif fault.cr3 != ld.user_cr3:
        problems.append("SYSCALL entry fault without the user CR3 live")


def run_variant(
    name: str, *, pcid: bool = True, la57: bool = False, seed: int = 0, kaslr: bool = True, **machine: Any
) -> RunReport:
    """Boot `name`, run the realcode program on Unicorn and judge what happened (`machine`: pti,
    vendor, vsyscall)."""
    loaded = boot(name, pcid=pcid, la57=la57, seed=seed, kaslr=kaslr, **machine)
    report = RunReport(loaded, RealMachine(loaded).run())
    if name == BROKEN_VARIANT:
        again = boot(name, pcid=pcid, la57=la57, seed=seed, kaslr=kaslr, **machine)
        report.entry_outcome = RealMachine(again, defer_boot_exit_cr3=True).run()
    _judge(report)
    return report


# ASI's kernel stays on the ASI tables at entry (kaiser.linux.asi): the PTI entry code does not apply
_NO_REAL_ENTRY = frozenset(name for name, v in VARIANTS.items() if v.asi)


def run_names(variant: str) -> list[str]:
    """`all` -> every registry variant and the broken debug one; else the one name (validated)."""
    if variant == "all":
        return [n for n in variant_names() if n not in _NO_REAL_ENTRY]
    if variant in _NO_REAL_ENTRY:
        raise UnknownVariant(
            f"{variant!r} has no real entry code here: kaiser run's is PTI's CR3 switch, and asi's entry "
            "switches nothing (kaiser bench --variant asi prices its transitions)"
        )
    if variant not in variant_names():
        raise UnknownVariant(f"unknown variant {variant!r}; known: {', '.join(variant_names())}, all")
    return [variant]
