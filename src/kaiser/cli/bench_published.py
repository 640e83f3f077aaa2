"""`kaiser bench published`: the cost model run on every published KPTI figure (docs/cost.md),
with the ratio model/published and whether the figure was fitted or is predicted
(kaiser.cost.published)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from kaiser.cli.options import ReplayPathOption, plot_file
from kaiser.cli.output import Col, console, emit_json, print_table, progress_bar

if TYPE_CHECKING:
    from kaiser.cost.run import Path as ReplayPath


def published_command(
    json_out: Annotated[bool, typer.Option("--json", help='Print JSON: {"rows": [...], "summary": {...}}.')] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", parser=plot_file, help="Draw model vs published (log-log, 1.5x band) into this PNG."),
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the tables of docs/cost.md (FIT parameters, fit/predict).")
    ] = False,
    path: ReplayPathOption = None,
) -> None:
    """Run the cost model on every published KPTI figure and compare.

    For each figure (its source, configuration and metric; see docs/cost.md "Fit and predict"):
    published value, model value, ratio, and role (fit: a FIT parameter was set from it;
    predicted; not run: the model cannot run it, and why; no value: its runs give no finite
    value, and why)."""
    from kaiser.cost import published as pub

    with progress_bar(disable=json_out or markdown) as bar:
        task = bar.add_task("running", total=len(pub.FIGURES))

        def tick(label: str) -> None:
            bar.update(task, description=f"running {label[:30]}")
            bar.advance(task)

        rows = pub.published_rows(cast("ReplayPath | None", path), progress=tick)
    if plot is not None:
        from kaiser.report.published_plot import plot as draw_published  # matplotlib: only when asked

        draw_published(rows, plot)
    s = pub.summary(rows)
    if markdown:
        sys.stdout.write(f"{pub.fit_markdown(rows)}\n\n{pub.markdown_table(rows)}\n")
        return
    if json_out:
        emit_json({"rows": rows, "summary": s, "plot": str(plot) if plot else None})
        return
    cols = [
        Col("#", justify="right"),
        Col("figure (source: configuration; metric)", whole=False),
        Col("published", justify="right"),
        Col("model", justify="right"),
        Col("ratio", justify="right"),
        Col("modelled", justify="right"),
        Col("ratio", justify="right"),
        Col("role"),
    ]
    cells = []
    notes = []
    for i, r in enumerate(rows, 1):
        c = pub.table_cells(r)
        cells.append([str(i), f"{c[0]}: {c[1]}; {c[2]}", *c[3:9]])
        notes.append(f"{i}. {c[9]}" + (f"; {r['why']}" if r["runs"] and r["why"] else ""))
    print_table(
        cols,
        cells,
        title="the model against published KPTI figures (model: recorded kernel side; modelled: entry.py's)",
    )
    console.print("run on (machine or caches and clock), or why not run:", highlight=False)
    for note in notes:
        console.print(note, highlight=False)
    off = [r for r in rows if r["role"] == "predicted" and not pub.within(r["ratio"])]
    console.print(
        f"{s['rows']} figures: {s['fit']} fit, {s['predicted_run']} predicted and run, {s['not_run']} not run, "
        f"{s['no_value']} with no model value; "
        f"{s['predicted_within_1_5x']} of {s['predicted_run']} predictions within 1.5x"
        + ("; outside: " + ", ".join(f"{r['ratio']:.2f}" for r in off) if off else "")
        + f" (modelled kernel side: {s['modelled_predicted_within_1_5x']} of {s['modelled_predicted_run']})"
        + f". {pub.ITERATIONS} measured iterations after {pub.WARMUP} warm-up per run (docs/cost.md)."
    )
    if plot is not None:
        console.print(f"plot written to {plot}")
