"""`kaiser dump`: a process's page tables in the text of Linux's `/sys/kernel/debug/page_tables/*`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kaiser.cli.options import SEED_MAX, output_file, variant_name
from kaiser.cli.output import fail
from kaiser.linux.kernel import Kernel, KernelConfig, Task
from kaiser.linux.mm import Prot
from kaiser.linux.ptdump import DIALECTS, ptdump, ptdump_wide
from kaiser.linux.variants import UnknownVariant

TABLES = ("kernel", "current_kernel", "current_user")  # debugfs page_tables/ files (facts §6.1)


def boot_with_process(variant: str, *, pcid: bool, la57: bool, kaslr: bool, seed: int) -> tuple[Kernel, Task]:
    """Boot `variant` and start one realistic process: an ELF image, heap, stack and vDSO (exec),
    plus a 1 MiB anonymous mapping and a read-only 64 KiB one. `UnknownVariant` for a bad name."""
    kernel = Kernel.boot(KernelConfig(variant=variant, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed))
    task = kernel.spawn()
    task.mm.mmap(1 << 20, Prot.READ | Prot.WRITE, name="anon")
    task.mm.mmap(64 << 10, Prot.READ, name="ro data")
    task.mm.brk(task.mm.brk_start + (132 << 10))
    return kernel, task


def dump_text(kernel: Kernel, task: Task, table: str, *, wide: bool = False, dialect: str = "generic") -> str:
    """The text of one debugfs file for `task` (`kernel`: init_mm's kernel PGD). `ValueError` for a
    table the machine does not have (`current_user` without PTI, as Linux has no such file)."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    pair = kernel.init if table == "kernel" else task.mm.pgd
    pt = pair.kernel_pt if table != "current_user" else pair.user_pt
    if pt is None:
        raise ValueError(f"variant {kernel.variant.name} has no user page tables: there is no current_user without PTI")
    markers = kernel.layout.markers
    if not wide:
        return ptdump(pt, markers, dialect=dialect)  # type: ignore[arg-type]
    if dialect != "generic":
        raise ValueError("--wide prints the generic (5.6+) dialect only")
    kcr3, ucr3 = kernel.cr3_pair(task)
    cr3s = {"kernel": kcr3} if ucr3 is None else {"kernel": kcr3, "user": ucr3}
    return ptdump_wide(pt, markers, cr3s=cr3s, live="user" if table == "current_user" else "kernel")


def dump_command(
    variant: Annotated[
        str, typer.Option("--variant", "-v", callback=variant_name, help="Isolation variant (see docs/variants.md).")
    ] = "linux",
    table: Annotated[
        str, typer.Option("--table", "-t", help="kernel (init_mm), current_kernel or current_user.")
    ] = "current_user",
    wide: Annotated[
        bool, typer.Option("--wide", help="Add physical ranges, effective user/kernel rights and both CR3 values.")
    ] = False,
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="CPU with PCID.")] = True,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    kaslr: Annotated[bool, typer.Option("--kaslr/--no-kaslr", help="Randomize the layout (seeded).")] = True,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed for KASLR and the other boot-time choices.")
    ] = 0,
    dialect: Annotated[
        str, typer.Option("--dialect", help="generic (Linux 5.6+) or legacy (4.x-5.5) ptdump text.")
    ] = "generic",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", callback=output_file, help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print a process's page tables exactly as Linux's /sys/kernel/debug/page_tables/* does."""
    if table not in TABLES:
        fail(f"--table {table!r} is not one of {', '.join(TABLES)}")
    if dialect not in DIALECTS:
        fail(f"--dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
    if wide and dialect != "generic":
        fail("--wide prints the generic (5.6+) dialect only")
    try:
        kernel, task = boot_with_process(variant, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed)
        text = dump_text(kernel, task, table, wide=wide, dialect=dialect)
    except (UnknownVariant, ValueError) as exc:
        fail(str(exc))
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
