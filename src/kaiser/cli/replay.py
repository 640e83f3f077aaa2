"""`kaiser replay TRACE [--syscalls STRACE]`: a real program's trace, priced on every variant.

TRACE is valgrind lackey's log (`valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes
--log-file=TRACE PROG`); STRACE an strace log of a native run (`strace -f -n -ttt -T -o STRACE
PROG`), used for native timestamps and to cross-check the system calls (docs/traces.md).
The file is decoded once, in chunks (from the binary cache of an earlier parse unless
--no-cache), and replayed on every chosen variant and PCID setting, the settings spread over
--workers processes (`kaiser.traces.multireplay.replay_trace`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from kaiser.choices import BASELINE, KERNEL_SIDES
from kaiser.cli.options import ReplayPathOption, choice, plot_file, variant_names
from kaiser.cli.output import Col, console, emit_json, err_console, fail, print_table
from kaiser.inputs import check_input

if TYPE_CHECKING:  # the traces and the engine are imported when the command runs, not for its --help
    from kaiser.traces.interleave import TraceReplay


def _variants(names: list[str] | None) -> list[str]:
    from kaiser.linux.variants import VARIANTS, UnknownVariant, get_variant

    if not names:
        return list(VARIANTS)
    try:
        out = [get_variant(n).name for n in names]
    except UnknownVariant as exc:
        fail(str(exc))
    return out if BASELINE in out else [BASELINE, *out]  # overhead needs the baseline


def check_trace_files(trace: Path, syscalls: Path | None) -> None:
    """A trace or strace log that is missing, or not a regular file (a directory, FIFO, device,
    /proc file), is a one-line error (`kaiser.inputs.check_input`) before any work starts."""
    check_input(trace, "trace")
    if syscalls is not None:
        check_input(syscalls, "--syscalls strace log")


@contextmanager
def reader_errors() -> Iterator[None]:
    """Reading and replaying traces: a bad line (`TraceError`, `StraceError`: `FILE:LINE: why`)
    is a one-line error; the replay's warnings are silenced (the commands say which path runs)."""
    from kaiser.traces.lackey import TraceError
    from kaiser.traces.strace import StraceError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except (TraceError, StraceError) as exc:
        fail(str(exc))


LIMIT_MAX = 1 << 62  # CHOSEN: "no limit" in practice; a bound so that --limit is an int64 everywhere
WORKERS_MAX = 256  # CHOSEN: a bound for --workers; more processes than configurations do nothing
CacheOption = Annotated[
    bool,
    typer.Option(
        "--cache/--no-cache",
        help="Reuse (or write) the binary cache of the parsed trace (kaiser.traces.trace_cache: "
        "$KAISER_TRACE_CACHE, else $XDG_CACHE_HOME/kaiser/traces, else ~/.cache/kaiser/traces).",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        max=WORKERS_MAX,
        help="Processes the configurations run in (default: the cores available).",
    ),
]


def replay_command(
    trace: Annotated[Path, typer.Argument(help="valgrind lackey log (--trace-mem=yes --trace-syscalls=yes).")],
    syscalls: Annotated[
        Path | None, typer.Option("--syscalls", help="strace log of the same program (strace -f -n -ttt -T -o FILE).")
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant", "-v", callback=variant_names, help="Variant (repeatable); all by default (nopti always)."
        ),
    ] = None,
    pcid: Annotated[
        bool | None, typer.Option("--pcid/--no-pcid", help="Only with (or without) PCID; both by default.")
    ] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip and count unreadable lines.")] = False,
    path: ReplayPathOption = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, max=LIMIT_MAX, help="Replay only the first N user events.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", parser=plot_file, help="Draw cycles and overhead per variant (PNG).")
    ] = None,
    kernel_side: Annotated[
        str,
        typer.Option(
            "--kernel-side",
            callback=choice(*KERNEL_SIDES),
            help="System call bodies: recorded (Debian 6.1's, where a recording exists) or modelled.",
        ),
    ] = "recorded",
    cache: CacheOption = True,
    workers: WorkersOption = None,
) -> None:
    """Replay a real program's memory trace, with its system calls, on each variant and price it."""
    from kaiser.traces.interleave import engine_available
    from kaiser.traces.multireplay import replay_trace
    from kaiser.traces.strace import read_strace

    check_trace_files(trace, syscalls)
    if path not in (None, "engine", "reference"):
        fail(f"--path {path!r}: use engine or reference")
    if path == "engine" and not engine_available():
        fail("--path engine: kaiser.x86.engine is not available")
    names = _variants(variant)
    pcids = (True, False) if pcid is None else (pcid,)
    configs = [(v, p) for p in pcids for v in names]
    chosen = path or ("engine" if engine_available() else "reference")
    if chosen == "reference":
        err_console.print("kaiser: warning: replaying on the slow reference path (about 10^5 references/s)")
    with reader_errors():
        strace = read_strace(syscalls, skip_bad=skip_bad) if syscalls else None
        if json_out:
            result = replay_trace(
                trace,
                configs,
                path=chosen,
                skip_bad=skip_bad,
                strace=strace,
                max_events=limit,
                kernel_side=kernel_side,
                cache=cache,
                workers=workers,
            )
        else:
            with Progress(
                TextColumn(f"replaying on {len(configs)} configurations"),
                BarColumn(),
                DownloadColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("replay", total=trace.stat().st_size)

                def tick(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                result = replay_trace(
                    trace,
                    configs,
                    path=chosen,
                    skip_bad=skip_bad,
                    strace=strace,
                    max_events=limit,
                    progress=tick,
                    kernel_side=kernel_side,
                    cache=cache,
                    workers=workers,
                )
    if plot is not None:
        plot_costs(result, plot)
    if json_out:
        emit_json(result.as_dict())
        return
    print_result(result)
    if plot is not None:
        console.print(f"plot written to {plot}")


def print_result(r: TraceReplay) -> None:
    """The replay of one trace as a table: per configuration its walks, STLB hits, CR3 writes,
    cycles and overhead against the baseline."""
    s = r.stats
    title = f"{r.trace.name}: {s['refs']:,} references, {sum(r.syscall_names.values())} system calls"
    cols = [Col("variant"), Col("PCID")]
    cols += [
        Col(name, justify="right", drop=drop) for name, drop in (("walks", 0), ("STLB hits", 1), ("CR3 writes", 0))
    ]
    cols += [Col("flushing", justify="right", drop=2), Col("cycles", justify="right"), Col("overhead", justify="right")]
    rows = []
    for res in r.results:
        c = res.counters
        over = r.overhead(res)
        rows.append([
            res.variant,
            "on" if res.pcid else "off",
            f"{c.walks:,}",
            f"{c.stlb_hits:,}",
            f"{c.cr3_writes:,}",
            f"{c.cr3_writes - c.cr3_noflush:,}",
            f"{res.total_cycles:,.0f}" if res.total_cycles is not None else "-",
            f"{over:+.2f}%" if over is not None else "-",
        ])  # fmt: skip
    print_table(cols, rows, title=title)
    bad = f", {s['bad_lines']} bad lines skipped" if s["bad_lines"] else ""
    rate = s["refs"] * len(r.results) / r.seconds if r.seconds else 0.0
    console.print(
        f"{s['lines']:,} lines, {s['events']:,} events "
        f"({s['modifies']:,} modify, {s['page_crossings']:,} page-crossing)"
        f"{bad}; {r.seconds:.2f} s, {rate / 1e6:.1f} M references/s replayed (path: {r.results[0].path}, "
        f"{r.workers} process{'es' if r.workers != 1 else ''}, {'binary cache' if r.cached else 'parsed text'})"
    )
    sides = r.results[0].kernel_side if r.results else {}
    for side in KERNEL_SIDES:
        names = sorted(n for n, s in sides.items() if s == side)
        console.print(f"kernel side {side}: {', '.join(names) if names else 'none'}")
    unmodelled = r.results[0].unmodelled if r.results else {}
    if unmodelled:
        console.print(f"generic kernel body for: {', '.join(f'{k}x{v}' for k, v in sorted(unmodelled.items()))}")
    if r.alignment is not None:
        a = r.alignment
        console.print(
            f"strace cross-check: {len(a.matched)} calls matched; only in valgrind: {a.valgrind_only or 'none'}; "
            f"only in strace: {a.strace_only or 'none'}"
        )


def plot_costs(r: TraceReplay, out: Path) -> None:
    """Dots of modelled cycles per variant and of overhead vs nopti, PCID on and off, on axes that
    span the values so a 1 % difference shows (kaiser.report.draw.replay_figure)."""
    from kaiser.report.draw import pyplot, replay_figure

    cycles: dict[tuple[str, bool | None], float] = {
        (x.variant, x.pcid): float(x.total_cycles) for x in r.results if x.total_cycles is not None
    }
    overheads: dict[tuple[str, bool | None], float] = {
        (x.variant, x.pcid): over for x in r.results if x.variant != BASELINE and (over := r.overhead(x)) is not None
    }
    title = f"{r.trace.name}: {r.stats['refs']:,} references, {sum(r.syscall_names.values())} system calls"
    fig = replay_figure(title, cycles, overheads)
    fig.savefig(out, dpi=120)
    pyplot().close(fig)
