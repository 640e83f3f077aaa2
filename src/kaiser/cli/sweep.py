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
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kaiser.cli.bench import STYLE
from kaiser.cli.options import output_dir, scheduler_address
from kaiser.cli.output import console, err_console, fail
from kaiser.cost.params import SKYLAKE
from kaiser.cost.workloads import Knob, format_size, get_workload
from kaiser.sweep.runner import SweepState, default_workers, run_sweep
from kaiser.sweep.spec import Config, Spec, SpecError, load_spec
from kaiser.sweep.store import BASELINE, ResultStore, table

Row = dict[str, Any]


# ---- plots -----------------------------------------------------------------------------------------
def _axes(rows: list[Row]) -> list[str]:
    """Columns that vary within these rows (seed excluded: results are averaged over seeds)."""
    keys = [k for k in rows[0] if k.startswith("knob_")] + ["geometry"]
    return [k for k in keys if len({repr(r.get(k)) for r in rows}) > 1]


def _first(rows: list[Row], key: str) -> Any:
    return rows[0].get(key)


def _fixed(rows: list[Row], axes: list[str], keep: str | None) -> list[Row]:
    """Rows with every swept axis but `keep` at its first value (in spec order)."""
    base = {a: _first(rows, a) for a in axes if a != keep}
    return [r for r in rows if all(r.get(a) == v for a, v in base.items())]


def _label(axis: str, value: Any, knob: Knob | None) -> str:
    if knob is not None and knob.show is format_size and isinstance(value, int):
        return format_size(value) if value else "0"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def _knob(workload: str, axis: str) -> Knob | None:
    return {k.name: k for k in get_workload(workload).knobs}.get(axis.removeprefix("knob_"))


def _describe(rows: list[Row], axes: list[str], keep: str | None) -> str:
    """The settings a plot holds fixed: the other swept axes at their first value, and the rest."""
    wl = rows[0]["workload"]
    parts = [f"{a.removeprefix('knob_')}={_label(a, _first(rows, a), _knob(wl, a))}" for a in axes if a != keep]
    seeds = sorted({r["seed"] for r in rows})
    geometry = [] if "geometry" in axes else [f"geometry={_first(rows, 'geometry')}"]
    return ", ".join([*parts, *geometry, f"{rows[0]['iterations']} iterations", f"seeds {seeds}"])


def _series(rows: list[Row], key: str) -> dict[tuple[str, bool], dict[Any, list[float]]]:
    """(variant, pcid) -> x value -> overhead per seed."""
    out: dict[tuple[str, bool], dict[Any, list[float]]] = {}
    for r in rows:
        if r["variant"] == BASELINE or r["overhead_percent"] is None:
            continue
        out.setdefault((r["variant"], r["pcid"]), {}).setdefault(r.get(key), []).append(r["overhead_percent"])
    return out


def _color(variant: str) -> str:
    return STYLE.get(variant, "black")


def _scale(ax: Any, xs: list[float]) -> None:
    """Log x for a geometric grid (symmetric log when it includes 0), linear otherwise."""
    positive = [x for x in xs if x > 0]
    if positive and max(xs) / min(positive) >= 8:
        if 0 in xs:
            ax.set_xscale("symlog", linthresh=min(positive))
        else:
            ax.set_xscale("log")
    ax.minorticks_off()


def plot_overhead_vs(rows: list[Row], workload: str, axis: str, axes: list[str], path: Path) -> None:
    """Overhead vs nopti (%) against one swept knob (or the geometry), a line per variant and PCID
    setting (solid: PCID, dashed: no PCID); other axes at their first value, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = _fixed(rows, axes, axis)
    knob = _knob(workload, axis)
    xs: list[Any] = list(dict.fromkeys(r.get(axis) for r in sub))
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    if numeric:
        xs.sort()
    pos = {x: (float(x) if numeric else float(i)) for i, x in enumerate(xs)}
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=130)
    seeds = len({r["seed"] for r in sub})
    for (variant, pcid), points in sorted(
        _series(sub, axis).items(),
        key=lambda kv: (list(STYLE).index(kv[0][0]) if kv[0][0] in STYLE else 99, not kv[0][1]),
    ):
        order = [x for x in xs if x in points]
        ys = [mean(points[x]) for x in order]
        lo = [y - min(points[x]) for x, y in zip(order, ys, strict=True)]
        hi = [max(points[x]) - y for x, y in zip(order, ys, strict=True)]
        ax.errorbar(
            [pos[x] for x in order],
            ys,
            yerr=[lo, hi] if seeds > 1 else None,
            color=_color(variant),
            linestyle="-" if pcid else "--",
            marker="o" if pcid else "s",
            markersize=4,
            linewidth=1.8,
            capsize=3,
            label=f"{variant}, {'PCID' if pcid else 'no PCID'}",
        )
    if numeric:
        _scale(ax, [pos[x] for x in xs])  # before the ticks: a scale change resets them
    ax.set_xticks([pos[x] for x in xs])
    ax.set_xticklabels(
        [_label(axis, x, knob) for x in xs],
        rotation=30 if not numeric else 0,
        ha="right" if not numeric else "center",
        fontsize=8,
    )
    name = axis.removeprefix("knob_")
    if knob is not None:
        unit = "bytes" if knob.show is format_size else ("cycles" if name == "work" else "")
        ax.set_xlabel(f"{name}{f' ({unit})' if unit else ''}: {knob.help}")
    else:
        ax.set_xlabel("TLB geometry (entries x ways of the resized structures)")
    ax.set_ylabel("overhead vs nopti at the same settings (% of cycles)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, framealpha=0.9)
    fig.suptitle(f"{workload}: isolation overhead vs {name}", fontsize=13, x=0.01, ha="left")
    ax.set_title(_describe(sub, axes, axis), fontsize=8, loc="left")
    _footer(fig, seeds)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_bars(rows: list[Row], workload: str, axes: list[str], path: Path) -> None:
    """Cycles per operation (every variant, nopti included) and overhead (%) per variant, PCID on
    and off side by side, at the workload's base settings (each swept axis at its first value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = _fixed(rows, axes, None)
    variants = list(dict.fromkeys(r["variant"] for r in sub))
    pcids = sorted({r["pcid"] for r in sub}, reverse=True)
    seeds = len({r["seed"] for r in sub})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2), dpi=130)
    width = 0.8 / len(pcids)
    for j, pcid in enumerate(pcids):
        for ax, key in ((left, "cycles_per_op"), (right, "overhead_percent")):
            vals = []
            for v in variants:
                got = [r[key] for r in sub if r["variant"] == v and r["pcid"] == pcid and r[key] is not None]
                vals.append(mean(got) if got else float("nan"))
            xs = [i + (j - (len(pcids) - 1) / 2) * width for i in range(len(variants))]
            bars = ax.bar(
                xs,
                vals,
                width,
                color=[_color(v) if v != BASELINE else "#7f7f7f" for v in variants],
                hatch="" if pcid else "//",
                edgecolor="black",
                linewidth=0.5,
                label="PCID" if pcid else "no PCID",
            )
            ax.bar_label(bars, fmt="%.0f" if key == "cycles_per_op" else "%+.1f", fontsize=6, padding=1)
    for ax in (left, right):
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, title="hatched: no PCID", title_fontsize=7)
    left.set_ylabel(f"cycles per operation (modelled, {SKYLAKE.clock_ghz:g} GHz core)")
    left.set_title("cost per operation", fontsize=10, loc="left")
    right.set_ylabel("overhead vs nopti at the same settings (%)")
    right.set_title("overhead", fontsize=10, loc="left")
    right.axhline(0, color="grey", linewidth=0.8)
    fig.suptitle(f"{workload}: per variant at {_describe(sub, axes, None)}", fontsize=11, x=0.01, ha="left")
    _footer(fig, seeds)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _footer(fig: Any, seeds: int) -> None:
    note = f"mean over {seeds} seeds, error bars min..max" if seeds > 1 else "one seed"
    fig.text(
        0.01,
        0.005,
        f"kaiser sweep: replayed TLB/PCID/CR3 events priced in cycles (docs/cost.md, docs/sweep.md); {note}.",
        fontsize=7,
        color="dimgray",
    )


def write_plots(rows: list[Row], out: Path) -> list[Path]:
    """Per workload: overhead vs each swept axis, and the per-variant bar chart."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        sub = [r for r in rows if r["workload"] == workload]
        axes = _axes(sub)
        for axis in axes:
            p = out / f"overhead-{workload}-{axis.removeprefix('knob_')}.png"
            plot_overhead_vs(sub, workload, axis, axes, p)
            written.append(p)
        p = out / f"bars-{workload}.png"
        plot_bars(sub, workload, axes, p)
        written.append(p)
    return written


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
    rows = table(spec.configs, store.load())
    store.write_csv(rows)
    drawn = write_plots(rows, store.out / "plots") if plots and rows else []
    return rows, drawn


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
        typer.Option("--out", "-o", callback=output_dir, help="Output directory (default: ./sweep-<spec name>)."),
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
    try:
        parsed = load_spec(spec)
    except SpecError as exc:
        fail(str(exc))
    out = out or Path(f"sweep-{spec.stem}")
    store = ResultStore(out)
    have = store.load()
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
        f"(this run: {state.ran} computed, {state.done_before} reused)"
        + (f"; plots: {len(drawn)} in {out / 'plots'}" if drawn else "")
    )
    if state.failed:
        fail(f"{len(state.failed)} configurations failed (see {store.failed}); first: {state.failed[0][1]}", code=1)


def main() -> None:
    """`python -m kaiser.cli.sweep` (the command alone, before it is registered in `kaiser`)."""
    typer.run(sweep_command)


if __name__ == "__main__":
    main()
