"""`kaiser diff A B`: what changed between two page-table dumps, region by region.

Both files are ptdump text (ours from `kaiser dump`, or a real machine's
/sys/kernel/debug/page_tables/*), read by `kaiser.linux.ptdump_parse.parse_ptdump_file`. The changes
come from `kaiser.linux.ptquery.diff_dumps`: ranges that appeared in B, vanished from A, changed
rights or only changed page size.

Exit status: 0 when the dumps map the same ranges with the same flags, 1 when they differ, 2 for
bad input -- so ``kaiser diff before.txt after.txt`` can gate a CI job.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kaiser.cli.output import Col, console, emit_json, print_table

if TYPE_CHECKING:  # the ptdump readers are imported when the command runs, not for its --help
    from kaiser.linux.ptquery import DumpDiff


def diff_json(d: DumpDiff) -> dict[str, object]:
    """The JSON form of a diff."""
    return {
        "a": d.a,
        "b": d.b,
        "equal": d.equal,
        "skipped_lines": {"a": d.skipped[0], "b": d.skipped[1]},
        "regions": [
            {
                "region": region,
                "changes": [
                    {
                        "kind": c.kind,
                        "start": f"0x{c.start:016x}",
                        "end": f"{c.end:#018x}",  # exclusive: 0x10000000000000000 at the top
                        "size": c.size,
                        "before": c.before or None,
                        "after": c.after or None,
                    }
                    for c in changes
                ],
            }
            for region, changes in d.by_region().items()
        ],
        "exit_status": d.exit_status,
    }


def render_diff(d: DumpDiff) -> None:
    """One table per region that changed, then a one-line verdict."""
    from kaiser.linux.ptquery import size_text

    for region, changes in d.by_region().items():
        print_table(
            [
                Col("change"),
                Col("range"),
                Col("size", justify="right"),
                Col("before", whole=False),
                Col("after", whole=False),
            ],
            [
                [
                    c.kind,
                    f"0x{c.start:016x}-0x{c.end & ((1 << 64) - 1):016x}",
                    size_text(c.size),
                    c.before or "-",
                    c.after or "-",
                ]
                for c in changes
            ],
            title=f"[bold]{region}[/]",
        )
    if d.skipped != (0, 0):
        console.print(
            f"[dim]not compared: lines the dumps skip ({d.skipped[0]:,} in A, {d.skipped[1]:,} in B)[/]",
            highlight=False,
        )
    verdict = "[bold green]same[/]" if d.equal else "[bold yellow]differ[/]"
    console.print(f"{verdict}: {d.describe()}", highlight=False)


def diff_command(
    a: Annotated[Path, typer.Argument(help="The first ptdump (before).")],
    b: Annotated[Path, typer.Argument(help="The second ptdump (after).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List, region by region, what appeared, vanished or changed rights between two ptdumps.

    Exit status 0 when they are equal, 1 when they differ, 2 for bad input."""
    from kaiser.linux.ptdump_parse import parse_ptdump_file
    from kaiser.linux.ptquery import diff_dumps

    result = diff_dumps(parse_ptdump_file(a), parse_ptdump_file(b), a_name=str(a), b_name=str(b))
    if json_out:
        emit_json(diff_json(result))
    else:
        render_diff(result)
    raise typer.Exit(result.exit_status)
