"""`kaiser demo`: the main job on built-in defaults, a tour of what exists."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.rule import Rule
from rich.table import Table

from kaiser.cli.output import console
from kaiser.sample import build_sample
from kaiser.x86.bits import CR4, RFLAGS
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import format_size
from kaiser.x86.rights import Op
from kaiser.x86.walker import Translation, translate

# (what, address, op, cpl, rflags.AC): accesses that show each rule at work.
TOUR = (
    ("user reads its text", 0x400000, Op.READ, 3, False),
    ("user fetches its text", 0x400010, Op.FETCH, 3, False),
    ("user writes its text", 0x400000, Op.WRITE, 3, False),
    ("user executes its stack", 0x7FFFFFFFE000, Op.FETCH, 3, False),
    ("user reads the direct map", 0xFFFF888000001000, Op.READ, 3, False),
    ("kernel reads the direct map", 0xFFFF888000001000, Op.READ, 0, False),
    ("kernel writes user data, SMAP", 0x600000, Op.WRITE, 0, False),
    ("kernel writes user data, SMAP + AC", 0x600000, Op.WRITE, 0, True),
    ("kernel executes user text, SMEP", 0x400000, Op.FETCH, 0, False),
    ("kernel writes its text, CR0.WP", 0xFFFFFFFF81000000, Op.WRITE, 0, False),
    ("non-canonical address", 0x0000800000000000, Op.READ, 0, False),
)


def demo_command(
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    verify_cases: Annotated[int, typer.Option("--verify-cases", help="Referee cases to run (0 skips).")] = 300,
) -> None:
    """Build a small address space, walk it, dump it, and referee the walker against Unicorn."""
    console.print(Rule("1. a small address space in sparse physical memory"))
    mem, pt, regions = build_sample(la57)
    table = Table("region", "virtual", "size", "flags")
    for r in regions:
        from kaiser.x86.bits import PTE, describe

        table.add_row(r.name, f"{r.va:#018x}", f"{r.size >> 10:,} KiB", describe(PTE, r.flags | PTE.P))
    console.print(table)
    stats = mem.stats()
    console.print(
        f"{pt.mode.name} paging; page-table frames: {stats.page_table}, data frames: {stats.data}; "
        f"host memory for {mem.size >> 30} GiB of RAM: {mem.frames.nbytes >> 10:,} KiB"
    )

    console.print(Rule("2. walks (SDM Vol. 3A §4.5-4.7)"))
    walks = Table("access", "address", "outcome")
    base_cr4 = CR4.PAE | CR4.PGE | CR4.SMEP | CR4.SMAP | (CR4.LA57 if la57 else 0)
    for what, va, op, cpl, ac in TOUR:
        if la57 and va >> 47 == 0x1FFFF:
            continue  # the sample's 4-level kernel addresses are not where the 5-level layout puts them
        state = CpuState(cr3=pt.cr3(), cr4=int(base_cr4), cpl=cpl, rflags=0x2 | (RFLAGS.AC if ac else 0))
        result = translate(mem, state, va, op)
        if isinstance(result, Translation):
            outcome = f"[green]{result.pa:#x}[/] ({format_size(result.page_size)} page)"
        else:
            outcome = f"[red]{result.describe()}[/]"
        walks.add_row(what, f"{va:#018x}", outcome)
    console.print(walks)
    console.print("Try one yourself: [bold]kaiser walk 0xffff888000001000 --user[/]")
    _dump_and_verify(pt, verify_cases)


def _dump_and_verify(pt: object, verify_cases: int) -> None:
    """Parts of the tour that later layers provide."""
