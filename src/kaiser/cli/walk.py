"""`kaiser walk`: translate one address on the sample space and show every entry on the way."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kaiser.cli.output import console, emit_json, parse_int
from kaiser.sample import build_sample
from kaiser.x86.bits import CR4, PFEC, RFLAGS, describe_entry
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import format_size
from kaiser.x86.rights import Op
from kaiser.x86.walker import Fault, Translation, translate


def walk_result_json(result: Translation | Fault) -> dict[str, object]:
    """The JSON form of a walk."""
    entries = [
        {
            "level": e.level.entry,
            "table": hex(e.table),
            "index": e.index,
            "value": hex(e.value),
            "flags": describe_entry(e.value),
        }
        for e in result.entries
    ]
    if isinstance(result, Translation):
        return {
            "ok": True,
            "va": hex(result.va),
            "pa": hex(result.pa),
            "page_size": result.page_size,
            "global": result.global_,
            "user": result.rights.user,
            "writable": result.rights.writable,
            "nx": result.rights.nx,
            "entries": entries,
        }
    return {
        "ok": False,
        "vector": result.vector,
        "cr2": None if result.cr2 is None else hex(result.cr2),
        "error_code": result.error_code,
        "error_bits": str(PFEC(result.error_code).name or ""),
        "reason": result.reason,
        "entries": entries,
    }


def render_walk(result: Translation | Fault, title: str) -> Table:
    """A rich table of the entries a walk read."""
    table = Table(title=title, title_justify="left")
    for col in ("level", "table", "index", "entry", "flags"):
        table.add_column(col, no_wrap=col != "flags")
    for e in result.entries:
        table.add_row(e.level.entry, f"{e.table:#x}", str(e.index), f"{e.value:#018x}", describe_entry(e.value))
    return table


def walk_command(
    address: Annotated[str, typer.Argument(help="Linear address, e.g. 0x400000.")],
    op: Annotated[str, typer.Option("--op", help="read, write or fetch.")] = "read",
    user: Annotated[bool, typer.Option("--user/--kernel", help="Access from CPL 3 or CPL 0.")] = False,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    smap: Annotated[bool, typer.Option(help="Set CR4.SMAP.")] = True,
    smep: Annotated[bool, typer.Option(help="Set CR4.SMEP.")] = True,
    ac: Annotated[bool, typer.Option(help="Set RFLAGS.AC (lets the kernel touch user pages under SMAP).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Translate ADDRESS on the built-in sample address space, showing each paging entry."""
    from kaiser.cli.output import fail

    va = parse_int(address, "address")
    try:
        access = Op(op)
    except ValueError:
        fail(f"--op {op!r} is not one of read, write, fetch")
    mem, pt, _ = build_sample(la57)
    cr4 = CR4.PAE | CR4.PGE | (CR4.SMAP if smap else 0) | (CR4.SMEP if smep else 0) | (CR4.LA57 if la57 else 0)
    state = CpuState(cr3=pt.cr3(), cr4=int(cr4), rflags=0x2 | (RFLAGS.AC if ac else 0), cpl=3 if user else 0)
    if not 0 <= va < 1 << 64:
        fail(f"address {address} is not a 64-bit value")
    result = translate(mem, state, va, access)
    if json_out:
        emit_json(walk_result_json(result))
        return
    who = "user (CPL 3)" if user else "kernel (CPL 0)"
    console.print(render_walk(result, f"{access.value} of {va:#018x} by {who}"))
    if isinstance(result, Translation):
        console.print(
            f"[green]ok[/]: physical {result.pa:#x}, {format_size(result.page_size)} page"
            f"{', global' if result.global_ else ''}"
        )
    else:
        console.print(f"[red]fault[/]: {result.describe()}")
