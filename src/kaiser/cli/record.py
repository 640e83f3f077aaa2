"""`kaiser record` (boot a real Debian kernel under QEMU with our TCG plugin and record a
workload) and `kaiser recording list|info` (what the recordings say): docs/recording.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from kaiser.choices import RECORDING_WORKLOADS
from kaiser.cli.options import choice, output_dir, output_file
from kaiser.cli.output import Col, console, emit_json, err_console, fail, print_table
from kaiser.inputs import InputError, check_input
from kaiser.record.build import KERNELS
from kaiser.systools import ToolsMissing

# The recorder, the recording format and its summaries (numpy) are imported when a command runs,
# not for its --help; the workloads' names are kaiser/choices.py's.

recording_app = typer.Typer(
    help="Read recordings of a real kernel (kaiser record): list and info.", no_args_is_help=True
)


# CHOSEN bounds: a recording of a million calls is gigabytes of references (docs/recording.md);
# 2^20 loads per call is a 8 MiB working set per call; one boot under TCG takes minutes, not a day.
CALLS_MAX = 1_000_000
LOADS_MAX = 1 << 20
TIMEOUT_MAX = 86_400.0


def _say(line: str) -> None:
    err_console.print(line, highlight=False, soft_wrap=True)


def record_command(
    program: Annotated[
        list[str] | None, typer.Argument(help="after --: a static x86-64 program and its arguments to record")
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            "--workload", "-w", callback=choice(*RECORDING_WORKLOADS), help=f"one of: {', '.join(RECORDING_WORKLOADS)}"
        ),
    ] = "getppid",
    kernel: Annotated[
        str, typer.Option(callback=choice(*KERNELS), help=f"Debian's kernel series: {' or '.join(KERNELS)}")
    ] = "6.1",
    pti: Annotated[str, typer.Option(callback=choice("on", "off"), help="on (pti=on) or off (nopti)")] = "on",
    kaslr: Annotated[bool, typer.Option("--kaslr/--no-kaslr", help="boot with KASLR (default: nokaslr)")] = False,
    calls: Annotated[
        int | None, typer.Option(min=1, max=CALLS_MAX, help="calls of the workload (default: its shipped count)")
    ] = None,
    loads: Annotated[int | None, typer.Option(min=1, max=LOADS_MAX, help="s1bench: loads per call")] = None,
    out: Annotated[
        Path | None,
        typer.Option(parser=output_file, help="the recording to write (default: KERNEL-PTI-WORKLOAD.krec)"),
    ] = None,
    phys: Annotated[bool, typer.Option("--phys", help="also log each data reference's physical address")] = False,
    user_side: Annotated[
        str,
        typer.Option(
            callback=choice("full", "summary"),
            help="PROGRAM: log its user side (full) or only count it (summary), for long programs",
        ),
    ] = "full",
    all_: Annotated[
        bool, typer.Option("--all", help="regenerate the shipped recordings: every workload, 6.1 and 6.12, pti on/off")
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option(parser=output_dir, help="--all: where to write (default: the package's data)")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1.0, max=TIMEOUT_MAX, help="seconds one QEMU boot may take")] = 900.0,
    keep: Annotated[
        Path | None,
        typer.Option(parser=output_dir, help="keep the raw plugin log, console and info channel here"),
    ] = None,
) -> None:
    """Record a real kernel (Debian's own, under QEMU TCG with kaiser's plugin) running a workload.

    Every instruction fetch and data reference between the workload's two markers is written to
    the recording. Installs what it needs (as root) or names the command."""
    from kaiser.record.boot import Job
    from kaiser.record.recorder import ERRORS, SHIPPED, WORKLOADS, all_jobs, data_dir, record, shipped_name

    if pti not in ("on", "off"):
        fail(f"--pti {pti!r}: use on or off")
    if kernel not in KERNELS:
        fail(f"--kernel {kernel!r}: one of {', '.join(KERNELS)}")
    if calls is not None and calls <= 0:
        fail(f"--calls {calls}: must be positive")
    if loads is not None and loads <= 0:
        fail(f"--loads {loads}: must be positive")
    if timeout <= 0:
        fail(f"--timeout {timeout}: must be positive")
    try:
        if all_:
            if program:
                fail("--all records the shipped workloads; it takes no PROGRAM")
            dest = out_dir or data_dir()
            for k in SHIPPED:
                for p in (True, False):
                    _say(f"record: {k} {'pti=on' if p else 'nopti'}: every workload in one boot")
                    record(all_jobs(dest, k, p), kernel=k, pti=p, kaslr=kaslr, timeout=timeout, say=_say, keep=keep)
            return
        pti_on = pti == "on"
        exe: Path | None = None
        if program:
            exe = check_input(program[0], "PROGRAM")
            if user_side not in ("full", "summary"):
                fail(f"--user-side {user_side!r}: use full or summary")
            job = Job(0, "program", calls or 1, int(user_side == "summary"), ("/prog", *program[1:]))
            name = Path(program[0]).name
        else:
            if workload not in WORKLOADS:
                fail(f"--workload {workload!r}: one of {', '.join(WORKLOADS)}")
            w = WORKLOADS[workload]
            arg = loads if (workload == "s1bench" and loads) else w.arg
            job = Job(0, w.name, calls or w.shipped_calls, arg)
            name = w.name
        dest_file = out or Path(shipped_name(kernel, pti_on, name))
        record(
            [(job, dest_file)], kernel=kernel, pti=pti_on, kaslr=kaslr, phys=phys, program=exe,
            timeout=timeout, say=_say, keep=keep,
        )  # fmt: skip
    except InputError as exc:  # PROGRAM: not a readable regular file
        fail(str(exc))
    except ERRORS as exc:
        fail(str(exc), code=1)
    except ToolsMissing as exc:  # what to install, and the command that would
        fail(str(exc))


def _resolve(file: str) -> Path:
    """A path, or the name of a shipped recording."""
    from kaiser.record.recorder import data_dir

    path = Path(file)
    if not path.exists():
        shipped = data_dir() / file
        if shipped.exists():
            return shipped
        if (data_dir() / (file + ".krec")).exists():
            return data_dir() / (file + ".krec")
    return path


@recording_app.command("list")
def list_command(json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False) -> None:
    """The shipped recordings (src/kaiser/record/data) with their kernel, switches and workload."""
    from kaiser.record.format import read_header
    from kaiser.record.recorder import data_dir

    rows: list[dict[str, Any]] = []
    for path in sorted(data_dir().glob("*.krec")):
        h = read_header(path)
        rows.append(
            {
                "name": path.name,
                "kernel_release": h["kernel_release"],
                "pti": h["pti"],
                "kaslr": h["kaslr"],
                "workload": h["workload"],
                "calls": h["calls"],
                "bytes": path.stat().st_size,
            }
        )
    if json:
        emit_json(rows)
        return
    cols = [Col("name"), Col("kernel", drop=1), Col("pti"), Col("workload"), Col("calls", justify="right"),
            Col("bytes", justify="right")]  # fmt: skip
    print_table(
        cols,
        [
            [
                r["name"],
                r["kernel_release"],
                "on" if r["pti"] else "off",
                r["workload"],
                str(r["calls"]),
                f"{r['bytes']:,}",
            ]
            for r in rows
        ],  # fmt: skip
        title=f"{len(rows)} recordings in {data_dir()}",
    )


SHORT = {
    "kernel_instructions": "instr",
    "kernel_loads": "loads",
    "kernel_stores": "stores",
    "code_pages_4k": "code 4K",
    "data_pages_4k": "data 4K",
    "code_pages_2m": "code 2M",
    "data_pages_2m": "data 2M",
    "cr3_writes": "CR3",
}


USER_SHORT = {
    "user_instructions": "instr",
    "user_loads": "loads",
    "user_stores": "stores",
    **{m: SHORT[m] for m in ("code_pages_4k", "data_pages_4k", "code_pages_2m", "data_pages_2m")},
}


def _use(how: str) -> str:
    """code+load+store as x, r, w (the JSON keeps the words)."""
    return "".join(c for w, c in (("code", "x"), ("load", "r"), ("store", "w")) if w in how.split("+"))


def _num(v: int | float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"


@recording_app.command("info")
def info_command(
    file: Annotated[str, typer.Argument(help="a recording, or the name of a shipped one (kaiser recording list)")],
    json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
    symbols: Annotated[bool, typer.Option("--symbols", help="list each page of each kind and what is on it")] = False,
) -> None:
    """Per transition kind, the median per call of what the kernel did, by region; the user side."""
    from kaiser.record.stats import METRICS, summarize

    try:
        data = summarize(_resolve(file), symbols=symbols)
    except InputError as exc:
        fail(str(exc))
    if json:
        emit_json(data)
        return
    pti = "pti=on" if data["pti"] else "nopti"
    console.print(
        f"{Path(data['file']).name}: {data['kernel_release']} {pti}, workload {data['workload']} "
        f"({data['calls']} calls)",
        highlight=False,
        soft_wrap=True,
    )
    cols = [Col("kind"), Col("calls", justify="right")] + [Col(SHORT[m], justify="right") for m in METRICS]
    rows = [[k, str(v["calls"])] + [_num(v["median"][m]) for m in METRICS] for k, v in data["transitions"].items()]
    print_table(cols, rows, title="median per call, kernel side")
    rcols = [Col("kind"), Col("region")] + [Col(SHORT[m], justify="right") for m in METRICS[:5]]
    rrows = []
    for k, v in data["transitions"].items():
        for region, m in v["by_region"].items():
            if any(m[x] for x in METRICS[:5]):
                rrows.append([k, region] + [_num(m[x]) for x in METRICS[:5]])
    print_table(rcols, rrows, title="by region")
    u = data["user"]["median"]
    ucols = [Col("runs", justify="right")] + [Col(USER_SHORT[m], justify="right") for m in u]
    print_table(ucols, [[str(data["user"]["runs"])] + [_num(v) for v in u.values()]], title="user side, median per run")
    if symbols:
        for k, v in data["transitions"].items():
            prow = [
                [f"{p['page']:#018x}", p["region"], _use(p["use"]), str(p["refs"]), ", ".join(p["symbols"]) or "-"]
                for p in v.get("pages", [])
            ]
            pcols = [
                Col("page"),
                Col("region"),
                Col("xrw", drop=2),  # fetched, read, written
                Col("refs", justify="right", drop=1),
                Col("on it", whole=False),
            ]
            print_table(pcols, prow, title=f"{k}: the pages of a typical call")
    sys.stdout.flush()


@recording_app.command("check")
def check_command(
    file: Annotated[str, typer.Argument(help="a pti=on recording, or the name of a shipped one")],
    json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Check the model against a recording: CR3 writes and what runs under the user CR3, per syscall.

    The model side is linux/entry.py's `linux --no-pcid`. Exit 1 on a difference no documented
    kernel behaviour explains."""
    from kaiser.record.check import check_recording

    path = _resolve(file)
    try:
        found = check_recording(path)
    except InputError as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(str(exc))
    bad = [c for c in found if c.unexplained()]
    if json:
        emit_json({"file": str(path), "kinds": [c.as_dict() for c in found], "ok": not bad})
    else:
        cols = [Col("kind"), Col("calls", justify="right"), Col("CR3 real/model"),
                Col("user-CR3 instr real/model"), Col("verdict", whole=False)]  # fmt: skip
        rows = []
        for c in found:
            r, m = c.real, c.model
            un = c.unexplained()
            verdict = "agrees" if not un else "; ".join(f"{k}: {', '.join(v)}" for k, v in un.items())
            rows.append(
                [c.kind, str(c.calls), f"{r.cr3_writes}/{m.cr3_writes}",
                 f"{r.entry_fetches}+{r.exit_fetches}/{m.entry_fetches}+{m.exit_fetches}", verdict]
            )  # fmt: skip
        print_table(cols, rows, title=f"{path.name}: the real kernel under the user CR3 vs linux --no-pcid")
    if bad:
        raise typer.Exit(1)
