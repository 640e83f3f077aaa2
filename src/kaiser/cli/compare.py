"""`kaiser compare`: a real kernel's page-table dump against our model, region by region.

Exit status: 0 when every difference is one docs/real-kernel.md explains, 1 when one is not,
2 for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from kaiser.cli.machine import CpusOrDump, PtiOrDump, VendorOrDump, VsyscallOrDump
from kaiser.cli.options import SEED_MAX, variant_name
from kaiser.cli.output import Col, console, emit_json, fail, print_table
from kaiser.inputs import InputError, read_text

if TYPE_CHECKING:  # the comparison is imported when the command runs, not for its --help
    from kaiser.linux.compare import ClassSummary, CompareReport


def _size(n: int) -> str:
    if not n:
        return "0"
    from kaiser.linux.ptdump import size_parts

    num, unit = size_parts(n)
    return f"{num}{unit}"


def _summary_json(s: ClassSummary | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "ranges": s.count,
        "skipped_lines": s.skipped,
        "bytes": s.size,
        "flags": list(s.flag_sets),
        "levels": list(s.levels),
        "first": hex(s.ranges[0][0]) if s.ranges else None,
    }


def compare_json(report: CompareReport) -> dict[str, Any]:
    """`kaiser compare --json`: the switches and facts the model was booted with, each class on both
    sides, every difference."""
    sw = report.switches
    return {
        "real": report.source,
        "table": report.table,
        "ldt": report.ldt,
        "model": {
            "variant": sw.variant,
            "pti_on": sw.pti_on,
            "pti": sw.pti,
            "vendor": sw.vendor,
            "vsyscall": sw.vsyscall,
            "pcid": sw.pcid,
            "la57": sw.la57,
            "kaslr": sw.kaslr,
            "ncpus": sw.ncpus,
            "ram": sw.ram,
            "seed": sw.seed,
            "why": list(sw.sources),
            "facts": [
                {
                    "name": f.name,
                    "value": _plain(f.value),
                    "text": f.text,
                    "source": f.source,
                    "line": f.line or None,
                    "shown": f.shown or None,
                }
                for f in sw.facts
            ],  # fmt: skip
        },
        "model_table": report.model_table,
        "user_view": report.user_view,
        "classes": {
            k: {"real": _summary_json(report.real.get(k)), "model": _summary_json(report.model.get(k))}
            for k in sorted(set(report.real) | set(report.model))
        },
        "differences": [
            {
                "class": d.klass,
                "kind": d.kind,
                "real": d.real,
                "model": d.model,
                "explained": d.explained,
                "category": d.category,
                "blocked": d.blocked or None,
                "reason": d.explanation.reason if d.explanation else None,
                "model_change": (d.explanation.fix or None) if d.explanation else None,
            }
            for d in report.differences
        ],
        "unexplained": len(report.unexplained),
        "placement": len(report.of("placement")),
        "contents": len(report.of("contents")),
        "exit_status": report.exit_status,
    }


def _plain(value: object) -> object:
    """A fact's value as JSON: tuples as lists, dataclasses (image sizes) as their fields."""
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    return value


def render_compare(report: CompareReport) -> None:
    """Print the report: the model's switches and why, the differences per class, the verdict."""
    out = console
    sw = report.switches
    out.print(
        f"[bold]{report.source}[/] ({report.table}{', process with an LDT' if report.ldt else ''}) against the "
        f"model: variant {sw.variant}{' (pti=on)' if sw.pti_on else ''}, PCID {'on' if sw.pcid else 'off'}, "
        f"KASLR {'on' if sw.kaslr else 'off'}, {sw.ncpus} CPU(s), {sw.ram >> 20} MiB, "
        f"{'5' if sw.la57 else '4'}-level",
        highlight=False,
    )
    for f in sw.facts:  # what the machine is, and where that comes from (the dump's own lines)
        out.print(f"[dim]  {escape(f.text)} \\[{f.source}][/]", highlight=False)
        if f.line:
            out.print(f"[dim]      line {f.line}: {escape(f.shown)}[/]", highlight=False)
    for why in sw.sources[len(sw.facts) :]:
        out.print(f"[dim]  {escape(why)}[/]", highlight=False)
    print_table(
        [Col("class"), Col("real", whole=False), Col("model", whole=False)],
        [
            [k, r.describe() if r else "-", m.describe() if m else "-"]
            for k in sorted(set(report.real) | set(report.model))
            for r, m in [(report.real.get(k), report.model.get(k))]
        ],
        title="kernel-half mappings by class",
        out=out,
    )
    if report.differences:
        keys: list[tuple[str, str]] = []
        rows: list[list[str]] = []
        for d in report.differences:
            ref = ""
            if d.explanation:
                if d.key not in keys:
                    keys.append(d.key)
                tag = "contents" if d.category == "contents" else "yes"
                ref = f"[green]{tag}[/] [{keys.index(d.key) + 1}]"
            rows.append([escape(d.klass), d.kind, escape(d.real), escape(d.model), ref or "[bold red]NO[/]"])
        print_table(
            [Col("class"), Col("kind"), Col("real", whole=False), Col("model", whole=False), Col("explained")],
            rows,
            title="differences",
            out=out,
        )
        for i, key in enumerate(keys, 1):
            ex = next(d.explanation for d in report.differences if d.key == key and d.explanation)
            out.print(f"\\[{i}] [bold]{escape('/'.join(key))}[/]: {escape(ex.reason)}", highlight=False)
            if ex.fix:
                out.print(f"    [cyan]model change:[/] {escape(ex.fix)}", highlight=False)
    n = len(report.unexplained)
    tally = (
        f"{len(report.of('placement'))} of placement, {len(report.of('contents'))} in the running kernel's "
        f"own contents (its data, allocations, modules), {n} unexplained"
    )
    blocked = sum(1 for d in report.unexplained if d.blocked)
    if blocked:
        out.print(f"[bold red]{blocked} change(s) what user mode can reach[/]: never explained", highlight=False)
    if n:
        out.print(f"[bold red]FAIL[/]: {tally} (docs/real-kernel.md)", highlight=False)
    else:
        out.print(f"[bold green]OK[/]: {tally} (docs/real-kernel.md)", highlight=False)


def compare_command(
    real_dump: Annotated[
        Path, typer.Argument(help="A real /sys/kernel/debug/page_tables/{kernel,current_kernel,current_user} dump.")
    ],
    variant: Annotated[
        str, typer.Option("--variant", "-v", callback=variant_name, help="The model variant to compare with.")
    ] = "linux",
    pcid: Annotated[
        bool | None,
        typer.Option("--pcid/--no-pcid", help="Model CPU with PCID. Default: meta.json's guest CPU flags, else on."),
    ] = None,
    la57: Annotated[
        bool | None, typer.Option("--la57/--4level", help="Model paging mode. Default: from the dump.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Model seed (KASLR and other boot-time choices).")
    ] = 0,
    pti: PtiOrDump = None,
    vendor: VendorOrDump = None,
    vsyscall: VsyscallOrDump = None,
    cpus: CpusOrDump = None,
    cmdline: Annotated[
        str | None,
        typer.Option(
            "--cmdline", help="The kernel command line: the text, or a file holding it (a copy of /proc/cmdline)."
        ),
    ] = None,
    cpuinfo: Annotated[
        Path | None, typer.Option("--cpuinfo", help="A copy of the machine's /proc/cpuinfo (vendor, CPUs, pcid, la57).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where our model and a real kernel differ, region by region.

    The model is booted as the dump shows the machine (each switch printed with the line that shows
    it); what a dump cannot tell comes from the options, meta.json beside the dump, or is printed as
    assumed."""
    from kaiser.linux.compare import compare_dump
    from kaiser.linux.ptdump_parse import dump_gaps, parse_ptdump_file
    from kaiser.linux.variants import UnknownVariant

    records = parse_ptdump_file(real_dump)
    gaps = dump_gaps(records)
    if gaps:  # the model's dump is whole: an excerpt would differ everywhere it stops
        lo, hi, line = gaps[0]
        raise InputError(
            real_dump,
            f"not a whole dump: no line covers 0x{lo:016x}-0x{hi - 1:016x}"
            + (f" and {len(gaps) - 1} more gap(s)" if len(gaps) > 1 else "")
            + "; compare needs the whole file",
            line=line or None,
        )
    try:
        if cmdline is not None and ("/" in cmdline or Path(cmdline).is_file()) and " " not in cmdline.strip():
            cmdline = read_text(cmdline, "--cmdline")  # a file holding the command line
        info = read_text(cpuinfo, "--cpuinfo") if cpuinfo is not None else None
        report = compare_dump(
            records, real_dump, variant, pcid=pcid, la57=la57, seed=seed,
            pti=pti, vendor=vendor, vsyscall=vsyscall, cpus=cpus, cmdline=cmdline, cpuinfo=info,
        )  # fmt: skip
    except UnknownVariant as exc:
        fail(str(exc))
    if json_out:
        emit_json(compare_json(report))
    else:
        render_compare(report)
    raise typer.Exit(report.exit_status)
