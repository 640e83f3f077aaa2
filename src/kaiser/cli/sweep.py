"""`kaiser sweep SPEC.toml`: a design sweep on dask, resumable, with a results table and plots.

Runs the spec's configurations that `--out` does not have yet (on a local cluster of this
machine's cores, or on `--scheduler tcp://HOST:PORT`), behind a progress bar fed by task
completion, writing each result as it arrives; then writes `OUT/results.csv` and `OUT/plots/`.
Also runnable alone: `python -m kaiser.cli.sweep SPEC.toml ...`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kaiser.choices import BASELINE
from kaiser.cli.options import output_dir, scheduler_address
from kaiser.cli.output import console, err_console, fail

if TYPE_CHECKING:  # the sweep (dask, the model) is imported when the command runs, not for its --help
    from kaiser.sweep.runner import SweepState
    from kaiser.sweep.spec import Config, Spec
    from kaiser.sweep.store import ResultStore

Row = dict[str, Any]


# ---- the command -----------------------------------------------------------------------------------
def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
    )


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the sweep like Ctrl-C: close the cluster, keep what is stored."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def summary_table(rows: list[Row]) -> Table:
    """Mean overhead per workload, variant and PCID setting over the whole sweep."""
    t = Table(title="overhead vs nopti, mean over every configuration of the sweep", title_justify="left")
    pcids = sorted({r["pcid"] for r in rows}, reverse=True)
    t.add_column("workload")
    t.add_column("variant")
    for p in pcids:
        t.add_column(f"PCID {'on' if p else 'off'}", justify="right")
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["workload"] == workload):
            if variant == BASELINE:
                continue
            cells = []
            for p in pcids:
                got = [
                    r["overhead_percent"]
                    for r in rows
                    if (r["workload"], r["variant"], r["pcid"]) == (workload, variant, p)
                    and r["overhead_percent"] is not None
                ]
                cells.append(f"{mean(got):+.1f}% ({len(got)})" if got else "-")
            t.add_row(workload, variant, *cells)
    return t


def _finish(spec: Spec, store: ResultStore, plots: bool) -> tuple[list[Row], list[Path]]:
    from kaiser.sweep.store import table

    rows = table(spec.configs, store.load())
    store.write_csv(rows)
    if not (plots and rows):
        return rows, []
    from kaiser.report.plots import write_sweep_plots  # the report's figures (matplotlib): only when drawn

    return rows, write_sweep_plots(store.out / "results.csv", store.out / "plots")


WORKERS_MAX = 256  # CHOSEN: more local worker processes than any one machine here has cores


def sweep_command(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (TOML); see docs/sweep.md.")],
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            callback=scheduler_address,
            help="Existing dask scheduler (tcp://HOST:PORT); default: a local cluster.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", parser=output_dir, help="Output directory (default: ./sweep-<spec name>)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-j", min=0, max=WORKERS_MAX, help="Local cluster worker processes (0: one per core)."
        ),
    ] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the plots into OUT/plots/.")] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count configurations and what is missing; run none.")
    ] = False,
    show_progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """Run a sweep spec's configurations on dask; rerun with the same --out to resume."""
    from kaiser.sweep.runner import run_sweep
    from kaiser.sweep.spec import SpecError, load_spec
    from kaiser.sweep.store import ResultStore, table
    from kaiser.traces.multireplay import default_workers

    try:
        parsed = load_spec(spec)
    except SpecError as exc:
        fail(str(exc))
    out = out or Path(f"sweep-{spec.stem}")
    store = ResultStore(out)
    have = store.load()
    ours = {c.id for c in parsed.configs}
    rejected = {i: why for i, why in sorted(store.rejected.items()) if i in ours}  # never reused: run again
    for config_id, why in rejected.items():
        bad_file = store.results / f"{config_id}.json"
        err_console.print(f"kaiser: {bad_file}: {why}: recomputing it", highlight=False, soft_wrap=True)
    missing = sum(1 for c in parsed.configs if c.id not in have)
    dup = f" ({parsed.duplicates} duplicates dropped)" if parsed.duplicates else ""
    if dry_run:
        have_n = len(parsed.configs) - missing
        console.print(f"{spec}: {len(parsed.configs)} configurations{dup}; {have_n} in {out}, {missing} to run")
        return
    store.prepare()
    if missing < len(parsed.configs):
        store.write_csv(table(parsed.configs, have))  # the consolidated table of what a killed run left
    where = scheduler or f"a local cluster of {workers or default_workers()} worker processes"
    bar = _progress() if show_progress else None
    task: list[Any] = []

    def started(state: SweepState) -> None:
        err_console.print(
            f"sweep {spec}: {state.total} configurations{dup}; {state.done_before} already in {out}, "
            f"{state.todo} to run on {where}" + (f" ({state.workers} workers)" if state.workers else "")
        )
        if bar is not None and state.todo:
            bar.start()
            task.append(bar.add_task("replaying", total=state.total, completed=state.done_before))

    def finished(state: SweepState, config: Config, ok: bool) -> None:
        if bar is not None and task:
            label = f"{config.workload} {config.variant} pcid={'on' if config.pcid else 'off'}"
            bar.update(task[0], advance=1, description=f"{'done' if ok else '[red]FAILED[/]'} {label}")

    interrupted = False
    try:
        with _sigterm_interrupts():
            state = run_sweep(
                parsed,
                store,
                scheduler=scheduler,
                workers=workers or None,
                on_start=started,
                on_result=finished,
            )
    except KeyboardInterrupt:
        interrupted = True
    except OSError as exc:
        if bar is not None:
            bar.stop()
        fail(f"--scheduler {scheduler}: cannot connect: {exc}" if scheduler else f"local cluster: {exc}")
    finally:
        if bar is not None:
            bar.stop()
    rows, drawn = _finish(parsed, store, plots and not interrupted)
    if interrupted:
        err_console.print(
            f"interrupted: {len(rows)} of {len(parsed.configs)} configurations stored in {out}; "
            "rerun the same command to run the rest"
        )
        raise typer.Exit(130)
    console.print(summary_table(rows))
    console.print(
        f"{len(rows)} of {len(parsed.configs)} configurations in {out / 'results.csv'} "
        f"(this run: {state.ran} computed, {state.done_before} reused"
        + (f", {len(rejected)} recomputed because their file failed its check)" if rejected else ")")
        + (f"; plots: {len(drawn)} in {out / 'plots'}" if drawn else "")
    )
    if state.failed:
        fail(f"{len(state.failed)} configurations failed (see {store.failed}); first: {state.failed[0][1]}", code=1)


def main() -> None:
    """`python -m kaiser.cli.sweep` (the command alone, before it is registered in `kaiser`)."""
    typer.run(sweep_command)


if __name__ == "__main__":
    main()
