"""`kaiser attack kaslr`: break KASLR from user mode by probe timing, per variant and region."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kaiser.choices import PROBES
from kaiser.cli.machine import CpusOption, LassOption, PtiOption, VendorOption, VsyscallOption, lass_vsyscall
from kaiser.cli.options import SEED_MAX, ReplayPathOption
from kaiser.cli.output import console, emit_json, fail, progress_bar, variant_or_all
from kaiser.x86.geometry import GiB

if TYPE_CHECKING:  # the attack, the engine and the model are imported when the command runs
    from kaiser.attacks.timing import KaslrSummary

SEEDS_MAX = 1000  # CHOSEN: layouts per variant; 20 already separates every variant (docs/kaslr.md)
JOBS_MAX = 256  # CHOSEN: a bound on processes, far above the CPUs of any machine this runs on
RAM_GIB_MAX = 64  # CHOSEN: the direct map the attacker scans grows with RAM


def leak_verdict(leaks: list[str], variants: list[str]) -> int:
    """Print which isolating variants leaked (`leaks`: "variant (what)" each) and return the exit
    status: 1 when any did, else 0. `variants`: every variant attacked."""
    from kaiser.linux.variants import get_variant

    expected = " (nopti isolates nothing: its leaks are expected)" if "nopti" in variants else ""
    if leaks:
        console.print(f"[bold red]LEAK[/]: isolating variant(s) leak: {'; '.join(leaks)}{expected}", highlight=False)
        return 1
    isolating = [v for v in variants if get_variant(v).isolating]
    console.print(
        f"[bold green]no leak[/] from {', '.join(isolating) or 'any isolating variant'}{expected}", highlight=False
    )
    return 0


def kaslr_leaks(summaries: list[KaslrSummary]) -> list[str]:
    """Isolating variants whose randomized bases the attacker found, with the regions and counts."""
    from kaiser.attacks.timing import REGIONS
    from kaiser.linux.variants import get_variant

    out = []
    for s in summaries:
        found = [f"{r} {s.matched(r)}/{len(s.runs)}" for r in REGIONS if s.matched(r)]
        if found and get_variant(s.variant).isolating:
            out.append(f"{s.variant} ({', '.join(found)})")
    return out


def _cell(summary: KaslrSummary, region: str) -> str:
    n = len(summary.runs)
    matched, guessed, narrowed = summary.matched(region), summary.guessed(region), summary.narrowed(region)
    style = "red" if matched else "green"
    text = f"[{style}]{matched}/{n}[/]"
    if guessed > matched:
        text += f" [yellow]({guessed - matched} wrong)[/]"
    if narrowed:
        text += f"\n[dim]{narrowed} narrowed[/]"
    return text


def _table(summaries: list[KaslrSummary], seeds: list[int]) -> Table:
    from kaiser.attacks.timing import REGIONS

    first = summaries[0]
    table = Table(
        title=f"KASLR by {first.probe} timing{', LASS' if first.runs and first.runs[0].lass else ''}, "
        f"PCID {'on' if first.pcid else 'off'}, seeds "
        f"{seeds[0]}..{seeds[-1]}: layouts whose base the attacker guessed right / layouts",
        title_justify="left",
    )
    table.add_column("variant", no_wrap=True)
    for region in REGIONS:
        table.add_column(region)
    for s in summaries:
        table.add_row(s.variant, *(_cell(s, r) for r in REGIONS))
    table.caption = "narrowed: mapped pages found, but several aligned bases fit them (no guess)"
    return table


def kaslr_command(
    ctx: typer.Context,
    variant: Annotated[str, typer.Option("--variant", "-v", help="Variant name, or 'all'.")] = "linux",
    seeds: Annotated[
        int, typer.Option("--seeds", "-n", min=1, max=SEEDS_MAX, help="Number of seeded KASLR layouts.")
    ] = 20,
    first_seed: Annotated[
        int, typer.Option("--first-seed", min=0, max=SEED_MAX - SEEDS_MAX, help="Seed of the first layout.")
    ] = 0,
    probe: Annotated[str, typer.Option("--probe", help=f"Probe: {' or '.join(PROBES)}.")] = "prefetch",
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="CPU with PCID.")] = True,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    ram_gib: Annotated[
        int, typer.Option("--ram-gib", min=1, max=RAM_GIB_MAX, help="RAM size in GiB (the attacker knows it).")
    ] = 4,
    pti: PtiOption = "auto",
    vendor: VendorOption = "intel",
    vsyscall: VsyscallOption = None,
    cpus: CpusOption = 2,
    lass: LassOption = False,
    path: ReplayPathOption = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", min=0, max=JOBS_MAX, help="Processes the layouts run on (0: one per CPU)."),
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Find the randomized kernel bases from user mode by TLB timing; score the guesses per layout.

    The bases: kernel text, direct map, vmalloc and vmemmap; the probe times prefetches (or
    faulting loads) after system calls.

    The system calls and probes run on the compiled engine (`--path engine`, the default) or on
    the readable reference MMU (`--path reference`, 50-120 times slower): the same probes, the
    same timings, the same guesses. The layouts run on `--jobs` processes (default: one per CPU),
    each attack the same as in one process.

    Exit status 1 when the attacker finds a base of an isolating variant (nopti is expected to
    give them all away), else 0."""
    from kaiser.attacks.timing import REGIONS, run_variants
    from kaiser.cost.run import default_path
    from kaiser.traces.multireplay import default_workers

    variants = variant_or_all(variant)
    if probe not in PROBES:
        fail(f"--probe {probe!r} is not one of {', '.join(PROBES)}")
    vsyscall = lass_vsyscall(ctx, lass, vsyscall)
    seed_list = list(range(first_seed, first_seed + seeds))
    with progress_bar(disable=json_out) as bar:
        task = bar.add_task(f"kaslr {variant}", total=len(variants) * seeds * len(REGIONS))
        summaries = run_variants(
            variants,
            seed_list,
            jobs=jobs or default_workers(),
            probe=probe,
            pcid=pcid,
            la57=la57,
            ram=ram_gib * GiB,
            pti=pti,
            vendor=vendor,
            vsyscall=vsyscall,
            ncpus=cpus,
            lass=lass,
            path=path or default_path(),
            progress=lambda _region: bar.advance(task, 1),
        )
    leaks = kaslr_leaks(summaries)
    if json_out:
        data = [s.as_dict() for s in summaries]
        emit_json(data[0] if len(data) == 1 else data)
        raise typer.Exit(1 if leaks else 0)
    console.print(_table(summaries, seed_list))
    if len(summaries) == 1 and seeds <= 5:
        for run in summaries[0].runs:
            for o in run.outcomes:
                guess = "no guess" if o.guess.guess is None else f"{o.guess.guess:#x}"
                console.print(
                    f"seed {run.seed} {o.region:10} true {o.true_base:#x}  guess {guess:18}  "
                    f"{'[red]match[/]' if o.matched else '[green]-[/]'}  [dim]{o.guess.how}[/]"
                )
    raise typer.Exit(leak_verdict(leaks, variants))
