"""`kaiser bench attack`: the KASLR attack's speed -- the engine against the reference path on the
same layouts (one process, checked to agree probe for probe), and the whole `kaiser attack kaslr`
experiment on the engine (kaiser.attacks.kaslr_bench)."""

from __future__ import annotations

from typing import Annotated

import typer

from kaiser.cli.options import variant_name
from kaiser.cli.output import Col, console, emit_json, print_table, variant_or_all

SEEDS_MAX = 1000  # CHOSEN: as `kaiser attack kaslr --seeds`
COMPARE_MAX = 20  # CHOSEN: the reference path takes seconds per layout
JOBS_MAX = 256  # CHOSEN: as `kaiser attack kaslr --jobs`


def attack_bench_command(
    variant: Annotated[str, typer.Option("--variant", "-v", help="Variants of the whole attack, or 'all'.")] = "all",
    seeds: Annotated[int, typer.Option("--seeds", "-n", min=1, max=SEEDS_MAX, help="Layouts per variant.")] = 20,
    compare: Annotated[
        int,
        typer.Option("--compare", min=0, max=COMPARE_MAX, help="Layouts attacked on both paths (0: none)."),
    ] = 1,
    compare_variant: Annotated[
        str,
        typer.Option("--compare-variant", callback=variant_name, help="Variant of the engine/reference comparison."),
    ] = "linux",
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=0, max=JOBS_MAX, help="Processes of the whole attack (0: one per CPU).")
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Time the KASLR attack: engine vs reference path, and the whole attack on the engine."""
    from kaiser.attacks.kaslr_bench import compare_paths, whole_attack
    from kaiser.traces.multireplay import default_workers

    variants = variant_or_all(variant)
    with console.status("attacking (the reference path takes seconds per layout)...", spinner="dots"):
        pair = compare_paths(compare_variant, list(range(compare))) if compare else None
        whole = whole_attack(variants, list(range(seeds)), jobs or default_workers())
    if json_out:
        emit_json({"compare": pair, "whole": whole})
        return
    if pair is not None:
        paths = (("engine (numba)", pair["engine"]), ("reference (Python)", pair["reference"]))
        rows = [
            [name, f"{pair['probes']:,}", f"{t['seconds']:.2f}", f"{t['cpu_seconds']:.2f}", f"{t['us_per_probe']:.1f}"]
            for name, t in paths
        ]
        cols = [Col("path"), *(Col(c, justify="right") for c in ("probes", "seconds", "CPU s", "µs/probe (CPU)"))]
        print_table(cols, rows, title=f"attack kaslr, {pair['variant']}, {compare} layout(s), one process")
        console.print(
            f"ratio {pair['ratio_cpu']:.0f}x (CPU); every probe's latency and cycles and every guess "
            f"identical on both paths: {'yes' if pair['identical'] else 'NO'}"
        )
    matched = ", ".join(f"{v} {n}/{whole['layouts']}" for v, n in whole["text_matched"].items())
    console.print(
        f"whole attack on the engine ({len(whole['variants'])} variant(s) x {whole['layouts']} layouts, "
        f"{whole['jobs']} process(es), load average {whole['load_average']:.1f} at the start): "
        f"{whole['seconds']:.1f} s wall, {whole['cpu_seconds']:.1f} s CPU, {whole['probes']:,} probes; "
        f"text base found: {matched}"
    )
