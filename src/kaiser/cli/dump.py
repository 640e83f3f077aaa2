"""`kaiser dump`: a process's page tables in the text of Linux's `/sys/kernel/debug/page_tables/*`."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from kaiser.cli.machine import CpusOption, PtiOption, VendorOption, VsyscallOption
from kaiser.cli.options import SEED_MAX, output_file, variant_name
from kaiser.cli.output import Col, console, err_console, fail, json_text, parse_int, print_table

if TYPE_CHECKING:  # the model is imported when the command runs, not for its --help
    from kaiser.linux.ptdump_parse import RangeLine
    from kaiser.linux.ptquery import Alias


def _line_json(line: RangeLine) -> dict[str, object]:
    return {
        "section": line.section,
        "start": f"0x{line.start:016x}",
        "end": f"{line.end:#018x}",  # exclusive: 0x10000000000000000 at the top (Linux prints 0)
        "size": line.size,
        "present": line.present,
        "flags": sorted(line.flags),
        "level": line.level,
    }


def _alias_json(alias: Alias) -> dict[str, object]:
    return {
        "pa": f"0x{alias.pa:016x}",
        "size": alias.size,
        "count": alias.count,
        "vas": [f"0x{va:016x}" for va in alias.vas],
    }


def _filtered_text(lines: list[RangeLine]) -> str:
    """The kept range lines under their markers: ptdump text again (parse_ptdump reads it)."""
    from kaiser.linux.ptdump import marker_text

    out: list[str] = []
    section: str | None = None
    for line in lines:
        if line.section != section and line.section is not None:
            out.append(marker_text(line.section))
        section = line.section
        out.append(line.render())
    return "".join(f"{ln}\n" for ln in out)


def _print_aliases(found: list[Alias], table: str) -> None:
    from kaiser.linux.ptquery import size_text

    print_table(
        [Col("physical"), Col("size", justify="right"), Col("views", justify="right"), Col("virtual addresses")],
        [
            [
                f"0x{a.pa:016x}",
                size_text(a.size),
                str(a.count),
                "\n".join(f"0x{va:016x}" for va in a.vas)
                + (f"\n... {a.count - len(a.vas)} more" if a.count > len(a.vas) else ""),
            ]
            for a in found
        ],
        title=f"physical memory mapped at more than one virtual address in {table}",
    )
    if not found:
        console.print("no aliases: every mapped frame has one virtual address")


# The --wide line (ptdump.ptdump_wide_root): VA range [0:37], 2 spaces, PA range [39:76] (blank
# when not present), 3 spaces, Linux's size (10), flag field (30) and level (3), 2 spaces, rights.
_WIDE_PA, _WIDE_TAIL = slice(39, 76), 79
_WIDE_SIZE = re.compile(r" *(\d+[BKMGTPE]) ")


def fold_wide(text: str, width: int) -> str:
    """The --wide text for a terminal of `width` columns: unchanged when its lines fit, else each
    range on two lines (VA range, size, level, rights / physical range and flags), or three
    below 72 columns -- never a cut address."""
    from kaiser.linux.ptdump import FLAG_FIELD_WIDTH

    lines = text.splitlines()
    if max((len(ln) for ln in lines), default=0) <= width:
        return text
    out: list[str] = []
    for line in lines:
        if line.startswith("# CR3 ") and len(line) > width:
            for value in line.removeprefix("# CR3 ").split(" "):
                if value == "(live)":
                    out[-1] += " (live)"
                else:
                    out.append(f"# CR3 {value}")
            continue
        if not line.startswith("0x") or len(line) <= width:
            out.append(line)
            continue
        va, pa = line[:37], line[_WIDE_PA].strip()
        cut = line.rindex("  user:")
        tail, rights = line[_WIDE_TAIL:cut], line[cut + 2 :]
        m = _WIDE_SIZE.match(tail)  # "%9lu" + unit + space: wider than 9 digits for a huge hole
        assert m is not None, line
        size, rest = m.group(1), tail[m.end() :]
        flags, level = " ".join(rest[:FLAG_FIELD_WIDTH].split()), rest[FLAG_FIELD_WIDTH:].strip()
        pa_text = f"pa {pa}" if pa else "not present"
        if width >= 72:
            out += [f"{va} {size} {level} {rights}", f"  {pa_text} {flags}".rstrip()]
        else:
            out += [f"{va} {size}", f"  {pa_text}", "  " + " ".join(p for p in (flags, level, rights) if p)]
    return "".join(f"{ln}\n" for ln in out)


def dump_command(
    variant: Annotated[
        str, typer.Option("--variant", "-v", callback=variant_name, help="Isolation variant (see docs/variants.md).")
    ] = "linux",
    table: Annotated[
        str,
        typer.Option(
            "--table",
            "-t",
            help="kernel (init_mm), current_kernel or current_user (without PTI: the kernel PGD, as in Linux).",
        ),
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
    pti: PtiOption = "auto",
    vendor: VendorOption = "intel",
    vsyscall: VsyscallOption = None,
    cpus: CpusOption = 2,
    dialect: Annotated[
        str, typer.Option("--dialect", help="generic (Linux 5.6+) or legacy (4.x-5.5) ptdump text.")
    ] = "generic",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", parser=output_file, help="Write to this file instead of stdout.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the range lines (or --aliases) as JSON.")] = False,
    rights: Annotated[
        str | None,
        typer.Option("--rights", help="Only lines with these rights: w,x,u,g; +w+x; u,-x (- = must be clear)."),
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="Only this marker section, e.g. 'CPU entry Area'.")
    ] = None,
    span: Annotated[str | None, typer.Option("--range", help="Only lines overlapping LO-HI (HI exclusive).")] = None,
    has: Annotated[str | None, typer.Option("--has", help="Only the line containing this address.")] = None,
    aliases: Annotated[
        bool, typer.Option("--aliases", help="List physical memory mapped at more than one virtual address.")
    ] = False,
) -> None:
    """Print a process's page tables exactly as Linux's /sys/kernel/debug/page_tables/* does.

    Filters (--rights, --region, --range, --has; all must hold) keep the matching lines.

    Rights are the printed flags: w = RW, x = no NX, u = USR, g = GLB; a - means clear.

    --aliases: physical frames mapped at several virtual addresses (entry area, IDT, ESPfix)."""
    from kaiser.api.process import boot_process
    from kaiser.api.tables import dump_text, dump_tree
    from kaiser.linux.debugfs import TABLES
    from kaiser.linux.ptdump import DIALECTS, Dialect
    from kaiser.linux.ptdump_parse import parse_ptdump
    from kaiser.linux.ptquery import QueryError, RightsFilter, find_aliases, parse_range, select_ranges
    from kaiser.linux.variants import UnknownVariant

    if table not in TABLES:
        fail(f"--table {table!r} is not one of {', '.join(TABLES)}")
    if dialect not in DIALECTS:
        fail(f"--dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
    if wide and dialect != "generic":
        fail("--wide prints the generic (5.6+) dialect only")
    filtering = any(v is not None for v in (rights, region, span, has))
    try:
        want = RightsFilter.parse(rights) if rights is not None else None
        lo_hi = parse_range(span) if span is not None else None
    except QueryError as exc:
        fail(str(exc))
    addr = parse_int(has, "--has") if has is not None else None
    if wide and (filtering or json_out or aliases):
        fail("--wide cannot be combined with --json, --aliases or filters (filter the plain dump instead)")
    if aliases and out is not None and not json_out:
        fail("--out with --aliases needs --json (the aliases table goes to the terminal)")
    try:
        kernel, task = boot_process(
            variant, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed, pti=pti, vendor=vendor, vsyscall=vsyscall, ncpus=cpus
        )
        text = dump_text(kernel, task, table, wide=wide, dialect=cast(Dialect, dialect))
    except (UnknownVariant, ValueError) as exc:
        fail(str(exc))
    if aliases:
        found = find_aliases(dump_tree(kernel, task, table))
        if not json_out:
            _print_aliases(found, table)
            return
        text = json_text({"table": table, "variant": kernel.variant.name, "aliases": [_alias_json(a) for a in found]})
    elif filtering or json_out:
        records = parse_ptdump(text, f"<{table}>")
        try:
            lines = select_ranges(records, rights=want, region=region, span=lo_hi, has=addr)
        except QueryError as exc:
            fail(str(exc))
        if json_out:
            text = json_text({"table": table, "variant": kernel.variant.name, "ranges": [_line_json(r) for r in lines]})
        else:
            text = _filtered_text(lines)
            if not lines:
                err_console.print("kaiser: no range line matches the filters", highlight=False)
    elif wide and out is None:
        text = fold_wide(text, console.width)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
