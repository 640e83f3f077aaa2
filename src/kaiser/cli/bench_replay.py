"""`kaiser bench replay [TRACE]`: references per second replaying a real trace from its file.

With TRACE (a valgrind lackey log), that file is measured. Without it, the built-in program
(`kaiser.traces.record`) is recorded under valgrind lackey (and strace, when installed) into a
temporary directory (or `--keep DIR`) and measured. The measurement is
`kaiser.traces.multireplay.bench_replay_throughput`, best of `--repeats` each, side by side in one
process: parsing the text alone, loading the binary cache alone, one configuration end to end
(boot, decode, map pages, compile the system calls, replay) from the text and from the cache
(against the 25 M references/s target), and every variant x PCID configuration in one pass in
--workers processes against as many separate passes (against the 0.6x target), paired round by
round: the ratio is the median of the rounds'.
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

from kaiser.cli.options import output_dir, variant_name
from kaiser.cli.output import Col, console, emit_json, err_console, fail, print_table
from kaiser.cli.replay import CacheOption, WorkersOption, check_trace_files, reader_errors
from kaiser.traces.record import BENCH_ROUNDS, RecordError, record_trace  # light: valgrind, no model
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
        int,
        typer.Option(
            "--repeats",
            min=1,
            max=REPEATS_MAX,
            help="Timed passes of each kind (the best counts); rounds of the paired one-pass test (the median).",
        ),
    ] = 2,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip and count unreadable lines.")] = False,
    keep: Annotated[
        Path | None,
        typer.Option("--keep", parser=output_dir, help="Record the built-in program's trace into DIR and keep it."),
    ] = None,
    cache: CacheOption = True,
    workers: WorkersOption = None,
    all_configs: Annotated[
        bool,
        typer.Option(
            "--all/--one", help="Also time every variant x PCID configuration in one pass against separate passes."
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure replay throughput on a real trace, end to end from the file (target: 25 M references/s)."""
    from kaiser.linux.variants import UnknownVariant, get_variant  # the model: not for --help
    from kaiser.traces.interleave import engine_available

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
            result = _measure(trace, syscalls, variant, pcid, repeats, skip_bad, stage, (cache, workers, all_configs))
        else:
            where: AbstractContextManager[str] = (
                nullcontext(str(keep)) if keep is not None else tempfile.TemporaryDirectory(prefix="kaiser-bench-")
            )
            with where as directory:
                result = _record_and_measure(
                    Path(directory),
                    rounds or BENCH_ROUNDS,
                    variant,
                    pcid,
                    repeats,
                    skip_bad,
                    stage,
                    (cache, workers, all_configs),
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
    how: tuple[bool, int | None, bool],
) -> dict[str, Any]:
    from kaiser.traces.multireplay import bench_replay_throughput

    cache, workers, all_configs = how
    with reader_errors():
        log = read_strace(syscalls, skip_bad=skip_bad) if syscalls is not None else None
        out = bench_replay_throughput(
            trace,
            variant=variant,
            pcid=pcid,
            repeats=repeats,
            skip_bad=skip_bad,
            strace=log,
            stage=stage,
            cache=cache,
            workers=workers,
            all_configs_pass=all_configs,
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
    how: tuple[bool, int | None, bool],
) -> dict[str, Any]:
    """Record the built-in program (with strace when it is installed), then measure its trace."""
    t0 = time.perf_counter()
    try:
        rec = record_trace(directory, rounds=rounds, strace=shutil.which("strace") is not None, stage=stage)
    except RecordError as exc:
        fail(str(exc))
    seconds = time.perf_counter() - t0
    out = _measure(rec.lackey, rec.strace, variant, pcid, repeats, skip_bad, stage, how)
    out["recorded"] = {"program": "built-in (kaiser.traces.record)", "rounds": rounds, "seconds": seconds}
    return out


def _rate(refs_per_second: float) -> str:
    return f"{refs_per_second / 1e6:.1f} M"


def _met(met: bool) -> str:
    return "[green]met[/]" if met else "[bold red]NOT met[/]"


def _processes(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def print_throughput(r: dict[str, Any]) -> None:
    """The trace, then one row per measurement: what ran, seconds, rate, and its ratio or target."""
    rec = r["recorded"]
    where = r["trace"] if rec is None or rec["kept"] else f"{r['trace']} (temporary, deleted)"
    about = [["trace", where]]
    if rec is not None:
        about.append(["recorded", f"built-in program, {rec['rounds']} rounds, in {rec['seconds']:.1f} s"])
    about.append(["size", f"{r['bytes']:,} bytes ({r['bytes'] / 1e6:.1f} MB)"])
    about.append(["references", f"{r['refs']:,} ({r['events_replayed']:,} events replayed)"])
    calls = f"{r['syscalls']:,}"
    if r["alignment"] is not None:
        calls += f" ({r['alignment']['matched']:,} matched in the strace log)"
    about.append(["system calls", calls])
    if r["bad_lines"]:
        about.append(["bad lines", f"{r['bad_lines']:,} skipped"])
    about.append(["replay", f"{r['variant']}, PCID {'on' if r['pcid'] else 'off'}, {r['path']} path"])
    c = r["cache"]
    about.append(["binary cache", c["dir"] if c["enabled"] else "off (--no-cache)"])
    print_table(
        [Col("replay throughput", whole=True), Col(f"best of {r['repeats']}", whole=False)],
        about,
    )
    cols = [
        Col("measurement", whole=False),
        Col("seconds", justify="right"),
        Col("CPU s", justify="right", drop=1),
        Col("refs/s", justify="right"),
        Col("against", whole=False),
    ]
    target = r["target_refs_per_second"] / 1e6
    rows = [["parse the text", f"{r['parse_seconds']:.2f}", "", _rate(r["parse_refs_per_second"]), ""]]
    if c["load_seconds"] is not None:
        rows.append(["load the cache", f"{c['load_seconds']:.2f}", "", _rate(c["load_refs_per_second"]), ""])
    text = (f"1 config, text, {_processes(1)}", r["text_end_to_end_seconds"], r["text_end_to_end_cpu_seconds"])
    rows.append([text[0], f"{text[1]:.2f}", f"{text[2]:.2f}", _rate(r["text_end_to_end_refs_per_second"]), ""])
    src = "cache" if c["used"] else "text"
    rows.append([
        f"1 config, {src}, {_processes(1)}",
        f"{r['end_to_end_seconds']:.2f}",
        f"{r['end_to_end_cpu_seconds']:.2f}",
        _rate(r["end_to_end_refs_per_second"]),
        f"{target:g} M: {_met(r['target_met'])}",
    ])  # fmt: skip
    a = r["all_configs"]
    if a is not None:
        n = a["configs"]
        rows.append([
            f"{n} configs, {n} passes, {_processes(1)}",
            f"{a['separate_seconds']:.2f}",
            f"{a['separate_cpu_seconds']:.2f}",
            "",
            "1.00x",
        ])  # fmt: skip
        rows.append([
            f"{n} configs, 1 pass, {_processes(a['workers'])}",
            f"{a['one_pass_seconds']:.2f}",
            f"{a['one_pass_cpu_seconds']:.2f}",
            "",
            f"{a['ratio']:.2f}x; {a['target_ratio']:g}x: {_met(a['target_met'])}",
        ])  # fmt: skip
    print_table(cols, rows)
    if a is not None:
        same = "[green]the same[/]" if a["counters_equal"] else "[bold red]NOT the same[/]"
        console.print(f"counters of every configuration, one pass against separate passes: {same}.")
        rounds = ", ".join(f"{x:.2f}x" for x in a["ratios"])
        console.print(f"{n} configs: medians of {a['rounds']} paired rounds (one pass, then the passes): {rounds}.")
    console.print(f"end to end = {r['note'].partition(' = ')[2]}.")
    console.print(
        "CPU s = the run's CPU seconds, all its threads and processes (whatever share of the machine it had)."
    )
