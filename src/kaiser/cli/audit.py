"""`kaiser audit`: what user mode can reach, from a ptdump file (ours or a real machine's) or the model.

Exit status: 0 when nothing breaks the policy, 1 when a finding does, 2 for bad input -- so it can
run in a kernel developer's CI against `/sys/kernel/debug/page_tables/current_user`. Bad input
includes a file that is not a whole dump (cut short, lines taken out: the error names the first
gap and the regions never seen; `--partial` audits an excerpt instead) and init_mm's `kernel`
table, which is no process's user view: a finding about the input, not about the kernel, so 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kaiser.choices import POLICY_MODES
from kaiser.cli.machine import MODEL_SWITCHES, CpusOption, PtiOption, VendorOption, VsyscallOption, machine_config
from kaiser.cli.options import SEED_MAX, choice, variant_name
from kaiser.cli.output import Col, console, emit_json, fail, print_table
from kaiser.inputs import InputError

if TYPE_CHECKING:  # the audit is imported when the command runs, not for its --help
    from kaiser.linux.audit import AuditReport


def _size(start: int, end: int) -> str:
    if end == start:
        return "0"
    from kaiser.linux.ptdump import size_parts

    num, unit = size_parts(end - start)
    return f"{num}{unit}"


def report_json(report: AuditReport) -> dict[str, Any]:
    """The JSON form of an audit."""
    out: dict[str, Any] = {
        "source": report.source,
        "view": report.view,
        "policy": {
            "variant": report.policy.variant,
            "mode": report.policy.mode,
            "allowed": sorted(report.policy.allowed),
            "global_ok": sorted(report.policy.global_ok),
        },
        "paging": "5-level" if report.la57 else "4-level",
        "notes": list(report.notes),
        **({"table_kind": report.table_kind} if report.table_kind else {}),
        **({"unseen_regions": list(report.unseen)} if report.gaps else {}),
        "regions": [{"name": n, "start": hex(s), "end": hex(e)} for n, s, e in report.regions],
        "mappings": [
            {
                "start": hex(m.start),
                "end": hex(m.end),
                "size": m.end - m.start,
                "flags": sorted(m.flags),
                "level": m.level,
                "class": m.klass,
                "allowed": m.allowed,
                **({"line": m.lineno} if m.lineno else {}),
            }
            for m in report.mappings
        ],
        "findings": [
            {
                "kind": f.kind,
                "start": hex(f.start),
                "end": hex(f.end),
                "class": f.klass,
                "breaks_policy": f.breaks_policy,
                "message": f.message,
            }
            for f in report.findings
        ],
        "exit_status": report.exit_status,
    }
    if report.diff is not None:
        d = report.diff
        out["diff"] = {
            "left_out": [{"region": r, "ranges": n, "bytes": b} for r, n, b in d.left_out],
            "entries": [
                {
                    "kind": e.kind,
                    "start": hex(e.start),
                    "end": hex(e.end),
                    "region": e.region,
                    "kernel": e.kernel,
                    "user": e.user,
                }
                for e in d.entries
            ],  # fmt: skip
            "user_half_nx_only": {"ranges": d.nx_only[0], "bytes": d.nx_only[1]},
        }
    return out


def render_report(report: AuditReport) -> None:
    """Tables that fit the terminal: the kernel-half mappings, the findings, the user/kernel
    diff, a verdict."""
    title = f"kernel-half mappings in {report.view} ({report.source}), policy {report.policy.label}"
    all_allowed = all(m.allowed for m in report.mappings)  # then the verdict line says it: status may go
    print_table(
        [
            Col("range"),
            Col("size", justify="right"),
            Col("flags", drop=1),
            Col("level", drop=3),
            Col("class"),
            Col("status", drop=2 if all_allowed else 0),
        ],
        [
            [
                f"0x{m.start:016x}-0x{m.end:016x}",
                _size(m.start, m.end),
                m.flag_text,
                m.level,
                m.klass,
                "[green]allowed[/]" if m.allowed else "[bold red]NOT ALLOWED[/]",
            ]
            for m in report.mappings
        ],
        title=title,
    )
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    if report.findings:
        print_table(
            [Col("kind"), Col("class"), Col("breaks policy"), Col("detail", whole=False)],
            [[f.kind, f.klass, "[bold red]yes[/]" if f.breaks_policy else "no", f.message] for f in report.findings],
            title="findings",
        )
    if report.diff is not None:
        d = report.diff
        print_table(
            [Col("region"), Col("ranges", justify="right"), Col("size", justify="right")],
            [[region, str(n), _size(0, b)] for region, n, b in d.left_out],
            title="kernel-half regions the user tables leave out",
        )
        if d.entries:
            print_table(
                [Col("kind", drop=1), Col("range"), Col("region"), Col("kernel tables"), Col("user tables")],
                [
                    [e.kind, f"0x{e.start:016x}-0x{e.end:016x}", e.region, e.kernel or "-", e.user or "-"]
                    for e in d.entries
                ],
                title="mapped in both (or user only) with different flags",
            )
        console.print(
            f"user half: {d.nx_only[0]} range(s), {_size(0, d.nx_only[1])}, differ only by the kernel copy's NX "
            "(pti_set_user_pgtbl, §3.2)",
            highlight=False,
        )
    n = len(report.violations)
    if n:
        console.print(f"[bold red]FAIL[/]: {n} finding(s) break the {report.policy.label} policy", highlight=False)
    else:
        console.print(
            f"[bold green]PASS[/]: {len(report.mappings)} kernel-half range(s), all allowed by {report.policy.label}",
            highlight=False,
        )


def audit_command(
    dumpfile: Annotated[
        Path | None,
        typer.Argument(
            help="A current_user ptdump (ours or /sys/kernel/debug/page_tables/current_user). "
            "Without it, audit the model's tables of --variant."
        ),
    ] = None,  # fmt: skip
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant",
            "-v",
            callback=variant_name,
            help="Policy (and, without DUMPFILE, the model to boot). Default: linux.",
        ),
    ] = None,
    policy_mode: Annotated[
        str,
        typer.Option(
            "--policy",
            callback=choice(*POLICY_MODES),
            help="strict: only what today's Linux allows in user tables (the linux variant's policy), within "
            "the variant's own; variant: the variant's own design (e.g. two-pgd's shared top-level entries).",
        ),
    ] = "strict",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    pcid: Annotated[
        bool, typer.Option("--pcid/--no-pcid", help="CPU with PCID (for a file: may kernel text be cloned?).")
    ] = True,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="Model: 5-level or 4-level paging.")] = False,
    kaslr: Annotated[bool, typer.Option("--kaslr/--no-kaslr", help="Model: randomize the layout.")] = True,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Model: seed for KASLR and boot-time choices.")
    ] = 0,
    pti: PtiOption = "auto",
    vendor: VendorOption = "intel",
    vsyscall: VsyscallOption = None,
    cpus: CpusOption = 2,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial", help="DUMPFILE is an excerpt (grep, a mail quote): audit its lines; say what is missing."
        ),
    ] = False,
) -> None:
    """List every kernel mapping user mode can reach, classify it, and fail (exit 1) on policy breaks.

    The policy is by default the strict one (what today's Linux allows; --policy variant: the
    variant's own).

    A DUMPFILE must be a whole dump (exit 2 naming the regions never seen otherwise, unless
    --partial) of a process's user tables: init_mm's `kernel` table is refused (exit 2)."""
    from kaiser.api.process import boot_process
    from kaiser.linux.audit import TABLE_KINDS, audit_dump, audit_model
    from kaiser.linux.audit_policy import policy_for
    from kaiser.linux.ptdump_parse import parse_ptdump_file
    from kaiser.linux.variants import UnknownVariant

    name = variant or "linux"
    try:
        # kernel text may be cloned only under pti=auto without PCID on a non-K8 CPU (§3.3)
        policy = policy_for(name, pcid=pcid or pti == "on" or vendor != "intel", mode=policy_mode)
    except UnknownVariant as exc:
        fail(str(exc))
    if dumpfile is not None:
        report = audit_dump(parse_ptdump_file(dumpfile), policy, str(dumpfile))
        check_whole_user_dump(report, dumpfile, partial=partial)
    else:
        config = machine_config(name, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed, pti=pti, vendor=vendor,
                                vsyscall=vsyscall, cpus=cpus)  # fmt: skip
        kernel, task = boot_process(name, **{k: getattr(config, k) for k in MODEL_SWITCHES})
        report = audit_model(kernel, task, mode=policy_mode)
    if json_out:
        emit_json(report_json(report))
    else:
        render_report(report)
        if report.table_kind not in ("", "current_user"):
            console.print(f"note: {dumpfile} looks like {report.table_kind}, not current_user: "
                          f"{TABLE_KINDS[report.table_kind]}", highlight=False)  # fmt: skip
    raise typer.Exit(report.exit_status)


def check_whole_user_dump(report: AuditReport, path: Path, *, partial: bool) -> None:
    """A dump cut short (or with lines taken out) is not audited as if it were whole, and init_mm's
    kernel table is not a user view: `InputError` (exit 2) naming the file and what is wrong."""
    from kaiser.linux.audit import TABLE_KINDS

    if report.gaps and not partial:
        lo, hi, line = report.gaps[0]
        more = f" and {len(report.gaps) - 1} more gap(s)" if len(report.gaps) > 1 else ""
        raise InputError(
            path,
            f"not a whole dump: no line covers 0x{lo:016x}-0x{(hi - 1):016x}{more}; regions never seen: "
            f"{', '.join(report.unseen) or 'none (lines missing inside regions)'} (--partial audits an excerpt)",
            line=line or None,
        )
    if report.table_kind == "kernel":
        raise InputError(path, f"looks like the kernel table, not a user view ({TABLE_KINDS['kernel']}); "
                         "audit reads a process's current_user")  # fmt: skip
