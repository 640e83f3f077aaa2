"""The plots draw what they say: a knob gets a panel only where it varies, log-axis labels never
collide, the rate figure's ratio panel is the constant it claims, and the sweep's plots are the
report's figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_support import BENCH_JSON, SWEEP_DIR

from kaiser.report import draw, load
from kaiser.report.load import Results, Row
from kaiser.report.plots import _rate_points, knob_panels, overhead_vs_knob


def _row(variant: str, workload: str, overhead: float, **config: str) -> Row:
    return Row(variant, True, workload, dict(config), {"overhead_percent": overhead, "cycles_per_op": 100.0})


def _two_workloads() -> Results:
    """`reads` varies in w1 only; w2 has `reads` fixed and `size` varying."""
    rows = []
    for variant in ("nopti", "linux", "kaiser-rfc"):
        for reads in ("0", "16", "64"):
            rows.append(_row(variant, "w1", float(reads) + 1, reads=reads, size=""))
        for size in ("4096", "8192"):
            rows.append(_row(variant, "w2", 2.0, reads="5", size=size))
    return Results(Path("x.csv"), "sweep", rows, [], clock_ghz=3.0, config_keys=["reads", "size"])


def test_a_knob_gets_a_panel_only_in_the_workloads_where_it_varies() -> None:
    res = _two_workloads()
    assert res.swept() == ["reads", "size"]  # across workloads both vary ...
    assert [wl for wl, _, _ in knob_panels(res, "reads")] == ["w1"]  # ... but each in one workload
    assert [wl for wl, _, _ in knob_panels(res, "size")] == ["w2"]


def test_a_knob_that_varies_nowhere_draws_nothing() -> None:
    res = _two_workloads()
    fixed = Results(
        res.source,
        "sweep",
        [r for r in res.rows if r.workload == "w2" and r.config["size"] == "4096"],
        [],
        config_keys=res.config_keys,
    )
    assert knob_panels(fixed, "reads") == [] and overhead_vs_knob(fixed, "size") is None


def test_the_other_knobs_are_held_at_their_base_value() -> None:
    """Rows whose other swept setting is not the first (base) value are not drawn."""
    rows = [
        _row(v, "w", 1.0, reads=r, buffer=b) for v in ("nopti", "linux") for b in ("2MiB", "4MiB") for r in ("0", "8")
    ]
    res = Results(Path("x.csv"), "sweep", rows, [], config_keys=["reads", "buffer"])
    ((_, _, drawn),) = knob_panels(res, "reads")
    assert {r.config["buffer"] for r in drawn} == {"2MiB"} and {r.config["reads"] for r in drawn} == {"0", "8"}


@settings(max_examples=6, deadline=None)
@given(lo=st.floats(1e-4, 1e5), decades=st.floats(0.3, 6.0))
def test_log_tick_labels_never_overlap(lo: float, decades: float) -> None:
    """Whatever range the data spans, the labelled ticks of a log axis do not touch each other."""
    plt = draw.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=72)
    hi = lo * 10**decades
    ax.plot([lo, hi], [lo, hi])
    draw.log_ticks(ax, "y", lo, hi)
    draw.log_ticks(ax, "x", lo, hi)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for axis, along in ((ax.yaxis, "y"), (ax.xaxis, "x")):
        boxes = [
            t.get_window_extent(renderer)
            for t in axis.get_ticklabels(which="both")
            if t.get_visible() and t.get_text() and lo <= t.get_position()[1 if along == "y" else 0] <= hi
        ]
        assert boxes, "no labelled tick at all"
        spans = sorted((b.y0, b.y1) if along == "y" else (b.x0, b.x1) for b in boxes)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"tick labels overlap on the {along} axis of [{lo}, {hi}]"
    plt.close(fig)


def test_the_old_minor_labels_did_overlap() -> None:
    """The check above can fail: labelling every minor tick (what the report did) collides."""
    from matplotlib.ticker import FuncFormatter

    plt = draw.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_yscale("log")
    ax.set_ylim(0.003, 500)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    spans = sorted(
        (b.y0, b.y1)
        for b in (t.get_window_extent(renderer) for t in ax.yaxis.get_ticklabels(which="both") if t.get_text())
    )
    assert any(start < end for (_, end), (start, _) in zip(spans, spans[1:], strict=False))
    plt.close(fig)


def test_the_ratio_to_linux_is_the_same_at_every_rate() -> None:
    """What the rate figure's right panel claims: along the curves of a bench run, each variant's
    overhead over linux's at the same PCID setting does not change with the rate."""
    res = load(BENCH_JSON)
    curves = {(r.variant, r.pcid): [y for _, y in _rate_points(res, r)] for r in res.rows if r.variant != "nopti"}
    for (variant, pcid), ys in curves.items():
        ref = curves[("linux", pcid)]
        ratios = [y / b for y, b in zip(ys, ref, strict=True) if b > 0]
        assert max(ratios) - min(ratios) < 1e-9 * max(ratios), (variant, pcid)


def test_the_sweep_writes_the_reports_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kaiser sweep's plots/ are the report's figures of its results.csv, one PNG per figure key,
    and an earlier run's PNGs do not survive (the figures are stubbed: drawing them is tested by
    the report's tests)."""
    from kaiser.report import plots
    from kaiser.report.plots import write_sweep_plots

    seen: list[Results] = []

    def drawn(res: Results) -> list[plots.Figure]:
        seen.append(res)
        return [plots.Figure(k, k, "", b"\x89PNG " + k.encode()) for k in ("overhead-vs-rate", "variant-bars")]

    monkeypatch.setattr(plots, "figures", drawn)
    out = tmp_path / "sweep"
    shutil.copytree(SWEEP_DIR, out)
    (out / "plots").mkdir()
    (out / "plots" / "bars-syscall-loop.png").write_bytes(b"an old run's plot")
    written = write_sweep_plots(out / "results.csv", out / "plots")
    assert len(seen) == 1 and len(seen[0].rows) == 24  # the report's loader read the CSV
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["overhead-vs-rate.png", "variant-bars.png"]
    assert [p.read_bytes() for p in written] == [b"\x89PNG overhead-vs-rate", b"\x89PNG variant-bars"]


@pytest.mark.parametrize("values", [{("linux", True): 1.04, ("linux", False): 1.72, ("kaiser-rfc", False): 1.94}])
def test_dot_chart_axis_spans_the_values_not_zero(values: dict[tuple[str, bool | None], float]) -> None:
    """A 1-2 % overhead difference is visible: the axis starts near the smallest value."""
    plt = draw.pyplot()
    fig, ax = plt.subplots()
    draw.variant_dots(ax, values, "overhead (%)")
    lo, hi = ax.get_xlim()
    assert lo > 0.8 and hi < 3.0
    plt.close(fig)
