"""One self-contained HTML page from a `Results`: header, how-to-read note, plots, tables.

Self-contained means readable offline from a single file: the plots are inline base64 PNGs, the
style is one inline `<style>`, and a Content-Security-Policy forbids the page from loading
anything that is not inside it. All text from the input passes through `html.escape`. A short
inline script records, on load, each image's decoded size in `data-natural-width` /
`data-natural-height` (a browser test reads them back with `--dump-dom`).
"""

from __future__ import annotations

import base64
import html
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from kaiser.linux.variants import BASELINE
from kaiser.report.load import STANDARD_METRICS, Results, Row
from kaiser.report.plots import Figure, figures, variant_order

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1a1a1a; background: #fff; margin: 0 auto; max-width: 1180px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ccc; padding-bottom: 3px; }
.generated { color: #555; font-size: 12px; margin: 0 0 12px; }
dl.run { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0;
         background: #f6f7f9; border: 1px solid #dde; border-radius: 4px; padding: 10px 14px; }
dl.run dt { font-weight: 600; color: #333; }
dl.run dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px;
            overflow-wrap: anywhere; }
.howto { background: #fffbe6; border: 1px solid #e8dca0; border-radius: 4px; padding: 6px 14px; }
.howto li { margin: 3px 0; }
figure { margin: 18px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { color: #444; font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; }
td { white-space: nowrap; }
#params td:last-child { white-space: normal; }
th { background: #eef1f5; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
tr.baseline td { color: #555; }
.note { color: #555; font-size: 12px; }
.wide { overflow-x: auto; }
"""

# Records each image's decoded size once the page has loaded (0 means it did not decode).
SCRIPT = """
(function () {
  function mark() {
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) {
      imgs[i].setAttribute('data-natural-width', String(imgs[i].naturalWidth));
      imgs[i].setAttribute('data-natural-height', String(imgs[i].naturalHeight));
      if (imgs[i].naturalWidth > 0) ok++;
    }
    document.body.setAttribute('data-images', String(imgs.length));
    document.body.setAttribute('data-images-decoded', String(ok));
  }
  if (document.readyState === 'complete') mark(); else window.addEventListener('load', mark);
})();
"""


def esc(value: object) -> str:
    """`value` as HTML text, quotes escaped."""
    return html.escape(str(value), quote=True)


def kaiser_version() -> str:
    """The version the page names."""
    from kaiser import __version__  # the one source: pyproject.toml's version, via the package metadata

    return __version__


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with thousands separators and `digits` decimals; '-' for None or NaN."""
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def signed_pct(value: float | None) -> str:
    """A signed percentage with one decimal; '-' for None or NaN."""
    return "-" if value is None or value != value else f"{value:+.1f}%"


# ---- building blocks -----------------------------------------------------------------------------
def table(
    table_id: str,
    caption: str,
    columns: Sequence[str],
    rows: Iterable[tuple[Sequence[str], str]],
    numeric_from: int,
) -> str:
    """A plain table; `rows` are (cells, css class) and columns from `numeric_from` on align right."""
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in columns)
    body = []
    for cells, cls in rows:
        tds = "".join(
            f'<td class="num">{esc(c)}</td>' if i >= numeric_from else f"<td>{esc(c)}</td>" for i, c in enumerate(cells)
        )
        body.append(f'<tr class="{esc(cls)}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return (
        f'<div class="wide"><table id="{esc(table_id)}"><caption>{esc(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>"
    )


def image(key: str, title: str, caption: str, png: bytes) -> str:
    """A figure: the PNG inline as a data: URL, with its title and caption."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{esc(key)}"><img src="data:image/png;base64,{data}" alt="{esc(title)}">'
        f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>"
    )


def _header(res: Results, title: str) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in res.header)
    now = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"<header><h1>{esc(title)}</h1>"
        f'<p class="generated">generated by kaiser {esc(kaiser_version())} on {esc(now)} '
        f"with <code>kaiser report</code></p>"
        f'<dl class="run" id="what-was-run">{items}</dl></header>'
    )


HOW_TO_READ = [
    "Every number comes from kaiser's model, not from a real CPU: a workload's memory references, "
    "system calls and CR3 writes are replayed on a modelled TLB (with PCID tags and paging-structure "
    "caches) and the counts are priced in cycles with the parameters listed in docs/cost.md.",
    "One <i>operation</i> (op) is one iteration of the workload; for the syscall loops that is one "
    "system call with the user work around it. Counts are per operation unless a column says otherwise.",
    "<i>Overhead</i> is the extra modelled time of a variant against <code>nopti</code> (no isolation) "
    "running the same work with the same PCID setting; nopti rows show no overhead by definition.",
    "PCID <i>on</i>: CR3 writes keep the TLB (NOFLUSH); <i>off</i>: every CR3 write flushes the "
    "non-global TLB entries. In the plots solid lines / plain bars are PCID, dashed / hatched are no PCID.",
    "Colours are per variant and the same in every plot; docs/variants.md says what each variant maps.",
]


def _how_to_read(res: Results) -> str:
    items = list(HOW_TO_READ)
    if res.kind == "sweep":
        items.append(
            "A sweep runs every combination of the settings in the header (per workload where they differ). "
            "The first value of each list is the base setting: a plot against one knob holds the others "
            "there, and the per-variant plots show each workload at its base setting (mean over seeds); "
            "the summary table averages over every combination, the last table lists each one."
        )
    lis = "".join(f"<li>{text}</li>" for text in items)  # fixed text of ours, markup intended
    return f'<section id="how-to-read"><h2>How to read this</h2><div class="howto"><ul>{lis}</ul></div></section>'


# ---- tables --------------------------------------------------------------------------------------
def _sorted(res: Results) -> list[Row]:
    order = {v: i for i, v in enumerate(variant_order(res.rows))}
    return sorted(res.rows, key=lambda r: (order[r.variant], r.pcid is False, r.pcid is None))


def bench_tables(res: Results) -> list[str]:
    """The HTML tables of a bench run: cost and TLB counters per variant and PCID."""
    rows = _sorted(res)
    cols = ["variant", "PCID", "cycles/op", "overhead", "iTLB miss", "dTLB miss", "STLB miss", "walks"]
    cols += ["walk loads", "CR3 wr", "of which flush", "INVLPG/INVPCID", "syscalls/s"]
    per_op = []
    for r in rows:
        m = r.metrics
        base = r.variant == BASELINE
        per_op.append(
            (
                [
                    r.variant,
                    r.pcid_text,
                    fmt(m["cycles_per_op"], 0),
                    "-" if base else signed_pct(m.get("overhead_percent")),
                    fmt(m["itlb_misses"]),
                    fmt(m["dtlb_misses"]),
                    fmt(m["stlb_misses"]),
                    fmt(m["walks"]),
                    fmt(m["walk_loads"]),
                    fmt(m["cr3_writes"]),
                    fmt(m["cr3_flushing"]),
                    f"{m['invlpg']:.2f}/{m['invpcid']:.2f}",
                    f"{m['syscalls_per_second'] / 1e6:.2f} M" if m.get("syscalls_per_second") else "-",
                ],
                "baseline" if base else "",
            )
        )
    out = [table("runs", "Per operation (one workload iteration)", cols, per_op, numeric_from=2)]
    base_by_pcid = {r.pcid: r for r in rows if r.variant == BASELINE}
    per_call = []
    for r in rows:
        m = r.metrics
        if r.variant == BASELINE or not m.get("syscalls"):
            continue
        k = m["iterations"] / m["syscalls"]  # per op -> per system call
        b = base_by_pcid.get(r.pcid)
        extra = f"{(m['walks'] - b.metrics['walks']) * k:+.2f}" if b else "-"
        per_call.append(
            (
                [
                    r.variant,
                    r.pcid_text,
                    fmt(m["walks"] * k),
                    extra,
                    fmt(m["cr3_writes"] * k),
                    fmt(m["cycles_per_op"] * k, 0),
                    signed_pct(m.get("overhead_percent")),
                ],
                "",
            )
        )
    if per_call:
        cols = ["variant", "PCID", "walks", "extra walks vs nopti", "CR3 writes", "cycles", "overhead"]
        out.append(table("per-syscall", f"Per system call, against {BASELINE}", cols, per_call, numeric_from=2))
    if res.params:
        out.append(_params_table(res))
    return out


def _params_table(res: Results) -> str:
    return table(
        "params",
        "Cost parameters (cycles, clock in GHz) and where each comes from",
        ["parameter", "value", "source"],
        [([name, value, src], "") for name, value, src in res.params],
        numeric_from=99,
    )


def _mean(rows: list[Row], key: str) -> float | None:
    vals = [r.metrics[key] for r in rows if key in r.metrics]
    return statistics.fmean(vals) if vals else None


def sweep_tables(res: Results) -> list[str]:
    """The HTML tables of a sweep: one per variant and PCID setting, a row per configuration."""
    rows = _sorted(res)
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.variant, r.pcid_text), []).append(r)
    summary = []
    for (variant, pcid), sub in groups.items():
        ovh = [r.metrics["overhead_percent"] for r in sub if "overhead_percent" in r.metrics]
        base = variant == BASELINE
        summary.append(
            (
                [
                    variant,
                    pcid,
                    str(len(sub)),
                    fmt(_mean(sub, "cycles_per_op"), 0),
                    "-" if base or not ovh else signed_pct(statistics.fmean(ovh)),
                    "-" if base or not ovh else signed_pct(min(ovh)),
                    "-" if base or not ovh else signed_pct(max(ovh)),
                    fmt(_mean(sub, "walks")),
                    fmt(_mean(sub, "cr3_writes")),
                ],
                "baseline" if base else "",
            )
        )
    cols = ["variant", "PCID", "configurations", "cycles/op (mean)", "overhead (mean)", "min", "max"]
    cols += ["walks/op (mean)", "CR3 writes/op (mean)"]
    out = [table("summary", "Per variant and PCID setting, over all configurations", cols, summary, numeric_from=2)]
    std = [k for k in STANDARD_METRICS if any(k in r.metrics for r in rows)]
    shown = [k for k in res.config_keys if len({r.config.get(k, "") for r in rows}) > 1]  # the rest: header
    cols = ["variant", "PCID", "workload", *shown, *[STANDARD_METRICS[k] for k in std]]
    full = []
    for r in rows:
        cells = [r.variant, r.pcid_text, r.workload, *[r.config.get(k, "") for k in shown]]
        for key in std:
            v = r.metrics.get(key)
            if key == "overhead_percent":
                cells.append("-" if r.variant == BASELINE else signed_pct(v))
            else:
                cells.append(fmt(v, 0 if key in ("cycles_per_op", "syscalls_per_second") else 2))
        full.append((cells, "baseline" if r.variant == BASELINE else ""))
    caption = (
        f"Every configuration ({len(rows)} rows of {res.source.name}; settings that never change are in the header)"
    )
    out.append(table("configurations", caption, cols, full, numeric_from=3 + len(shown)))
    out.append(
        f'<p class="note">Counts are per operation; {esc(res.source.name)} has the totals and every TLB '
        "counter of each run.</p>"
    )
    return out


# ---- the page ------------------------------------------------------------------------------------
def default_title(res: Results) -> str:
    """The page title when none is given: the workloads of a bench, the size of a sweep."""
    if res.kind == "bench":
        return f"kaiser bench report: {', '.join(res.workloads)}"
    return f"kaiser sweep report: {len(res.rows)} configurations"


def render(res: Results, title: str | None = None, figs: list[Figure] | None = None) -> str:
    """The whole page as one string."""
    title = title or default_title(res)
    figs = figures(res) if figs is None else figs
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        _header(res, title),
        _how_to_read(res),
        '<section id="plots"><h2>Plots</h2>',
        *(image(f.key, f.title, f.caption, f.png) for f in figs),
    ]
    # A producer's plot named for one of ours (kaiser sweep draws these same figures) is not shown twice.
    own = {f"{f.key}.png" for f in figs}
    pngs = [(name, png) for name, png in res.pngs if name not in own]
    if pngs:
        parts.append(f'<h2 id="producer-plots">Plots drawn by kaiser {esc(res.kind)}</h2>')
        parts += [
            image(f"{res.kind}-{i}", name, f"As kaiser {res.kind} wrote it to plots/.", png)
            for i, (name, png) in enumerate(pngs)
        ]
    parts.append("</section>")
    parts.append('<section id="tables"><h2>Tables</h2>')
    parts += bench_tables(res) if res.kind == "bench" else sweep_tables(res)
    parts.append("</section>")
    parts.append(
        f'<footer><p class="note">Source: {esc(res.source)}. This page is self-contained: it loads nothing '
        f"from the network and can be read offline or attached to an issue.</p></footer>"
    )
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
