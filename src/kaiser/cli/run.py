"""`kaiser run`: real x86-64 entry code on the model's tables, executed by Unicorn's MMU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from kaiser.cli.machine import PtiOption, VendorOption, VsyscallOption
from kaiser.cli.options import SEED_MAX
from kaiser.cli.output import Col, console, emit_json, fail, print_table

if TYPE_CHECKING:
    from kaiser.realcode import RunReport
    from kaiser.realcode.machine import Cr3Write
    from kaiser.referee.unicorn_cpu import Trap


def _fault(fault: Trap | None, live: str | None) -> str:
    if fault is None:
        return "-"
    return f"#{fault.vector} CR2={fault.cr2:#x} ({live or '?'} CR3) at {fault.where}"


def _trace(writes: list[Cr3Write]) -> str:
    parts = [f"{w.value:#x} {'user' if w.user_pgd else 'kern'}{' NOFLUSH' if w.value >> 63 else ''}" for w in writes]
    return "\n".join(parts) if parts else "(none: no CR3 switch)"


def _trace_summary(writes: list[Cr3Write]) -> str:
    """CR3 writes as counts, for the many-variant table (one variant shows the whole trace)."""
    if not writes:
        return "none"
    noflush = sum(1 for w in writes if w.value >> 63)
    return f"{len(writes)} ({noflush} NOFLUSH)"


def _print_table(reports: list[RunReport], full_trace: bool) -> None:
    """One row per variant; on a terminal too narrow for the table, one block per variant."""
    rows: list[list[str]] = []
    for rep in reports:
        data = rep.to_json()
        out, ld = rep.outcome, rep.loaded
        calls = f"{out.sysrets}/{len(ld.calls)} back, {out.passed} ok"
        if rep.broken and rep.entry_outcome is not None:
            eo = rep.entry_outcome
            load = "boot exit: " + _fault(out.fault, data["kernel_read"]["live_cr3"])
            load += "\nSYSCALL: " + _fault(eo.fault, data["entry_fetch"]["live_cr3"])
            present = "-"
        else:
            load = _fault(out.fault, data["kernel_read"]["live_cr3"])
            present = "yes (U/S stops it)" if out.probe_value is not None else "no (not mapped)"
        verdict = "[green]as designed[/green]" if rep.ok else "[red]" + "; ".join(rep.problems) + "[/red]"
        rows.append([
            rep.variant,
            f"{ld.variant.entry.value}\n{ld.entry_va:#x}",
            calls,
            load,
            present,
            _trace(out.cr3_writes) if full_trace else _trace_summary(out.cr3_writes),
            verdict,
        ])  # fmt: skip
    cols = ("entry (LSTAR)", "system calls", "user's kernel load", "in live tables?", "CR3 writes", "verdict")
    print_table(
        [Col("variant"), *(Col(c, whole=c == "entry (LSTAR)") for c in cols)],
        rows,
        title="kaiser run: real entry code on Unicorn's MMU over our tables",
    )


def run_command(
    variant: Annotated[
        str, typer.Option("--variant", "-v", help="Variant name, 'linux-no-entry-text' (debug), or 'all'.")
    ] = "linux",
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="PCID on (NOFLUSH CR3 switches) or off.")] = True,
    la57: Annotated[bool, typer.Option("--la57", help="5-level paging.")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="KASLR and kernel-data seed.")] = 0,
    pti: PtiOption = "auto",
    vendor: VendorOption = "intel",
    vsyscall: VsyscallOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Run a small real kernel and a user program on Unicorn over the model's page tables.

    The kernel's SYSCALL entry and exit switch CR3 as the variant does; the report shows the system
    calls, a user load of kernel memory, and the CR3 values written."""
    from kaiser.linux.variants import UnknownVariant
    from kaiser.realcode import BuildError, run_names, run_variant  # Unicorn: loaded when run

    try:
        names = run_names(variant)
        reports = [
            run_variant(name, pcid=pcid, la57=la57, seed=seed, pti=pti, vendor=vendor, vsyscall=vsyscall)
            for name in names
        ]
    except UnknownVariant as exc:
        fail(f"--variant: {exc}")
    except BuildError as exc:
        fail(str(exc), code=1)
    if json_out:
        emit_json({"reports": [r.to_json() for r in reports]})
    else:
        _print_table(reports, full_trace=len(reports) == 1)
        console.print(
            "Unicorn executes every instruction and every translation; our CPU model performs SYSCALL "
            "(RCX, R11, FMASK, STAR CS/SS, LSTAR) and reads exceptions from UC_HOOK_INTR (vector, CR2, CR3). "
            "See docs/realcode.md.",
            style="dim",
        )
    if not all(r.ok for r in reports):
        raise typer.Exit(code=1)
