"""`kaiser bench replay [TRACE]`: references per second replaying a real trace from its file.

With TRACE (a valgrind lackey log), that file is measured. Without it, the built-in program
(`kaiser.traces.record`) is recorded under valgrind lackey (and strace, when installed) into a
temporary directory (or `--keep DIR`) and measured. The measurement is
`kaiser.traces.interleave.bench_replay_throughput`: parsing alone, and end to end (boot, read,
parse, map pages, compile the system calls, replay) on one configuration, best of `--repeats`,
against the 10 M references/s target.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kaiser.cli.options import output_dir, variant_name
from kaiser.cli.output import console, emit_json, err_console, fail
from kaiser.cli.replay import check_trace_files, reader_errors
from kaiser.linux.variants import UnknownVariant, get_variant
from kaiser.traces.interleave import bench_replay_throughput, engine_available
from kaiser.traces.record import BENCH_ROUNDS, RecordError, record_trace
from kaiser.traces.strace import read_strace

# CHOSEN: bounds that keep one benchmark a few minutes: the built-in program's trace grows by tens
# of MB per hundred rounds (BENCH_ROUNDS is the default), and best-of-20 is already a stable best.
ROUNDS_MAX = 100 * BENCH_ROUNDS
REPEATS_MAX = 20


def replay_bench_command(
    trace: Annotated[
        Path | None,
        typer.Argument(help="valgrind lackey log to measure; without it, the built-in program is recorded."),
    ] = None,
    syscalls: Annotated[
        Path | None, typer.Option("--syscalls", help="strace log of TRACE's program, cross-checked (not timed).")
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds",
            min=1,
            max=ROUNDS_MAX,
            help=f"Rounds of the built-in program to record (default {BENCH_ROUNDS}).",
        ),
    ] = None,
    variant: Annotated[
        str, typer.Option("--variant", "-v", callback=variant_name, help="Variant of the end-to-end replay.")
    ] = "linux",
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="CPU with PCID.")] = True,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, max=REPEATS_MAX, help="Timed passes of each kind; the best counts.")
    ] = 2,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip and count unreadable lines.")] = False,
    keep: Annotated[
        Path | None,
        typer.Option("--keep", parser=output_dir, help="Record the built-in program's trace into DIR and keep it."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure replay throughput on a real trace, end to end from the file (target: 10 M references/s)."""
    try:
        variant = get_variant(variant).name
    except UnknownVariant as exc:
        fail(str(exc))
    if trace is not None and (rounds is not None or keep is not None):
        fail("--rounds and --keep are for recording the built-in program: give them without TRACE")
    if trace is None and syscalls is not None:
        fail("--syscalls goes with TRACE (without TRACE the strace log is recorded with the trace)")
    if not engine_available():
        err_console.print("kaiser: warning: replaying on the slow reference path (about 10^5 references/s)")
    status = None if json_out else console.status("starting")
    stage: Callable[[str], None] | None = (lambda text: status.update(text)) if status is not None else None
    with status or nullcontext():
        if trace is not None:
            check_trace_files(trace, syscalls)
            result = _measure(trace, syscalls, variant, pcid, repeats, skip_bad, stage)
        else:
            where: AbstractContextManager[str] = (
                nullcontext(str(keep)) if keep is not None else tempfile.TemporaryDirectory(prefix="kaiser-bench-")
            )
            with where as directory:
                result = _record_and_measure(
                    Path(directory), rounds or BENCH_ROUNDS, variant, pcid, repeats, skip_bad, stage
                )
                result["recorded"]["kept"] = keep is not None
    if json_out:
        emit_json(result)
        return
    print_throughput(result)


def _measure(
    trace: Path,
    syscalls: Path | None,
    variant: str,
    pcid: bool,
    repeats: int,
    skip_bad: bool,
    stage: Callable[[str], None] | None,
) -> dict[str, Any]:
    with reader_errors():
        log = read_strace(syscalls, skip_bad=skip_bad) if syscalls is not None else None
        out = bench_replay_throughput(
            trace, variant=variant, pcid=pcid, repeats=repeats, skip_bad=skip_bad, strace=log, stage=stage
        )
    out["strace"] = str(syscalls) if syscalls is not None else None
    out["recorded"] = None
    return out


def _record_and_measure(
    directory: Path,
    rounds: int,
    variant: str,
    pcid: bool,
    repeats: int,
    skip_bad: bool,
    stage: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Record the built-in program (with strace when it is installed), then measure its trace."""
    t0 = time.perf_counter()
    try:
        rec = record_trace(directory, rounds=rounds, strace=shutil.which("strace") is not None, stage=stage)
    except RecordError as exc:
        fail(str(exc))
    seconds = time.perf_counter() - t0
    out = _measure(rec.lackey, rec.strace, variant, pcid, repeats, skip_bad, stage)
    out["recorded"] = {"program": "built-in (kaiser.traces.record)", "rounds": rounds, "seconds": seconds}
    return out


def print_throughput(r: dict[str, Any]) -> None:
    rec = r["recorded"]
    table = Table(
        title=f"replay throughput on a real trace, from the file (best of {r['repeats']})",
        title_justify="left",
        show_header=False,
    )
    table.add_column("", no_wrap=True)
    table.add_column("", overflow="fold")
    where = r["trace"] if rec is None or rec["kept"] else f"{r['trace']} (temporary, deleted)"
    table.add_row("trace", where)
    if rec is not None:
        table.add_row("recorded", f"built-in program, {rec['rounds']} rounds, in {rec['seconds']:.1f} s")
    table.add_row("size", f"{r['bytes']:,} bytes ({r['bytes'] / 1e6:.1f} MB)")
    table.add_row("references", f"{r['refs']:,} ({r['events_replayed']:,} events replayed)")
    calls = f"{r['syscalls']:,}"
    if r["alignment"] is not None:
        calls += f" ({r['alignment']['matched']:,} matched in the strace log)"
    table.add_row("system calls", calls)
    if r["bad_lines"]:
        table.add_row("bad lines", f"{r['bad_lines']:,} skipped")
    table.add_row(
        "parse",
        f"{r['parse_refs_per_second'] / 1e6:.1f} M refs/s, {r['parse_mb_per_second']:.0f} MB/s "
        f"({r['parse_seconds']:.2f} s)",
    )
    table.add_row(
        "end to end",
        f"{r['end_to_end_refs_per_second'] / 1e6:.1f} M refs/s ({r['end_to_end_seconds']:.2f} s, "
        f"of which replay {r['replay_seconds']:.2f} s)",
    )
    table.add_row("replay", f"{r['variant']}, PCID {'on' if r['pcid'] else 'off'}, {r['path']} path")
    target = r["target_refs_per_second"] / 1e6
    table.add_row(f"target {target:g} M refs/s", "[green]met[/]" if r["target_met"] else "[bold red]NOT met[/]")
    console.print(table)
    console.print(f"end to end = {r['note'].partition(' = ')[2]}.")
