"""`kaiser bench engine`: the compiled engine's and the reference path's references per second,
measured in one run on the same stream (and checked to agree on it)."""

from __future__ import annotations

from typing import Annotated

import typer

from kaiser.cli.options import SEED_MAX, choice
from kaiser.cli.output import Col, console, emit_json, print_table
from kaiser.x86.cache_geometry import HIERARCHIES

# CHOSEN: fewer references time the timer rather than the engine; more than 50 M events (20 bytes
# each, x86/events.py) is a gigabyte of stream on top of the engine's copy of the tables.
N_REFS_MIN, N_REFS_MAX = 10_000, 50_000_000


def engine_command(
    n_refs: Annotated[
        int,
        typer.Option("--n-refs", min=N_REFS_MIN, max=N_REFS_MAX, help="References the engine replays (timed)."),
    ] = 10_000_000,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the kernel layout and of the stream.")
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    caches: Annotated[
        str,
        typer.Option(
            "--caches",
            callback=choice(*HIERARCHIES),
            help=f"Cache hierarchy of the caches-on run: {', '.join(HIERARCHIES)}.",
        ),
    ] = "skylake-client",
) -> None:
    """Measure the replay engine against the reference path (one run, same stream)."""
    from kaiser.cost.enginebench import bench_engine

    if json_out:
        emit_json(bench_engine(n_refs=n_refs, seed=seed, caches=caches))
        return
    with console.status("compiling (first run only), then replaying both paths..."):
        r = bench_engine(n_refs=n_refs, seed=seed, caches=caches)
    eng, ref = r["engine"], r["reference"]
    wc = r["with_caches"]

    def row(name: str, got: dict[str, float], seconds: str, scale: float, unit: str) -> list[str]:
        return [
            name,
            f"{got['references']:,}",
            f"{got[seconds]:.3f}",
            f"{got['refs_per_second'] / scale:.1f} {unit}",
            f"{got['refs_per_cpu_second'] / scale:.1f} {unit}",
        ]

    print_table(
        [Col("path"), *(Col(c, justify="right") for c in ("references", "seconds", "refs/s (wall)", "refs/s (CPU)"))],
        [
            row("engine (numba)", eng, "seconds_best", 1e6, "M"),
            row("reference (Python)", ref, "seconds", 1e3, "k"),
            row("engine + caches", wc["engine"], "seconds_best", 1e6, "M"),
            row("reference + caches", wc["reference"], "seconds", 1e3, "k"),
            row(f"engine, guest ({r['nested']['host_page']} host)", r["nested"]["engine"], "seconds_best", 1e6, "M"),
        ],
        title=f"replay engine vs reference path ({r['variant']}, seed {seed})",
    )
    s = r["stream"]
    console.print(
        f"ratio {r['ratio']:.0f}x (CPU {r['ratio_cpu']:.0f}x); counters agree on the shared slice: "
        f"{'yes' if r['agree_on_shared_slice'] else 'NO'}; stream L1 hit rate {s['l1_hit_rate']:.1%}, "
        f"{s['walks']:,} walks, {s['cr3_writes']:,} CR3 writes; targets (50 M/s, 20x) "
        f"{'met' if r['targets']['met'] else 'NOT met'}"
    )
    console.print(
        f"with caches ({wc['caches']}): counters and cache state agree on the shared slice: "
        f"{'yes' if wc['agree_on_shared_slice'] else 'NO'}; L1D miss rate {wc['stream']['l1d_miss_rate']:.1%}; "
        f"target (25 M/s) {'met' if wc['met'] else 'NOT met'}"
    )
    nv = r["nested"]
    console.print(
        f"in a guest (nested paging over {nv['host_page']} host pages, no caches): counters agree with the "
        f"reference on a tenth of the slice: {'yes' if nv['agree_on_shared_slice'] else 'NO'}; "
        f"{nv['stream']['host_walk_loads']:,} EPT loads for {nv['stream']['walk_loads']:,} guest walk loads"
    )
    pc = r["per_call"]
    console.print(
        f"per call ({pc['batch_events']} events, {pc['calls']:,} calls, state kept): "
        f"{pc['step']['us_best']:.1f} µs (CPU {pc['step']['cpu_us_best']:.1f}) with counters as an array, "
        f"{pc['replay']['us_best']:.1f} µs (CPU {pc['replay']['cpu_us_best']:.1f}) named; "
        f"target (< {pc['target_us']:.0f} µs CPU) "
        f"{'met' if pc['met'] else 'NOT met'}"
    )
