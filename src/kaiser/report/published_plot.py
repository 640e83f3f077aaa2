"""The picture of `kaiser bench published --plot`: every figure the model ran, model against
published on log-log axes, with the y = x line and the 1.5x band (the rows come from
kaiser.cost.published; plotting lives here, in the report layer, beside the other figures)."""

from __future__ import annotations

import textwrap
from typing import Any

from kaiser.cost.published import WITHIN, summary, within
from kaiser.report.draw import log_ticks, pyplot


def plot(rows: list[dict[str, Any]], file: Any) -> None:
    """Log-log: model against published for every row the model ran (fit: grey squares, on top;
    predicted: blue dots; the recorded kernel side's values), the same runs with the modelled
    kernel side as hollow red circles, the y = x line and the 1.5x band. Predictions outside the band carry
    their row number (the table's #), listed with their ratios beside the axes; a model value of
    0 sits on the bottom edge as a downward triangle."""
    plt = pyplot()
    numbered = [(i, r) for i, r in enumerate(rows, 1) if r["model"] is not None]
    pubs = [r["published"] for _, r in numbered]
    positive = [r["model"] for _, r in numbered if r["model"] > 0]
    lo, hi = min(pubs + positive) / 3, max(pubs + positive) * 3
    fig = plt.figure(figsize=(10, 6.2))
    ax = fig.add_axes((0.08, 0.09, 0.55, 0.82))
    log_ticks(ax, "x", lo, hi)
    log_ticks(ax, "y", lo, hi)
    xs = [lo, hi]
    ax.fill_between(xs, [x / WITHIN for x in xs], [x * WITHIN for x in xs], color="#2ca02c", alpha=0.18,
                    lw=0, label="within 1.5x")  # fmt: skip
    ax.plot(xs, xs, color="black", lw=1, label="model = published")
    for role, mk, col, z, size in (("predicted", "o", "#1f77b4", 3, 30), ("fit", "s", "#7f7f7f", 4, 45)):
        pts = [r for _, r in numbered if r["role"] == role]
        ax.scatter([r["published"] for r in pts if r["model"] > 0], [r["model"] for r in pts if r["model"] > 0],
                   marker=mk, s=size, color=col, zorder=z, label=f"{role} ({len(pts)})")  # fmt: skip
        zero = [r["published"] for r in pts if r["model"] <= 0]
        if zero:
            ax.scatter(zero, [lo * 1.15] * len(zero), marker="v", s=size, color=col, zorder=z, clip_on=False)
    mod = [r for _, r in numbered if r.get("modelled", {}).get("model")]  # the modelled kernel side's values
    ax.scatter([r["published"] for r in mod], [r["modelled"]["model"] for r in mod], marker="o", s=22,
               facecolors="none", edgecolors="#d62728", lw=0.8, zorder=2,
               label=f"modelled kernel side ({len(mod)})")  # fmt: skip
    outside = [(i, r) for i, r in numbered if r["role"] == "predicted" and not within(r["ratio"])]
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    # Each number goes to the first of a few spots (in pixels from its point) not crowding an
    # earlier number or another point.
    dots = [ax.transData.transform((r["published"], max(r["model"], lo * 1.15))) for _, r in numbered]
    taken: list[tuple[float, float]] = []
    spots = ((6, 2), (6, -11), (-16, 2), (-16, -11), (6, 12), (6, -21), (-16, 12), (-16, -21))
    for i, r in outside:
        y = r["model"] if r["model"] > 0 else lo * 1.15
        px, py = ax.transData.transform((r["published"], y))
        best = spots[0]
        for dx, dy in spots:
            cx, cy = px + dx * 1.67 + 6, py + dy * 1.67 + 5  # label centre at 120 dpi
            if all(abs(cx - tx) > 18 or abs(cy - ty) > 12 for tx, ty in taken) and all(
                abs(cx - d[0]) > 10 or abs(cy - d[1]) > 10 for d in dots
            ):
                best = (dx, dy)
                break
        taken.append((px + best[0] * 1.67 + 6, py + best[1] * 1.67 + 5))
        ax.annotate(str(i), (r["published"], y), fontsize=7, xytext=best, textcoords="offset points")
    ax.set_xlabel("published value (each row's own unit: cycles, lseeks/s, us, %, ratio)")
    ax.set_ylabel("model value")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    s = summary(rows)
    ax.set_title(
        f"kaiser cost model vs published KPTI figures: {s['predicted_within_1_5x']} of "
        f"{s['predicted_run']} predictions within 1.5x (modelled kernel side: "
        f"{s['modelled_predicted_within_1_5x']} of {s['modelled_predicted_run']})",
        fontsize=9,
    )
    lines = ["outside 1.5x (# of `kaiser bench published`):", ""] if outside else ["every prediction within 1.5x", ""]
    for i, r in outside:
        text = f"{i}. {r['source'].split(',')[0]}: {r['configuration']} ({r['metric']})"
        wrapped = textwrap.wrap(text, 46)
        lines += [*wrapped[:-1], f"{wrapped[-1]}: {r['ratio']:.2f}x", ""]
    if any(r["model"] <= 0 for _, r in numbered):
        lines.append("v on the bottom edge: model value 0")
    fig.text(0.66, 0.91, "\n".join(lines), fontsize=7, va="top", family="monospace")
    fig.savefig(file, dpi=120)
    plt.close(fig)
