"""The report's plots, drawn with matplotlib from a `Results` and returned as PNG bytes.

Each function returns a `Figure` value (title, caption, PNG) or None when the data has nothing
to show for it (no syscalls, nothing swept, ...). Colours per variant and the PCID convention
(solid = PCID, dashed = no PCID) are those of `kaiser bench --plot`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaiser.cost.model import overhead_percent, rate_per_second
from kaiser.linux.variants import BASELINE
from kaiser.report import draw
from kaiser.report.draw import REFERENCE, SWEEP_WORK, RateCurve, colour, line_style, marker, order_key, pcid_label
from kaiser.report.load import CYCLE_TERMS, NOT_SWEPT, STANDARD_METRICS, Results, Row, load_sweep, show_value

DPI = 100
TERM_COLOURS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494")  # not variant colours
WORKLOAD_MARKERS = ("o", "^", "D", "v", "P", "X", "h")


@dataclass(frozen=True)
class Figure:
    """One plot of the report: what it shows (title, caption for the page) and the PNG."""

    key: str
    title: str
    caption: str
    png: bytes


def _pyplot() -> Any:
    return draw.pyplot()


def _png(fig: Any) -> bytes:
    return draw.png_bytes(fig, DPI)


__all__ = ["Figure", "colour", "figures", "variant_order", "write_sweep_plots"]


def variant_order(rows: Iterable[Row]) -> list[str]:
    """Variants in registry order (nopti first), then any others as met."""
    names = list(dict.fromkeys(r.variant for r in rows))
    return sorted(names, key=lambda v: (order_key(v), names.index(v)))


def _pcid_order(rows: Iterable[Row]) -> list[bool | None]:
    present = {r.pcid for r in rows}
    return [p for p in (True, False, None) if p in present]


def varying(rows: list[Row], keys: Iterable[str]) -> list[str]:
    """The configuration keys that take more than one value in these rows (seed, iterations,
    warm-up and path excluded: results are averaged over seeds, the rest is no design knob)."""
    return [k for k in keys if k not in NOT_SWEPT and len({r.config.get(k, "") for r in rows}) > 1]


def base_rows(rows: list[Row], keys: Iterable[str], keep: str | None = None) -> list[Row]:
    """The rows at the base setting: every varying key but `keep` at its first value (results.csv
    is in spec order, and the first value of each list is the spec's base setting)."""
    fixed = {k: rows[0].config.get(k, "") for k in varying(rows, keys) if k != keep}
    return [r for r in rows if all(r.config.get(k, "") == v for k, v in fixed.items())]


def _workload_rows(res: Results) -> list[tuple[str, list[Row]]]:
    return [(wl, [r for r in res.rows if r.workload == wl]) for wl in res.workloads]


def _base_note(res: Results, rows: list[Row], keep: str | None) -> str:
    """What a base-setting plot holds fixed, as text (`reads=0, geometry=skylake-client`)."""
    fixed = [k for k in varying(rows, res.config_keys) if k != keep]
    return ", ".join(f"{k}={_show(rows[0].workload, k, rows[0].config.get(k, ''))}" for k in fixed)


def _show(workload: str, key: str, text: str) -> str:
    return show_value(workload, key, text)


# ---- overhead versus system-call rate ------------------------------------------------------------
def overhead_vs_rate(res: Results) -> Figure | None:
    """Bench: the exact curves of `kaiser bench --plot` (extra user work varied, event stream
    fixed) and their ratio to linux's. Sweep: one dot per configuration, a panel per PCID setting."""
    if res.kind == "sweep":
        return _rate_scatter(res)
    curves = []
    for r in res.rows:
        m = r.metrics
        if r.variant == BASELINE or not m.get("syscalls") or "baseline_cycles_total" not in m:
            continue
        pts = _rate_points(res, r)
        curves.append(
            RateCurve(
                variant=r.variant,
                pcid=r.pcid,
                rates=tuple(x for x, _ in pts),
                overheads=tuple(y for _, y in pts),
                extra_per_call=(m["cycles_total"] - m["baseline_cycles_total"]) / m["syscalls"],
            )
        )
    if not curves or not any(y > 0 for c in curves for y in c.overheads):
        return None
    wl = res.rows[0].workload
    knobs = " ".join(f"{k}={_show(wl, k, v)}" for k, v in res.rows[0].config.items() if k != "work")
    fig = draw.rate_figure(
        curves,
        "Cost of kernel page-table isolation vs system-call rate",
        f"{', '.join(res.workloads)}: {knobs}",
        res.clock_ghz or _params(res).clock_ghz,
    )
    caption = (
        "Left: one line per variant and PCID setting (solid: PCID, dashed: no PCID), priced against nopti at "
        "the same PCID setting; the rate is varied by adding user computation between system calls, and the "
        "replayed events do not change, so each line is exact for the model (kaiser bench --plot draws the same). "
        "Overhead is then proportional to the rate, so the lines are parallel; right: each line's overhead "
        "over linux's, the same at every rate, with the extra cycles per system call that fix the line."
    )
    return Figure("overhead-vs-rate", "Overhead vs system-call rate", caption, _png(fig))


def _rate_points(res: Results, r: Row) -> list[tuple[float, float]]:
    m = r.metrics
    n, total, base = m["iterations"], m["cycles_total"], m["baseline_cycles_total"]
    params = _params(res)
    return [
        (
            rate_per_second(m["syscalls"], base + w * n, params),
            overhead_percent(total + w * n, base + w * n),
        )
        for w in SWEEP_WORK
    ]


def _params(res: Results) -> Any:
    import dataclasses

    from kaiser.cost.params import SKYLAKE

    return dataclasses.replace(SKYLAKE, clock_ghz=res.clock_ghz) if res.clock_ghz else SKYLAKE


def _rate_scatter(res: Results) -> Figure | None:
    """Every sweep configuration as one dot at the rate of its nopti run, a panel per PCID setting;
    the grey diagonals are constant extra cycles per system call (overhead = extra x rate / clock)."""
    pts = [
        r
        for r in res.rows
        if r.variant != BASELINE
        and r.metrics.get("nopti_syscalls_per_second", 0) > 0
        and r.metrics.get("overhead_percent", 0) > 0
    ]
    if not pts:
        return None
    pcids = _pcid_order(pts)
    workloads = list(dict.fromkeys(r.workload for r in pts))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(pcids), figsize=(5.0 * len(pcids) + 2.4, 5.0), sharey=True, squeeze=False)
    xs = [r.metrics["nopti_syscalls_per_second"] for r in pts]
    ys = [r.metrics["overhead_percent"] for r in pts]
    clock = res.clock_ghz or _params(res).clock_ghz
    for ax, pcid in zip(axes[0], pcids, strict=True):
        for r in (r for r in pts if r.pcid is pcid):
            ax.plot(
                [r.metrics["nopti_syscalls_per_second"]],
                [r.metrics["overhead_percent"]],
                linestyle="none",
                marker=WORKLOAD_MARKERS[workloads.index(r.workload) % len(WORKLOAD_MARKERS)],
                markersize=5,
                color=colour(r.variant),
                alpha=0.75,
            )
        draw.log_ticks(ax, "x", min(xs), max(xs))
        draw.log_ticks(ax, "y", min(ys), max(ys))
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
        ax.set_ylim(min(ys) / 1.3, max(ys) * 1.3)
        _per_call_diagonals(ax, clock)
        ax.grid(True, which="major", alpha=0.35)
        ax.set_title(pcid_label(pcid), fontsize=10, loc="left")
        ax.set_xlabel(f"system calls/s of the nopti run ({clock:g} GHz)")
    axes[0][0].set_ylabel("overhead vs nopti at the same settings (%)")
    from matplotlib.lines import Line2D

    handles, labels = draw.variant_legend(variant_order(pts))
    for i in range(len(workloads)):
        handles.append(Line2D([], [], color="black", marker=WORKLOAD_MARKERS[i], linestyle="none"))
    labels += [f"workload {wl}" for wl in workloads]
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle("Overhead vs system-call rate, every configuration of the sweep", fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / (5.0 * len(pcids) + 2.4), 0.95))
    caption = (
        "One dot per configuration (variant colour, workload marker), at the system-call rate of the nopti run "
        "with the same settings. Dots are not joined: neighbours in rate are different configurations. The grey "
        "diagonals are constant extra cycles per system call, so a dot's diagonal is its price per call."
    )
    return Figure("overhead-vs-rate", "Overhead vs system-call rate", caption, _png(fig))


def _per_call_diagonals(ax: Any, clock_ghz: float) -> None:
    """overhead % = 100 x extra cycles per call x calls per second / cycles per second."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for extra in (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000):
        k = 100 * extra / (clock_ghz * 1e9)
        ya, yb = k * x0, k * x1
        if yb < y0 or ya > y1:
            continue
        ax.plot([x0, x1], [ya, yb], color="grey", linewidth=0.6, linestyle=":", zorder=0)
        xl = min(x1, y1 / k) / 1.15  # label near the top or the right edge, inside the axes
        ax.annotate(
            f"{draw.plain_number(extra)} cyc/call", (xl, k * xl), fontsize=6, color="grey", ha="right", va="bottom"
        )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


# ---- overhead versus a swept knob ----------------------------------------------------------------
def _as_number(text: str) -> float | None:
    from kaiser.cost.workloads import WorkloadError, parse_size

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(parse_size(text))
    except WorkloadError:
        return None


def _common_prefix(values: list[str]) -> str:
    """The words every label starts with (geometry labels repeat the preset and structure)."""
    import os

    prefix = os.path.commonprefix(values)
    cut = max(prefix.rfind(" "), prefix.rfind("="))
    return prefix[: cut + 1] if cut >= 0 else ""


def knob_panels(res: Results, knob: str) -> list[tuple[str, list[Row], list[Row]]]:
    """(workload, its rows, the isolating rows at the base setting of everything but `knob`) for
    each workload in which `knob` takes more than one value there."""
    panels = []
    for wl, rows in _workload_rows(res):
        if knob not in varying(rows, res.config_keys):
            continue
        sub = [r for r in base_rows(rows, res.config_keys, keep=knob) if "overhead_percent" in r.metrics]
        sub = [r for r in sub if r.variant != BASELINE]
        if len({r.config.get(knob, "") for r in sub}) > 1:
            panels.append((wl, rows, sub))
    return panels


def overhead_vs_knob(res: Results, knob: str) -> Figure | None:
    """Sweep: overhead against one swept knob, in each workload where that knob varies, every
    other varying setting at its base value, mean over seeds (whiskers: min..max); below it, each
    variant's overhead over linux's, so lines drawn on top of each other above come apart."""
    panels = knob_panels(res, knob)
    if not panels:
        return None
    plt = _pyplot()
    width = 6.0 * len(panels) + 2.2
    fig, axes = plt.subplots(
        2, len(panels), figsize=(width, 6.6), squeeze=False, sharex="col", gridspec_kw={"height_ratios": (2.2, 1)}
    )
    shown: list[str] = []
    pcids: list[bool | None] = []
    for col, (wl, rows, sub) in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        values = list(dict.fromkeys(r.config.get(knob, "") for r in sub))
        nums = [_as_number(v) for v in values]
        numeric = all(n is not None for n in nums)
        if numeric:
            values = [v for _, v in sorted(zip(nums, values, strict=True))]
        pos = {v: (float(_as_number(v) or 0.0) if numeric else float(i)) for i, v in enumerate(values)}
        series: dict[tuple[str, bool | None], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in sub:
            series[(r.variant, r.pcid)][r.config.get(knob, "")].append(r.metrics["overhead_percent"])
        ref = {p: pts for (v, p), pts in series.items() if v == REFERENCE}
        for (variant, pcid), pts in sorted(series.items(), key=lambda kv: (order_key(kv[0][0]), kv[0][1] is False)):
            order = [v for v in values if v in pts]
            xs = [pos[v] for v in order]
            ys = [statistics.fmean(pts[v]) for v in order]
            # fmean can round a hair outside [min, max]: matplotlib refuses a negative error bar
            lo = [max(0.0, y - min(pts[v])) for v, y in zip(order, ys, strict=True)]
            hi = [max(0.0, max(pts[v]) - y) for v, y in zip(order, ys, strict=True)]
            style = {"color": colour(variant), "markersize": 4, **line_style(pcid), **marker(pcid)}
            top.errorbar(xs, ys, yerr=(lo, hi) if any(lo) or any(hi) else None, capsize=2, **style)
            if variant not in shown:
                shown.append(variant)
            if pcid not in pcids:
                pcids.append(pcid)
            base = ref.get(pcid)
            if base is not None:
                ok = [v for v in order if v in base and statistics.fmean(base[v]) > 0]
                ratios = [statistics.fmean(pts[v]) / statistics.fmean(base[v]) for v in ok]
                bottom.plot([pos[v] for v in ok], ratios, **style)
        if numeric:
            xs_all = list(pos.values())
            positive = [x for x in xs_all if x > 0]
            if positive and max(xs_all) / min(positive) >= 8:
                for ax in (top, bottom):
                    if 0 in xs_all:
                        ax.set_xscale("symlog", linthresh=min(positive))
                    else:
                        ax.set_xscale("log")
            for ax in (top, bottom):
                ax.minorticks_off()
        prefix = "" if numeric else _common_prefix(values)
        bottom.set_xticks(list(pos.values()), [_show(wl, knob, v).removeprefix(prefix) for v in values], fontsize=8)
        unit = " (bytes)" if numeric and _show(wl, knob, values[-1]) != values[-1] else ""
        bottom.set_xlabel(f"{knob}: {prefix}…" if prefix else f"{knob}{unit}")
        note = _base_note(res, rows, knob)
        top.set_title(f"workload {wl}" + (f"; {note}" if note else ""), fontsize=8, loc="left")
        top.grid(True, alpha=0.3)
        bottom.grid(True, alpha=0.3)
        bottom.axhline(1.0, color="grey", linewidth=0.8)
    axes[0][0].set_ylabel("overhead vs nopti (%)")
    axes[1][0].set_ylabel(f"overhead / {REFERENCE}'s")
    handles, labels = draw.variant_legend(shown)
    h2, l2 = draw.style_legend(pcids)
    fig.legend(handles + h2, labels + l2, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"Overhead vs {knob}", fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1 - 2.1 / width, 0.96))
    caption = (
        f"Overhead against nopti at each value of {knob}, in each workload where it varies, with every other "
        "swept setting at its base (first) value as the panel title says; the mean over seeds, whiskers from "
        f"the minimum to the maximum. Below: each variant's overhead over {REFERENCE}'s at the same PCID setting."
    )
    return Figure(f"overhead-vs-{knob}", f"Overhead vs {knob}", caption, _png(fig))


# ---- per-variant bars ----------------------------------------------------------------------------
BAR_METRICS = ("cycles_per_op", "walks", "cr3_writes")


def _groups(res: Results) -> list[tuple[str, list[Row]]]:
    """What the per-variant plots draw one row of panels for: a bench run as it is; a sweep per
    workload at its base setting (means over seeds only, never over different configurations)."""
    if res.kind == "bench":
        return [(", ".join(res.workloads), list(res.rows))]
    out = []
    for wl, rows in _workload_rows(res):
        note = _base_note(res, rows, None)
        out.append((f"{wl}" + (f" at {note}" if note else ""), base_rows(rows, res.config_keys)))
    return out


def variant_bars(res: Results) -> Figure | None:
    """Cycles per op, page walks per op and CR3 writes per op, per variant, PCID on/off side by
    side, each bar labelled with its value (a sweep: a row per workload at the base setting, the
    mean over seeds with whiskers from the minimum to the maximum)."""
    metrics = [k for k in BAR_METRICS if any(k in r.metrics for r in res.rows)]
    if not metrics:
        return None
    groups = _groups(res)
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(groups), len(metrics), figsize=(4.6 * len(metrics), 0.6 + 4.2 * len(groups)), squeeze=False
    )
    pcids_all: list[bool | None] = []
    for row_axes, (label, rows) in zip(axes, groups, strict=True):
        variants = variant_order(rows)
        pcids = _pcid_order(rows)
        pcids_all += [p for p in pcids if p not in pcids_all]
        width = 0.8 / len(pcids)
        for ax, key in zip(row_axes, metrics, strict=True):
            top = max((r.metrics[key] for r in rows if key in r.metrics), default=0.0)
            digits = 0 if top >= 100 else (1 if top >= 10 else 2)  # one format per panel
            for j, pcid in enumerate(pcids):
                xs, means, lo, hi, cols = [], [], [], [], []
                for i, variant in enumerate(variants):
                    vals = [r.metrics[key] for r in rows if (r.variant, r.pcid) == (variant, pcid) and key in r.metrics]
                    if not vals:
                        continue
                    mean = statistics.fmean(vals)
                    xs.append(i + (j - (len(pcids) - 1) / 2) * width)
                    means.append(mean)
                    lo.append(mean - min(vals))
                    hi.append(max(vals) - mean)
                    cols.append(colour(variant))
                if not xs:
                    continue
                bars = ax.bar(
                    xs,
                    means,
                    width=width,
                    yerr=(lo, hi) if any(lo) or any(hi) else None,
                    capsize=2,
                    color=cols,
                    hatch="//" if pcid is False else None,
                    edgecolor="black",
                    linewidth=0.5,
                )
                ax.bar_label(bars, fmt=f"%.{digits}f", fontsize=6, rotation=90, padding=2)
            ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right", fontsize=8)
            ax.set_ylabel(STANDARD_METRICS[key])
            ax.margins(y=0.18)  # room above the tallest bar for its label
            ax.grid(True, axis="y", alpha=0.3)
        row_axes[0].set_title(label if res.kind == "sweep" else "", fontsize=9, loc="left")
    for ax, key in zip(axes[0], metrics, strict=True):
        if res.kind == "bench":
            ax.set_title(STANDARD_METRICS[key], fontsize=10)
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="white", edgecolor="black", hatch="//" if p is False else None, label=pcid_label(p))
        for p in pcids_all
    ]
    title = "Per variant: " + ", ".join(STANDARD_METRICS[k].removesuffix("/op") for k in metrics) + " per operation"
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (0.6 + 4.2 * len(groups))))
    caption = "One operation is one workload iteration (for the syscall loops: one system call and its user work)."
    if res.kind == "sweep":
        caption += (
            f" One row per workload at its base setting ({', '.join(metrics)} per operation); bars are the mean "
            "over seeds, whiskers span the minimum to the maximum."
        )
    return Figure("variant-bars", "Per-variant costs", caption, _png(fig))


def cycle_breakdown(res: Results) -> Figure | None:
    """Where the cycles of one operation go (kaiser.cost.model.price's terms), stacked per variant
    and PCID setting (a sweep: a panel per workload at its base setting, the mean over seeds)."""
    if not any(any(f"cycles.{t}" in r.metrics for t in CYCLE_TERMS) for r in res.rows):
        return None
    groups = _groups(res)
    plt = _pyplot()
    n_bars = max(len(variant_order(rows)) * len(_pcid_order(rows)) for _, rows in groups)
    width = max(7.0, 0.95 * n_bars + 3.2)
    fig, axes = plt.subplots(len(groups), 1, figsize=(width, 0.6 + 4.0 * len(groups)), squeeze=False)
    used: list[str] = []
    for ax, (label, rows) in zip(axes[:, 0], groups, strict=True):
        have = [r for r in rows if any(f"cycles.{t}" in r.metrics for t in CYCLE_TERMS)]
        bins: dict[tuple[str, bool | None], list[Row]] = defaultdict(list)
        order = variant_order(have)
        for r in sorted(have, key=lambda r: (order.index(r.variant), r.pcid is False, r.pcid is None)):
            bins[(r.variant, r.pcid)].append(r)
        names = [f"{variant}\n{pcid_label(pcid)}" for variant, pcid in bins]
        bottom = [0.0] * len(names)
        for term, col in zip(CYCLE_TERMS, TERM_COLOURS, strict=True):
            vals = [statistics.fmean(r.metrics.get(f"cycles.{term}", 0.0) for r in b) for b in bins.values()]
            if not any(vals):
                continue
            ax.bar(range(len(names)), vals, bottom=bottom, color=col, edgecolor="white")
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            if term not in used:
                used.append(term)
        for i, total in enumerate(bottom):
            ax.annotate(f"{total:,.0f}", (i, total), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_ylabel("cycles per operation")
        ax.margins(y=0.1)
        ax.grid(True, axis="y", alpha=0.3)
        if res.kind == "sweep":
            ax.set_title(f"workload {label}", fontsize=9, loc="left")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=TERM_COLOURS[CYCLE_TERMS.index(t)], label=t.replace("_", " ")) for t in reversed(used)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, title="term (top to bottom)")
    fig.suptitle("Where the cycles go, per variant and PCID setting", fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / width, 1 - 0.3 / (0.6 + 4.0 * len(groups))))
    caption = (
        "The cost model's terms (docs/cost.md): translation = STLB hits and page walks; cr3 = CR3 writes "
        "(NOFLUSH or flushing); invalidation = INVLPG/INVPCID/CR4; the rest is the same work in every variant. "
        "The number on each bar is its total."
    )
    if res.kind == "sweep":
        caption += " A panel per workload at its base setting; each bar is the mean over seeds."
    return Figure("cycle-breakdown", "Where the cycles go", caption, _png(fig))


def figures(res: Results) -> list[Figure]:
    """Every plot the data supports, in the order the page shows them."""
    found = [overhead_vs_rate(res)]
    found += [overhead_vs_knob(res, knob) for knob in res.swept()]
    found += [variant_bars(res), cycle_breakdown(res)]
    return [f for f in found if f is not None]


def write_sweep_plots(results_csv: Path, out: Path) -> list[Path]:
    """The figures `kaiser report` draws of a sweep (`figures`), read back from its results.csv,
    one PNG per figure named by its key (`overhead-vs-reads.png`) in `out` (`kaiser sweep`'s
    plots/). The PNGs of an earlier run are removed first: a knob no longer swept leaves no stale
    plot."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    written = []
    for fig in figures(load_sweep(results_csv)):
        p = out / f"{fig.key}.png"
        p.write_bytes(fig.png)
        written.append(p)
    return written
