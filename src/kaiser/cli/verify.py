"""`kaiser verify`: run the referee (our walker against Unicorn/QEMU) and report agreement."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table

from kaiser.cli.options import SEED_MAX
from kaiser.cli.output import console, emit_json, progress_bar

if TYPE_CHECKING:
    from collections.abc import Callable

    from kaiser.referee import VerifyReport

# CHOSEN: a million cases is about ten minutes at the referee's ~2,000 cases/s; more is a job for
# several seeds, not one command that cannot be stopped short of Ctrl-C.
VERIFY_MAX = 1_000_000


def run_verify(cases: int, seed: int, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """`kaiser.referee.run_verify`, imported when the command runs: the referee loads Unicorn, which
    no other command's start-up should pay for."""
    from kaiser.referee import run_verify as run

    return run(cases, seed, progress)


def _summary(report: VerifyReport) -> Table:
    table = Table(title=f"referee: kaiser walker vs Unicorn (seed {report.seed})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("cases", str(report.cases))
    table.add_row("agreements", str(report.agreements))
    style = "red" if report.disagreements else "green"
    table.add_row("disagreements", f"[{style}]{report.disagreements}[/{style}]")
    table.add_row("known QEMU deviations", str(report.known_qemu_deviations))
    table.add_row("error codes compared", str(report.error_codes_compared))
    table.add_row("time", f"{report.seconds:.2f} s")
    table.add_row("cases/s", f"{report.cases_per_second:.0f}")
    return table


def _outcomes(report: VerifyReport) -> Table:
    table = Table(title="coverage (our walker's outcome)")
    table.add_column("outcome")
    table.add_column("cases", justify="right")
    for label, count in sorted(report.outcomes.items()):
        table.add_row(label, str(count))
    return table


def _detail(detail: dict[str, Any], title: str) -> Panel:
    walk = Table(show_edge=False)
    for col in ("level", "entry at", "before", "decoded", "ours after", "unicorn after"):
        walk.add_column(col)
    for e in detail["walk"]:
        mark = "" if e["ours_after"] == e["unicorn_after"] else "[red]"
        walk.add_row(
            e["level"], e["address"], e["before"], e["before_decoded"], e["ours_after"], f"{mark}{e['unicorn_after']}"
        )
    access, cpu = detail["access"], detail["cpu"]
    lines = [
        f"case #{detail['index']}: kinds={', '.join(detail['kinds']) or detail['deviation']}",
        f"access: {access['op']} at CPL {access['cpl']} of {access['va']} (store value {access['store_value']})",
        "cpu: " + " ".join(f"{k}={v}" for k, v in cpu.items()),
        f"ours:    {json.dumps(detail['ours'])}",
        f"unicorn: {json.dumps(detail['unicorn'])}",
    ]
    if detail["memory_diffs"]:
        lines.append(
            "memory differences: "
            + "; ".join(f"{d['address']}: ours {d['ours']} unicorn {d['unicorn']}" for d in detail["memory_diffs"])
        )
    table = Table.grid()
    table.add_row("\n".join(lines))
    table.add_row(walk)
    return Panel(table, title=title)


def verify_command(
    cases: Annotated[int, typer.Option("--cases", help="Number of random cases.", min=1, max=VERIFY_MAX)] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed; a seed fixes every case.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON, no progress bar.")] = False,
) -> None:
    """Differential test of the page walker against Unicorn (QEMU's x86 MMU) on random page tables."""
    from kaiser.referee import KNOWN_DEVIATIONS

    if json_out:
        report = run_verify(cases, seed)
        emit_json(report.to_json())
    else:
        with progress_bar(label="referee") as bar:
            task = bar.add_task("cases", total=cases)
            report = run_verify(cases, seed, lambda done, total: bar.update(task, completed=done))
        console.print(_summary(report))
        console.print(_outcomes(report))
        for kind, count in sorted(report.deviations_by_kind.items()):
            console.print(f"[yellow]known QEMU deviation[/yellow] {kind} ({count}): {KNOWN_DEVIATIONS[kind]}")
        if report.first_disagreement is not None:
            kinds = ", ".join(f"{k}={n}" for k, n in sorted(report.disagreements_by_kind.items()))
            console.print(f"[red]disagreements by kind:[/red] {kinds}")
            console.print(_detail(report.first_disagreement, "first disagreement"))
    if report.disagreements:
        raise typer.Exit(code=1)
