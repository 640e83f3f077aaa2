"""`kaiser attack ...`: prove isolation by attacking it. `meltdown` reads a planted kernel secret
from user mode by Flush+Reload, per variant and secret region.

Exit status (both attacks): 0 when no isolating variant leaks, 1 when one does (a finding a CI
should act on; `nopti` leaking is expected and is not one), 2 for bad input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from kaiser.choices import SECRET_REGIONS as REGIONS
from kaiser.cli.machine import CpusOption, LassOption, PtiOption, VendorOption, VsyscallOption, lass_vsyscall
from kaiser.cli.options import SEED_MAX, ReplayPathOption
from kaiser.cli.output import console, emit_json, fail, parse_int, progress_bar, variant_or_all

if TYPE_CHECKING:  # the attack and the model are imported when the command runs, not for its --help
    from kaiser.attacks.core import MeltdownResult

attack_app = typer.Typer(help="Prove isolation by attack: Meltdown and KASLR probing.", no_args_is_help=True)


def _regions(name: str | None) -> list[str]:
    if name is None:
        return ["direct-map"]
    if name == "all":
        return list(REGIONS)
    if name not in REGIONS:
        fail(f"--secret-in {name!r} is not one of {', '.join(REGIONS)}, all")
    return [name]


def _recovered_text(result: MeltdownResult) -> str:
    out = []
    for got, want in zip(result.recovered, result.secret.data, strict=True):
        if got is None:
            out.append("[dim]??[/]")
        elif got == want:
            out.append(f"[green]{got:02x}[/]")
        else:
            out.append(f"[red]{got:02x}[/]")
    return "".join(out)


def _single(result: MeltdownResult) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    cfg = result.config
    grid.add_row(
        "machine",
        f"{result.variant}, {'5' if cfg.la57 else '4'}-level, PCID {'on' if cfg.pcid else 'off'}, "
        f"KASLR {'on' if cfg.kaslr else 'off'}, seed {cfg.seed}, "
        f"core {'vulnerable' if result.vulnerable else 'fixed (no Meltdown)'}"
        + (", LASS" if cfg.lass_active else (", LASS CPU, off (vsyscall=emulate)" if cfg.lass else "")),
    )
    grid.add_row("secret", f"{len(result.secret.data)} bytes in {result.region} at {result.secret.va:#x}")
    grid.add_row("user walk", result.reach.describe())
    grid.add_row("planted", result.secret.data.hex())
    grid.add_row("recovered", _recovered_text(result))
    style = _style(result)
    grid.add_row(
        "result",
        f"[{style}]{result.correct}/{len(result.secret.data)} bytes correct ({result.accuracy:.1%})[/], "
        f"{result.claimed} claimed"
        + ("" if result.protected else f"; nonsensitive memory, which {result.variant} maps by design"),
    )
    cal = result.calibration
    grid.add_row(
        "timing",
        f"hit ~{cal.hit_median:.0f} cyc, miss ~{cal.miss_median:.0f} cyc, threshold {cal.threshold}; "
        f"{result.rounds} Flush+Reload rounds, {result.seconds:.2f} s",
    )
    return Panel(grid, title="kaiser attack meltdown", title_align="left")


def _matrix(results: list[MeltdownResult], regions: list[str]) -> Table:
    """One row per variant and secret region (a row, not a column, per region: five regions and
    their reasons do not fit 80 columns side by side)."""
    first = results[0]
    cfg = first.config
    table = Table(
        title=f"Meltdown, {len(first.secret.data)}-byte secret, {'5' if cfg.la57 else '4'}-level, "
        f"PCID {'on' if cfg.pcid else 'off'}, seed {cfg.seed}, core "
        f"{'vulnerable' if first.vulnerable else 'fixed'}{', LASS' if cfg.lass_active else ''}: bytes recovered / "
        "planted, and the entry "
        "of the attacker's walk that decided it",
        title_justify="left",
    )
    table.add_column("variant", no_wrap=True)
    table.add_column("secret in", no_wrap=True)
    table.add_column("read", no_wrap=True, justify="right")
    table.add_column("why")
    previous = None
    for r in results:
        style = _style(r)
        why = short_why(r) + ("" if r.protected else "; nonsensitive: mapped by design")
        table.add_row(
            r.variant if r.variant != previous else "", r.region, f"[{style}]{r.correct}/{len(r.secret.data)}[/]", why
        )
        previous = r.variant
    return table


LENGTH_MAX = 4096  # one page of secret: Meltdown reads byte by byte, ~1 s per 32 bytes
ROUNDS_MAX = 1000  # CHOSEN: Flush+Reload rounds per byte; the attacker decides within ~10 (docs/attacks.md)


def _style(result: MeltdownResult) -> str:
    """Red: a secret the variant protects was read; yellow: one it maps by design (asi's
    nonsensitive memory); green: nothing read."""
    if not result.correct:
        return "green"
    return "red" if result.protected else "yellow"


def meltdown_leaks(results: list[MeltdownResult]) -> list[str]:
    """Isolating variants from which at least one byte of a secret they protect was read, with
    what was read (asi's nonsensitive memory is mapped by design: not a leak)."""
    from kaiser.linux.variants import get_variant

    return [
        f"{r.variant} {r.region} {r.correct}/{len(r.secret.data)}"
        for r in results
        if r.correct and r.protected and get_variant(r.variant).isolating
    ]


def short_why(result: MeltdownResult) -> str:
    """The deciding entry in a few words: `PTE present (task_stacks)` or `PML4E[316] not present`."""
    reach = result.reach
    if reach.present:
        return f"{reach.level} present" + (f" ({reach.part})" if reach.part else "")
    if reach.index < 0:  # faulted before paging
        return "LASS #GP, no walk" if reach.reason.startswith("LASS") else "no walk"
    return f"{reach.level}[{reach.index}] not present"


def meltdown_command(
    ctx: typer.Context,
    variant: Annotated[str, typer.Option("--variant", "-v", help="Variant name, or 'all'.")] = "all",
    target: Annotated[
        str | None, typer.Option("--target", help="Kernel virtual address to plant the secret at and attack.")
    ] = None,
    secret_in: Annotated[
        str | None,
        typer.Option("--secret-in", help=f"Where to plant the secret: {', '.join(REGIONS)} (default), or all."),
    ] = None,
    length: Annotated[int, typer.Option("--length", "-n", min=1, max=LENGTH_MAX, help="Secret length in bytes.")] = 32,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed for KASLR, the secret, placement and noise.")
    ] = 0,
    vulnerable: Annotated[
        bool, typer.Option("--vulnerable/--no-vulnerable", help="Meltdown-vulnerable core, or a fixed one.")
    ] = True,
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="CPU with PCID.")] = True,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    kaslr: Annotated[bool, typer.Option("--kaslr/--nokaslr", help="Randomize the kernel layout.")] = True,
    pti: PtiOption = "auto",
    vendor: VendorOption = "intel",
    vsyscall: VsyscallOption = None,
    cpus: CpusOption = 2,
    lass: LassOption = False,
    max_rounds: Annotated[
        int, typer.Option("--max-rounds", min=1, max=ROUNDS_MAX, help="Flush+Reload rounds per byte at most.")
    ] = 12,
    quiet_timer: Annotated[bool, typer.Option("--quiet-timer", help="No timing noise (for comparison).")] = False,
    path: ReplayPathOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Plant random bytes in the kernel and read them from user mode by Meltdown + Flush+Reload.

    The attacker's loads go through the compiled engine's TLBs (`--path engine`, the default) or
    the readable reference MMU's (`--path reference`, slower): the same loads, timings, results.

    Exit status 1 when an isolating variant leaks a byte (nopti leaking is expected), else 0."""
    from kaiser.attacks.cache import QUIET
    from kaiser.attacks.core import AttackError, run_meltdown
    from kaiser.attacks.meltdown import MeltdownParams
    from kaiser.cost.run import default_path

    if target is not None and secret_in is not None:
        fail("give either --target or --secret-in, not both")
    variants = variant_or_all(variant)
    regions = ["target"] if target is not None else _regions(secret_in)
    address = None if target is None else parse_int(target, "--target")
    try:
        params = MeltdownParams(max_rounds=max_rounds, min_votes=min(3, max_rounds))
    except ValueError as exc:
        fail(f"--max-rounds: {exc}")
    noise = QUIET if quiet_timer else None
    vsyscall = lass_vsyscall(ctx, lass, vsyscall)
    runs = [(v, r) for v in variants for r in regions]
    results: list[MeltdownResult] = []
    with progress_bar(disable=json_out or len(runs) * length < 64) as bar:
        task = bar.add_task("meltdown", total=len(runs) * length)
        for v, region in runs:
            bar.update(task, description=f"meltdown {v} {region}")
            try:
                results.append(
                    run_meltdown(
                        v,
                        region=region,
                        target=address,
                        length=length,
                        seed=seed,
                        vulnerable=vulnerable,
                        pcid=pcid,
                        la57=la57,
                        kaslr=kaslr,
                        pti=pti,
                        vendor=vendor,
                        vsyscall=vsyscall,
                        ncpus=cpus,
                        lass=lass,
                        params=params,
                        noise=noise,
                        path=path or default_path(),
                        progress=lambda n: bar.advance(task, n),
                    )
                )
            except AttackError as exc:
                fail(f"--target {target}: {exc}" if target is not None else str(exc))
    leaks = meltdown_leaks(results)
    if json_out:
        data = [r.as_dict() for r in results]
        emit_json(data[0] if len(data) == 1 else data)
        raise typer.Exit(1 if leaks else 0)
    console.print(_single(results[0]) if len(results) == 1 else _matrix(results, regions))
    raise typer.Exit(leak_verdict(leaks, variants))


attack_app.command("meltdown")(meltdown_command)


from kaiser.cli.attack_kaslr import kaslr_command, leak_verdict  # noqa: E402

attack_app.command("kaslr")(kaslr_command)
