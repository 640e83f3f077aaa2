"""`kaiser bench ...`: what isolation costs. `memory` prices page-table memory per variant."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kaiser.cli.output import console, emit_json, fail
from kaiser.linux.memory import frames_kib, measure
from kaiser.linux.variants import VARIANTS, UnknownVariant, get_variant

bench_app = typer.Typer(
    help="Price isolation: page-table memory (and, later, TLB and cycle costs).", no_args_is_help=True
)

VariantOpt = Annotated[
    list[str] | None,
    typer.Option("--variant", "-v", help="Variant to include (repeatable); all by default."),
]


def chosen_variants(names: list[str] | None) -> list[str]:
    """The variants named on the command line, validated; all of them when none is named."""
    if not names:
        return list(VARIANTS)
    try:
        return [get_variant(n).name for n in names]
    except UnknownVariant as exc:
        fail(str(exc))


@bench_app.command("memory")
def memory_command(
    variant: VariantOpt = None,
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="CPU with PCID.")] = True,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Page-table memory per process and shared, per variant, for a typical ~22 MiB process."""
    rows = [measure(name, pcid=pcid, la57=la57) for name in chosen_variants(variant)]
    if json_out:
        emit_json([r.as_dict() for r in rows])
        return
    table = Table(
        title=f"page-table memory, one typical process ({rows[0].user_footprint >> 20} MiB mapped), "
        f"{'5' if la57 else '4'}-level, PCID {'on' if pcid else 'off'}",
        title_justify="left",
    )
    for col in ("variant", "per process", "PTI part", "full shadow", "kernel (shared)", "PTI (shared)"):
        table.add_column(col, justify="right" if col != "variant" else "left", no_wrap=col == "variant")
    for r in rows:
        table.add_row(
            r.variant,
            f"{frames_kib(r.process_tables)} KiB",
            f"+{frames_kib(r.process_pti_extra)} KiB",
            f"+{frames_kib(r.full_duplication_extra)} KiB" if r.full_duplication_extra else "-",
            f"{frames_kib(r.shared_kernel_tables)} KiB",
            f"{frames_kib(r.shared_pti_tables)} KiB",
        )
    console.print(table)
    console.print(
        "per process: the process's PGD(s) and user page tables; PTI part: what isolation adds to that "
        "(top-level-only shadowing: one 4 KiB PGD); full shadow: what duplicating every level of the "
        "user half would add instead (the review's 'completely duplicated?' question); shared: init_mm's "
        "kernel tables and the user tables' kernel half, paid once per machine."
    )
