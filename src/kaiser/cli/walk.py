"""`kaiser walk`: translate one address and show every paging entry on the way.

Without ``--variant`` it walks the built-in sample space (`kaiser.sample`, the demo's subject).
With ``--variant V`` it boots that kernel with one process exactly as `kaiser dump` does (same
``--seed``/``--kaslr``/``--pcid``/``--la57`` defaults, so an address read off ``kaiser dump -v V``
walks here) and walks the process's user PGD or kernel PGD (``--pgd``; default: the one the CPU has
loaded at that CPL -- user for ``--user``, kernel for ``--kernel``), with that kernel's CR3 (PCID
bits included) and CR4. A non-canonical address is an input error (exit 2): a real CPU raises #GP
for it before any walk (SDM Vol. 3A §3.3.7.1), so there is no walk to show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from kaiser.choices import PGDS
from kaiser.cli.output import Col, console, emit_json, fail, parse_int, print_table
from kaiser.x86.bits import PFEC, describe_entry
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL, format_size
from kaiser.x86.rights import Op

if TYPE_CHECKING:
    from kaiser.x86.walker import Fault, Translation


def walk_result_json(result: Translation | Fault) -> dict[str, object]:
    """The JSON form of a walk."""
    from kaiser.x86.walker import Translation

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


def render_walk(result: Translation | Fault, title: str) -> None:
    """Print the entries a walk read, fitted to the terminal (`output.print_table`)."""
    print_table(
        [Col("level"), Col("table"), Col("index", justify="right"), Col("entry"), Col("flags", whole=False)],
        [
            [e.level.entry, f"{e.table:#x}", str(e.index), f"{e.value:#018x}", describe_entry(e.value)]
            for e in result.entries
        ],
        title=title,
    )


def walk_command(
    address: Annotated[str, typer.Argument(help="Linear address, e.g. 0x400000.")],
    op: Annotated[str, typer.Option("--op", help="read, write or fetch.")] = "read",
    user: Annotated[bool, typer.Option("--user/--kernel", help="Access from CPL 3 or CPL 0.")] = False,
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant", "-v", help="Walk this variant's booted kernel (as kaiser dump boots it), not the sample."
        ),
    ] = None,
    pgd: Annotated[
        str | None,
        typer.Option("--pgd", help="With --variant: user or kernel PGD. Default: the one loaded at that CPL."),
    ] = None,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="With --variant: CPU with PCID.")] = True,
    kaslr: Annotated[bool, typer.Option("--kaslr/--no-kaslr", help="With --variant: randomize the layout.")] = True,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="With --variant: boot seed.")] = 0,
    smap: Annotated[bool, typer.Option(help="Set CR4.SMAP.")] = True,
    smep: Annotated[bool, typer.Option(help="Set CR4.SMEP.")] = True,
    ac: Annotated[bool, typer.Option(help="Set RFLAGS.AC (lets the kernel touch user pages under SMAP).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Translate ADDRESS, showing each paging entry (sample space, or a booted kernel's PGD).

    Without --variant: the built-in sample address space. With --variant: that variant's booted
    kernel (as kaiser dump boots it), through the user or the kernel PGD (--pgd)."""
    from kaiser.api.walks import process_walk, sample_walk  # the model: not for --help
    from kaiser.x86.walker import Translation

    va = parse_int(address, "address")
    try:
        access = Op(op)
    except ValueError:
        fail(f"--op {op!r} is not one of read, write, fetch")
    if not 0 <= va < 1 << 64:
        fail(f"address {address} is not a 64-bit value")
    mode = FIVE_LEVEL if la57 else FOUR_LEVEL
    if not mode.is_canonical(va):
        fail(
            f"address {va:#018x} is not canonical for {mode.va_bits}-bit linear addresses "
            "(the CPU raises #GP before any page walk)"
        )
    if pgd is not None and pgd not in PGDS:
        fail(f"--pgd {pgd!r} is not one of user, kernel")
    if pgd is not None and variant is None:
        fail("--pgd needs --variant: the sample space has one tree")
    switches = {"smap": smap, "smep": smep, "ac": ac, "user": user}
    if variant is None:
        walk = sample_walk(va, access, la57=la57, **switches)
    else:
        from kaiser.api.process import boot_process
        from kaiser.linux.variants import UnknownVariant

        try:
            kernel, task = boot_process(variant, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed)
        except UnknownVariant as exc:
            fail(f"--variant: {exc}")
        try:
            walk = process_walk(kernel, task, va, access, pgd=pgd, **switches)
        except ValueError as exc:
            fail(str(exc))
    result, where = walk.result, walk.space
    if json_out:
        emit_json({**walk_result_json(result), "space": where})
        return
    who = "user (CPL 3)" if user else "kernel (CPL 0)"
    render_walk(result, f"{access.value} of {va:#018x} by {who} on {where}")
    if isinstance(result, Translation):
        console.print(
            f"[green]ok[/]: physical {result.pa:#x}, {format_size(result.page_size)} page"
            f"{', global' if result.global_ else ''}",
            highlight=False,
        )
    else:
        console.print(f"[red]fault[/]: {result.describe()}", highlight=False)
