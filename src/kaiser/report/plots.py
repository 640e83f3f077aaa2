"""The report's plots, drawn with matplotlib from a `Results` and returned as PNG bytes.

Each function returns a `Figure` value (title, caption, PNG) or None when the data has nothing
to show for it (no syscalls, nothing swept, ...). Colours per variant and the PCID convention
(solid = PCID, dashed = no PCID) are those of `kaiser bench --plot`.
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kaiser.cli.bench import STYLE, SWEEP_WORK
from kaiser.cost.model import overhead_percent, rate_per_second
from kaiser.report.load import BASELINE, CYCLE_TERMS, STANDARD_METRICS, Results, Row

DPI = 100
NOPTI_COLOUR = "#7f7f7f"
TERM_COLOURS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494")  # not variant colours


@dataclass(frozen=True)
class Figure:
    """One plot of the report: what it shows (title, caption for the page) and the PNG."""

    key: str
    title: str
    caption: str
    png: bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _pyplot().close(fig)
    return buf.getvalue()


def colour(variant: str) -> str:
    return NOPTI_COLOUR if variant == BASELINE else STYLE.get(variant, "black")


def variant_order(rows: Iterable[Row]) -> list[str]:
    """Variants in registry order (nopti first), then any others as met."""
    names = list(dict.fromkeys(r.variant for r in rows))
    order = [BASELINE, *STYLE]
    return sorted(names, key=lambda v: (order.index(v) if v in order else len(order), names.index(v)))


def _pcid_label(pcid: bool | None) -> str:
    return "PCID" if pcid else ("no PCID" if pcid is False else "PCID n/a")


def _line_style(pcid: bool | None) -> dict[str, Any]:
    return {"linestyle": "--" if pcid is False else "-", "linewidth": 1.6 if pcid is False else 2.0}


# ---- overhead versus system-call rate ------------------------------------------------------------
def overhead_vs_rate(res: Results) -> Figure | None:
    """Bench: the exact curve (extra user work varied, event stream fixed), as `kaiser bench --plot`.
    Sweep: one point per configuration with a syscall rate, joined in rate order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.2))
    drawn = 0
    for variant in variant_order(res.rows):
        if variant == BASELINE:
            continue
        for pcid in (True, False, None):
            rows = [r for r in res.rows if r.variant == variant and r.pcid is pcid]
            pts = [pt for r in rows for pt in _rate_points(res, r)]
            pts = sorted(p for p in pts if p[0] > 0 and p[1] > 0)
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            marker = "o" if res.kind == "sweep" else None
            ax.plot(
                xs,
                ys,
                color=colour(variant),
                marker=marker,
                markersize=3,
                label=f"{variant}, {_pcid_label(pcid)}",
                **_line_style(pcid),
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    clock = f" at {res.clock_ghz:g} GHz" if res.clock_ghz else ""
    ax.set_xlabel(f"system calls per second per CPU (modelled nopti time{clock})")
    ax.set_ylabel("overhead vs nopti at the same work (%)")
    plain = plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9, ncol=2)
    ax.set_title("Cost of page-table isolation vs system-call rate (solid: PCID, dashed: no PCID)", fontsize=10)
    fig.tight_layout()
    if res.kind == "bench":
        caption = (
            "Each line is one variant at one PCID setting, priced against nopti at the same PCID setting. "
            "The rate is varied by adding user computation between system calls; the replayed events do "
            "not change, so each curve is exact for the model (as `kaiser bench --plot`)."
        )
    else:
        caption = (
            "One point per configuration of the sweep, at the system-call rate of the nopti run with the "
            "same settings, joined in rate order per variant and PCID setting."
        )
    return Figure("overhead-vs-rate", "Overhead vs system-call rate", caption, _png(fig))


def _rate_points(res: Results, r: Row) -> list[tuple[float, float]]:
    m = r.metrics
    if res.kind == "bench":
        if not m.get("syscalls") or "baseline_cycles_total" not in m:
            return []
        n, total, base = m["iterations"], m["cycles_total"], m["baseline_cycles_total"]
        params = _params(res)
        return [
            (
                rate_per_second(m["syscalls"], base + w * n, params),
                overhead_percent(total + w * n, base + w * n),
            )
            for w in SWEEP_WORK
        ]
    if "nopti_syscalls_per_second" in m and "overhead_percent" in m:
        return [(m["nopti_syscalls_per_second"], m["overhead_percent"])]
    return []


def _params(res: Results) -> Any:
    import dataclasses

    from kaiser.cost.params import SKYLAKE

    return dataclasses.replace(SKYLAKE, clock_ghz=res.clock_ghz) if res.clock_ghz else SKYLAKE


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


def overhead_vs_knob(res: Results, knob: str) -> Figure | None:
    """Sweep: mean overhead (over seeds and every other swept setting) against one swept knob."""
    rows = [r for r in res.rows if "overhead_percent" in r.metrics and r.variant != BASELINE]
    values = list(dict.fromkeys(r.config.get(knob, "") for r in rows))
    if len(values) < 2:
        return None
    nums = [_as_number(v) for v in values]
    numeric = all(n is not None for n in nums)
    pos: dict[str, float] = (
        {v: float(n) for v, n in zip(values, nums, strict=True) if n is not None}
        if numeric
        else {v: float(i) for i, v in enumerate(values)}
    )
    workloads = list(dict.fromkeys(r.workload for r in rows))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(workloads), figsize=(max(7.0, 4.6 * len(workloads)), 4.8), squeeze=False)
    for ax, wl in zip(axes[0], workloads, strict=True):
        sub = [r for r in rows if r.workload == wl]
        for variant in variant_order(sub):
            for pcid in (True, False, None):
                groups: dict[float, list[float]] = defaultdict(list)
                for r in sub:
                    if r.variant == variant and r.pcid is pcid:
                        groups[pos[r.config.get(knob, "")]].append(r.metrics["overhead_percent"])
                if not groups:
                    continue
                xs = sorted(groups)
                ax.plot(
                    xs,
                    [statistics.fmean(groups[x]) for x in xs],
                    color=colour(variant),
                    marker="o",
                    markersize=4,
                    label=f"{variant}, {_pcid_label(pcid)}",
                    **_line_style(pcid),
                )
        if numeric:
            lo, hi = min(pos.values()), max(pos.values())
            if lo > 0 and hi / lo >= 100:
                ax.set_xscale("log")
        else:
            ax.set_xticks(list(pos.values()), values, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(f"{knob}{' (bytes)' if numeric and _is_size(values) else ''}")
        ax.set_ylabel("overhead vs nopti (%)")
        ax.set_title(f"workload {wl}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, framealpha=0.9)
    fig.suptitle(f"Overhead vs {knob} (solid: PCID, dashed: no PCID)", fontsize=11)
    fig.tight_layout()
    others = [k for k in res.swept() if k != knob]
    caption = f"Mean overhead against nopti at each value of {knob}"
    caption += f", averaged over {', '.join(others)} and seeds." if others else ", averaged over seeds."
    return Figure(f"overhead-vs-{knob}", f"Overhead vs {knob}", caption, _png(fig))


def _is_size(values: list[str]) -> bool:
    return any(v and v[-1].isalpha() for v in values)


# ---- per-variant bars ----------------------------------------------------------------------------
BAR_METRICS = ("cycles_per_op", "walks", "cr3_writes")


def variant_bars(res: Results) -> Figure | None:
    """Cycles per op, page walks per op and CR3 writes per op, per variant, PCID on/off side by side
    (a sweep: the mean over its configurations, whiskers from the minimum to the maximum)."""
    metrics = [k for k in BAR_METRICS if any(k in r.metrics for r in res.rows)]
    if not metrics:
        return None
    variants = variant_order(res.rows)
    pcids = [p for p in (True, False, None) if any(r.pcid is p for r in res.rows)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4.6), squeeze=False)
    width = 0.8 / len(pcids)
    for ax, key in zip(axes[0], metrics, strict=True):
        for j, pcid in enumerate(pcids):
            xs, means, lo, hi = [], [], [], []
            for i, variant in enumerate(variants):
                vals = [
                    r.metrics[key] for r in res.rows if r.variant == variant and r.pcid is pcid and key in r.metrics
                ]
                if not vals:
                    continue
                mean = statistics.fmean(vals)
                xs.append(i + (j - (len(pcids) - 1) / 2) * width)
                means.append(mean)
                lo.append(mean - min(vals))
                hi.append(max(vals) - mean)
            if not xs:
                continue
            whiskers = (lo, hi) if any(lo) or any(hi) else None
            ax.bar(
                xs,
                means,
                width=width,
                yerr=whiskers,
                capsize=2,
                color=[colour(v) for v in variants if any(r.variant == v and r.pcid is pcid for r in res.rows)],
                hatch="//" if pcid is False else None,
                edgecolor="black",
                linewidth=0.5,
            )
        ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(STANDARD_METRICS[key])
        ax.set_title(STANDARD_METRICS[key], fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="white", edgecolor="black", hatch="//" if p is False else None, label=_pcid_label(p))
        for p in pcids
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles), framealpha=0.9)
    fig.suptitle("Per variant: cycles, page walks and CR3 writes per operation", fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    caption = "One operation is one workload iteration (for the syscall loops: one system call and its user work)."
    if res.kind == "sweep":
        caption += " Bars are the mean over the sweep's configurations; whiskers span the minimum to the maximum."
    return Figure("variant-bars", "Per-variant costs", caption, _png(fig))


def cycle_breakdown(res: Results) -> Figure | None:
    """Where the cycles of one operation go (kaiser.cost.model.price's terms), stacked per variant
    and PCID setting (a sweep: the mean over its configurations)."""
    have = [r for r in res.rows if any(f"cycles.{t}" in r.metrics for t in CYCLE_TERMS)]
    if not have:
        return None
    groups: dict[tuple[str, bool | None], list[Row]] = defaultdict(list)
    for r in sorted(have, key=lambda r: (variant_order(have).index(r.variant), r.pcid is False, r.pcid is None)):
        groups[(r.variant, r.pcid)].append(r)
    labels = [f"{variant}\n{_pcid_label(pcid)}" for variant, pcid in groups]
    means = {
        term: [statistics.fmean(r.metrics.get(f"cycles.{term}", 0.0) for r in rows) for rows in groups.values()]
        for term in CYCLE_TERMS
    }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(labels) + 2), 4.8))
    bottom = [0.0] * len(labels)
    for term, col in zip(CYCLE_TERMS, TERM_COLOURS, strict=True):
        vals = means[term]
        if not any(vals):
            continue
        ax.bar(range(len(labels)), vals, bottom=bottom, color=col, label=term.replace("_", " "), edgecolor="white")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("cycles per operation")
    ax.set_title("Where the cycles go, per variant and PCID setting", fontsize=11)
    ax.legend(fontsize=8, ncol=2, framealpha=0.9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    caption = (
        "The cost model's terms (docs/cost.md): translation = STLB hits and page walks; cr3 = CR3 writes "
        "(NOFLUSH or flushing); invalidation = INVLPG/INVPCID/CR4; the rest is the same work in every variant."
    )
    if res.kind == "sweep":
        caption += " Each bar is the mean over the sweep's configurations of that variant and PCID setting."
    return Figure("cycle-breakdown", "Where the cycles go", caption, _png(fig))


def figures(res: Results) -> list[Figure]:
    """Every plot the data supports, in the order the page shows them."""
    found = [overhead_vs_rate(res)]
    found += [overhead_vs_knob(res, knob) for knob in res.swept()]
    found += [variant_bars(res), cycle_breakdown(res)]
    return [f for f in found if f is not None]
