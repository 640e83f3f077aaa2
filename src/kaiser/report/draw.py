"""What every kaiser plot shares: variant colours, the PCID line convention, readable log ticks,
legends outside the data, and the two figures more than one command draws.

`rate_figure` is overhead against system-call rate (`kaiser bench --plot`, `kaiser report` of a
bench run); `variant_dots` is a dot chart of one number per variant and PCID setting on an axis
that need not start at zero (`kaiser replay --plot`). Both return a matplotlib figure; the
caller saves it (`png_bytes` or `fig.savefig`).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kaiser.linux.variants import BASELINE

NOPTI_COLOUR = "#7f7f7f"
# One colour per isolating variant, in registry order (kaiser.linux.variants.VARIANTS).
VARIANT_COLOURS = {
    "kaiser-rfc": "#d62728",
    "kaiser-global": "#ff7f0e",
    "two-pgd": "#8c564b",
    "linux-4.15": "#9467bd",
    "linux": "#1f77b4",
    "fixed-trampoline": "#2ca02c",
}
# The rate curve's sweep: extra user computation per iteration, in cycles (the event stream does
# not depend on it, so one replay per variant and PCID setting gives the whole curve).
SWEEP_WORK = [0.0] + [float(round(10 ** (k / 8))) for k in range(8, 57)]
# The variant the ratio panels divide by: what Linux does today.
REFERENCE = "linux"
# Brendan Gregg, "KPTI/KAISER Meltdown Initial Performance Regressions" (2018): about 2 % at
# 50,000 system calls per second per CPU with PCID. Drawn as a reference point, never fitted.
GREGG_POINT = (50e3, 2.0)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def colour(variant: str) -> str:
    """The variant's colour in every plot (nopti grey, unknown variants black)."""
    return NOPTI_COLOUR if variant == BASELINE else VARIANT_COLOURS.get(variant, "black")


def order_key(variant: str) -> int:
    """Where the variant goes in legends and panels: nopti first, then registry order."""
    order = [BASELINE, *VARIANT_COLOURS]
    return order.index(variant) if variant in order else len(order)


def pcid_label(pcid: bool | None) -> str:
    """The legend text of a PCID setting (None: a result without one)."""
    return "PCID" if pcid else ("no PCID" if pcid is False else "PCID n/a")


def line_style(pcid: bool | None) -> dict[str, Any]:
    """Solid lines with PCID, dashed without."""
    return {"linestyle": "--" if pcid is False else "-", "linewidth": 1.6 if pcid is False else 2.0}


def marker(pcid: bool | None) -> dict[str, Any]:
    """Filled circle with PCID, open square without."""
    if pcid is False:
        return {"marker": "s", "markerfacecolor": "white", "markeredgewidth": 1.6}
    return {"marker": "o"}


def plain_number(value: float) -> str:
    """1000 -> 1k, 1e6 -> 1M, 0.01 -> 0.01: tick labels that never collide at a decade."""
    if value <= 0:
        return "0"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def log_ticks(ax: Any, axis: str, lo: float, hi: float) -> None:
    """A log axis labelled at decades only (1-2-5 when the data spans less than two decades);
    minor ticks unlabelled, so no two labels overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    span = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    subs = (1.0,) if span >= 2 else (1.0, 2.0, 5.0)
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_minor_locator(LogLocator(base=10, subs=tuple(float(s) for s in range(2, 10))))
    target.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
    target.set_minor_formatter(NullFormatter())


def style_legend(pcids: Sequence[bool | None], extra: Sequence[tuple[Any, str]] = ()) -> tuple[list[Any], list[str]]:
    """Handles for the PCID line styles (black), plus any extra (handle, label)."""
    from matplotlib.lines import Line2D

    handles: list[Any] = [Line2D([], [], color="black", **line_style(p), **marker(p)) for p in pcids]
    labels = [
        "PCID (NOFLUSH CR3 writes)" if p else ("no PCID (CR3 writes flush)" if p is False else "PCID n/a")
        for p in pcids
    ]
    for h, label in extra:
        handles.append(h)
        labels.append(label)
    return handles, labels


def variant_legend(variants: Sequence[str]) -> tuple[list[Any], list[str]]:
    """Legend handles and labels, one colour swatch per variant in `order_key` order."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=colour(v), linewidth=3) for v in variants], list(variants)


# ---- overhead versus system-call rate --------------------------------------------------------------
@dataclass(frozen=True)
class RateCurve:
    """One variant at one PCID setting: overhead (%) at each system-call rate, and the extra
    cycles per system call against nopti that fix the whole line (overhead = extra x rate / clock)."""

    variant: str
    pcid: bool | None
    rates: tuple[float, ...]
    overheads: tuple[float, ...]
    extra_per_call: float


def rate_figure(curves: Sequence[RateCurve], title: str, subtitle: str, clock_ghz: float, note: str = "") -> Any:
    """Left: overhead vs rate on log-log axes, one line per variant and PCID setting. Right: each
    line's overhead divided by `linux`'s at the same PCID setting. Overhead is linear in the rate
    (the replayed events do not change, only user work between calls), so the lines are parallel
    and this ratio is the same at every rate: the right panel separates what the left draws on top
    of each other."""
    plt = pyplot()
    fig = plt.figure(figsize=(11.5, 6.0))
    grid = fig.add_gridspec(1, 2, width_ratios=(2.3, 1.0), wspace=0.08)
    ax = fig.add_subplot(grid[0])
    side = fig.add_subplot(grid[1])
    curves = sorted(curves, key=lambda c: (order_key(c.variant), c.pcid is False, c.pcid is None))
    xs_all = [x for c in curves for x, y in zip(c.rates, c.overheads, strict=True) if x > 0 and y > 0]
    ys_all = [y for c in curves for x, y in zip(c.rates, c.overheads, strict=True) if x > 0 and y > 0]
    for c in curves:
        pts = [(x, y) for x, y in zip(c.rates, c.overheads, strict=True) if x > 0 and y > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=colour(c.variant), **line_style(c.pcid))
    x_lo, x_hi = min(xs_all), max(xs_all)
    y_lo, y_hi = min(ys_all), max(ys_all)
    star = None
    if x_lo <= GREGG_POINT[0] <= x_hi:
        ax.axvline(GREGG_POINT[0], color="grey", linewidth=0.8, linestyle=":")
        (star,) = ax.plot(*GREGG_POINT, marker="*", markersize=14, color="black", linestyle="none", zorder=5)
        y_lo, y_hi = min(y_lo, GREGG_POINT[1]), max(y_hi, GREGG_POINT[1])
    log_ticks(ax, "x", x_lo, x_hi)
    log_ticks(ax, "y", y_lo, y_hi)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo / 1.3, y_hi * 1.3)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.1)
    ax.set_xlabel(f"system calls per second per CPU (modelled time of the nopti run at {clock_ghz:g} GHz)")
    ax.set_ylabel("overhead vs nopti at the same work (%)")
    pcids = list(dict.fromkeys(c.pcid for c in curves))
    extra = [(star, "Gregg 2018: ~2 % at 50k syscalls/s")] if star is not None else []
    handles, labels = style_legend(pcids, extra)
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.125), ncol=3, frameon=False)
    _ratio_panel(side, curves)
    fig.suptitle(title, fontsize=13, x=0.01, y=0.985, ha="left")
    fig.text(0.01, 0.925, textwrap.fill(subtitle, 170), fontsize=8, va="top")
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgray")
    fig.subplots_adjust(left=0.07, right=0.89, top=0.86, bottom=0.19)
    return fig


def _ratio_panel(ax: Any, curves: Sequence[RateCurve]) -> None:
    """Each curve's overhead over the reference variant's at its PCID setting, as dots per variant,
    with the extra cycles per system call printed beside each dot."""
    ref = {c.pcid: c.extra_per_call for c in curves if c.variant == REFERENCE}
    if not ref:  # no linux in the run: divide by the first variant drawn
        first = curves[0].variant
        ref = {c.pcid: c.extra_per_call for c in curves if c.variant == first}
        name = first
    else:
        name = REFERENCE
    variants = list(dict.fromkeys(c.variant for c in curves))
    pcids = list(dict.fromkeys(c.pcid for c in curves))
    offset = {p: (k - (len(pcids) - 1) / 2) * 0.28 for k, p in enumerate(pcids)}
    ratios = []
    for c in curves:
        base = ref.get(c.pcid)
        if not base or c.extra_per_call <= 0:
            continue
        r = c.extra_per_call / base
        ratios.append(r)
        y = variants.index(c.variant) + offset[c.pcid]
        ax.plot([r], [y], color=colour(c.variant), markersize=7, linestyle="none", **marker(c.pcid))
        ax.annotate(
            f"{c.extra_per_call:,.0f}", (r, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7
        )
    ax.axvline(1.0, color="grey", linewidth=0.8)
    if ratios:
        lo, hi = min([*ratios, 1.0]), max([*ratios, 1.0])
        pad = max(hi - lo, 0.02) * 0.25
        ax.set_xlim(lo - pad, hi + 3 * pad)  # room on the right for the labels
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.yaxis.tick_right()
    for tick, v in zip(ax.yaxis.get_major_ticks(), variants, strict=True):
        tick.label2.set_color(colour(v))
    ax.set_ylim(len(variants) - 0.5, -0.5)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_xlabel(f"overhead / {name}'s at the same PCID setting\n(the same at every rate)")
    ax.set_title("labels: extra cycles per system call", fontsize=8, loc="left")


# ---- one number per variant ------------------------------------------------------------------------
def variant_dots(
    ax: Any,
    values: dict[tuple[str, bool | None], float],
    xlabel: str,
    fmt: str = "{:+.2f}",
    zero_line: bool = True,
) -> None:
    """A dot chart: one row per variant, one dot per PCID setting, each labelled with its value.
    The axis spans the values, not zero to the largest, so a 1 % difference is as visible as a
    100 % one (dots, unlike bars, do not claim a length from zero)."""
    variants = sorted(dict.fromkeys(v for v, _ in values), key=order_key)
    pcids = list(dict.fromkeys(p for _, p in values))
    offset = {p: (k - (len(pcids) - 1) / 2) * 0.28 for k, p in enumerate(pcids)}
    for (v, p), x in values.items():
        y = variants.index(v) + offset[p]
        ax.plot([x], [y], color=colour(v), markersize=8, linestyle="none", **marker(p))
        ax.annotate(fmt.format(x), (x, y), xytext=(7, 0), textcoords="offset points", va="center", fontsize=8)
    xs = list(values.values())
    lo, hi = min(xs), max(xs)
    pad = max(hi - lo, abs(hi) * 0.02, 1e-9) * 0.15
    ax.set_xlim(lo - pad, hi + 3 * pad)
    if zero_line and lo - pad < 0 < hi + 3 * pad:
        ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(variants)), variants, fontsize=9)
    for label, v in zip(ax.get_yticklabels(), variants, strict=True):
        label.set_color(colour(v))
    ax.set_ylim(len(variants) - 0.5, -0.5)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_xlabel(xlabel)


def replay_figure(
    title: str, cycles: dict[tuple[str, bool | None], float], overheads: dict[tuple[str, bool | None], float]
) -> Any:
    """`kaiser replay --plot`: modelled cycles of the whole trace (nopti included) and overhead vs
    nopti, per variant and PCID setting, as dot charts whose axes span the values."""
    plt = pyplot()
    n = len({v for v, _ in cycles})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 1.6 + 0.55 * n), sharey=False)
    variant_dots(
        left, {k: v / 1e6 for k, v in cycles.items()}, "modelled cycles of the trace (millions)", "{:,.4f}", False
    )
    if overheads:
        variant_dots(right, overheads, "overhead vs nopti at the same PCID setting (%)", "{:+.2f}%")
    else:
        right.set_axis_off()
    pcids = list(dict.fromkeys(p for _, p in cycles))
    handles, labels = style_legend(pcids)
    fig.legend([_dot(h) for h in handles], labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return fig


def _dot(handle: Any) -> Any:
    handle.set_linestyle("none")
    return handle
