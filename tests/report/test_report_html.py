"""`kaiser report`: the page from a bench JSON and from a sweep directory, its escaping, and errors.

The browser's view of the same pages is in test_report_browser.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from report_support import BENCH_JSON, SWEEP_DIR, image_pngs, outline, png_size
from typer.testing import CliRunner

from kaiser.cli.report import report_command
from kaiser.report import ReportError, load, render

runner = CliRunner()


def report_app() -> typer.Typer:
    """The command alone (app.py registers it as `kaiser report`)."""
    app = typer.Typer()
    app.command()(report_command)
    return app


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(report_app(), list(args))
    return result.exit_code, result.output


def sweep_dir(tmp_path: Path, producer_plot: bool = True) -> Path:
    """The sweep fixture with a plot of its own in plots/ (and a file there that is not a PNG)."""
    out = tmp_path / "sweep"
    shutil.copytree(SWEEP_DIR, out)
    if producer_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        (out / "plots").mkdir()
        fig, ax = plt.subplots(figsize=(3, 2), dpi=100)
        ax.plot([0, 1], [1, 0])
        fig.savefig(out / "plots" / "overhead-syscall-loop-reads.png")
        plt.close(fig)
        (out / "plots" / "broken.png").write_bytes(b"not a png")
    return out


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and ' src="//' not in page and "url(" not in page
    o = outline(page)
    assert page.startswith("<!DOCTYPE html>")
    assert not o.errors and not o.stack, (o.errors, o.stack)
    for png in image_pngs(o):
        width, height = png_size(png)
        assert width > 200 and height > 100


def test_bench_page_has_plots_tables_and_header() -> None:
    data = json.loads(BENCH_JSON.read_text())
    page = render(load(BENCH_JSON))
    assert_self_contained(page)
    o = outline(page)
    assert len(o.images) == 3
    assert [img["alt"] for img in o.images] == [
        "Overhead vs system-call rate",
        "Per-variant costs",
        "Where the cycles go",
    ]
    runs = o.tables["runs"]
    assert [(r[0], r[1]) for r in runs] == [
        ("nopti", "on"),
        ("nopti", "off"),
        ("kaiser-rfc", "on"),
        ("kaiser-rfc", "off"),
        ("linux", "on"),
        ("linux", "off"),
        ("fixed-trampoline", "on"),
        ("fixed-trampoline", "off"),
    ]
    linux_on = next(r for r in data["runs"] if r["variant"] == "linux" and r["pcid"])
    row = next(r for r in runs if r[:2] == ["linux", "on"])
    assert row[2] == f"{linux_on['cycles_per_op']:,.0f}"
    assert row[3] == f"{linux_on['overhead_percent']:+.1f}%"
    assert row[9] == f"{linux_on['counters']['cr3_writes'] / linux_on['iterations']:,.2f}"
    assert len(o.tables["per-syscall"]) == 6
    assert [r[0] for r in o.tables["params"]] == list(data["params"])
    text = " ".join(o.text)
    for want in ("kaiser bench --json", "syscall-loop", "reads=64", "How to read this", "kaiser 0.1.0", "engine"):
        assert want in text
    assert "nopti, kaiser-rfc, linux, fixed-trampoline" in text or "nopti, linux, kaiser-rfc" in text


def test_sweep_directory_page(tmp_path: Path) -> None:
    out = sweep_dir(tmp_path)
    res = load(out)
    assert res.kind == "sweep" and res.swept() == ["reads"]
    page = render(res)
    assert_self_contained(page)
    o = outline(page)
    alts = [img["alt"] for img in o.images]
    assert alts == [
        "Overhead vs system-call rate",
        "Overhead vs reads",
        "Per-variant costs",
        "Where the cycles go",
        "overhead-syscall-loop-reads.png",  # the sweep's own plot; broken.png is left out
    ]
    assert len(o.tables["configurations"]) == 24
    summary = o.tables["summary"]
    assert len(summary) == 8 and summary[0][:3] == ["nopti", "on", "3"]
    # the CSV's overhead column, per configuration, shown as it is
    import csv

    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    shown = {(r[0], r[1], r[3]): r[5] for r in o.tables["configurations"]}  # variant, PCID, reads -> overhead
    for rec in rows:
        if rec["variant"] != "nopti":
            key = (rec["variant"], "on" if rec["pcid"] == "True" else "off", rec["knob_reads"])
            assert shown[key] == f"{float(rec['overhead_percent']):+.1f}%"
    text = " ".join(o.text)
    assert "24" in text and "tests/report/data/sweep-spec.toml" in text and "skylake-client" in text


def test_results_csv_path_gives_the_same_tables(tmp_path: Path) -> None:
    out = sweep_dir(tmp_path, producer_plot=False)
    a = outline(render(load(out), figs=[]))
    b = outline(render(load(out / "results.csv"), figs=[]))
    assert a.tables == b.tables and a.tables["configurations"]


def test_text_is_escaped(tmp_path: Path) -> None:
    data = json.loads(BENCH_JSON.read_text())
    data["runs"][0]["variant"] = "<script>alert(1)</script>"
    data["knobs"]["syscall"] = 'a"b&c<d>'
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(data))
    page = render(load(path), title="<b>title</b>", figs=[])
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>title</b>" not in page and "&lt;b&gt;title&lt;/b&gt;" in page
    assert "a&quot;b&amp;c&lt;d&gt;" in page
    assert page.count("<script>") == 1  # ours, which records the images' decoded sizes


def test_cli_writes_the_page(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code, output = invoke(str(BENCH_JSON), "--out", str(out), "--title", "my run")
    assert code == 0, output
    assert "report written to" in output and "3 plots" in output
    assert "<title>my run</title>" in out.read_text()


def test_live_bench_json(tmp_path: Path) -> None:
    """Today's `kaiser bench --json` output, not only the committed fixture, makes a report."""
    from kaiser.cli.app import app

    result = runner.invoke(
        app, ["bench", "--json", "-n", "8", "--warmup", "2", "-v", "linux", "--pcid", "--path", "reference"]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "bench.json"
    path.write_text(result.stdout)
    o = outline(render(load(path)))
    assert [r[:2] for r in o.tables["runs"]] == [["nopti", "on"], ["linux", "on"]]
    assert len(o.images) == 3


def test_live_sweep_results(tmp_path: Path) -> None:
    """Today's `kaiser sweep` results.csv (its store, fed in-process, no dask) makes a report."""
    sweep = pytest.importorskip("kaiser.sweep")
    from kaiser.sweep.runner import run_config

    spec_text = (
        '[sweep]\nvariants = ["nopti", "linux"]\npcid = [true]\niterations = 8\nwarmup = 2\n'
        '[[workload]]\nname = "syscall-loop"\nknobs = { reads = [0, 16] }\n'
    )
    spec = sweep.parse_spec(spec_text, tmp_path / "spec.toml")
    (tmp_path / "out").mkdir()
    store = sweep.ResultStore(tmp_path / "out")
    records = {c.id: run_config(c, "reference") for c in spec.configs}  # no numba compile
    store.write_csv(sweep.table(spec.configs, records))
    res = load(tmp_path / "out")
    assert res.swept() == ["reads"] and len(res.rows) == 4
    o = outline(render(res))
    assert len(o.tables["configurations"]) == 4
    assert [img["alt"] for img in o.images][:2] == ["Overhead vs system-call rate", "Overhead vs reads"]
    linux = [r for r in res.rows if r.variant == "linux"]
    assert all(r.metrics["overhead_percent"] > 0 and r.metrics["cr3_writes"] == 2.0 for r in linux)


BAD_INPUTS = [
    ("missing.json", None, "no such file"),
    ("empty.json", "", "empty file"),
    ("garbled.json", "{not json", "garbled.json:1: not JSON"),
    ("list.json", "[1, 2]", "top level is list"),
    ("noruns.json", '{"workload": "x"}', "has no 'runs'"),
    ("zero.json", '{"runs": []}', "no runs"),
    ("nocounters.json", '{"runs": [{"variant": "linux", "iterations": 3}]}', "runs[0] has no 'counters'"),
    ("empty.csv", "", "empty CSV"),
    ("header.csv", "variant,pcid,workload,cycles_per_op\n", "header but no rows"),
    ("novariant.csv", "a,b\n1,2\n", "no 'variant' column"),
    ("short.csv", "variant,pcid,workload,cycles_per_op\nlinux,True\n", "short.csv:2: expected 4 columns"),
    ("pcid.csv", "variant,pcid,workload,cycles_per_op\nlinux,maybe,w,1\n", "pcid 'maybe'"),
    ("nan.csv", "variant,pcid,workload,cycles_per_op\nlinux,True,w,1\nnopti,True,w,nan\n", "nan.csv:3: column"),
    ("inf.csv", "variant,pcid,workload,cycles_per_op\nlinux,True,w,inf\n", "not a finite number"),
    ("neg.csv", "variant,pcid,workload,cycles_per_op\nlinux,True,w,-5\n", "cycles_per_op is -5.0"),
    ("text.csv", "variant,pcid,workload,cycles_per_op\nlinux,True,w,fast\n", "column cycles_per_op is 'fast'"),
    ("huge.csv", "variant,pcid,workload,cycles_per_op\nlinux,True,w," + "9" * (200 << 10), "huge.csv:2: not CSV"),
]
_BENCH = (Path(__file__).parent / "data" / "bench-syscall-loop.json").read_text()
BAD_INPUTS += [  # one metric of a real bench output spoiled
    ("nan.json", _BENCH.replace('"cycles_per_op": ', '"cycles_per_op": NaN, "x": ', 1), "NaN is not a number"),
    ("infinity.json", _BENCH.replace('"cycles_per_op": ', '"cycles_per_op": -Infinity, "x": ', 1), "Infinity"),
    ("null.json", _BENCH.replace('"cycles_per_op": ', '"cycles_per_op": null, "x": ', 1), "cycles_per_op is NoneType"),
    ("string.json", _BENCH.replace('"cycles_per_op": ', '"cycles_per_op": "7", "x": ', 1), "cycles_per_op is str"),
    ("negative.json", _BENCH.replace('"cycles_per_op": ', '"cycles_per_op": -7, "x": ', 1), "cycles_per_op is -7.0"),
    ("clock.json", _BENCH.replace('"clock_ghz": ', '"clock_ghz": "fast", "x": ', 1), "clock_ghz is 'fast'"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match="^" + str(path).replace(".", r"\.")):
        load(path)
    code, output = invoke(str(path), "--out", str(tmp_path / "r.html"))
    assert code == 2
    assert message in output and name in output
    assert len(output.strip().splitlines()) == 1 or "\n" not in output.replace("\n", " ").strip()
    assert not (tmp_path / "r.html").exists()


def test_directory_without_results(tmp_path: Path) -> None:
    code, output = invoke(str(tmp_path))
    assert code == 2 and "without results.csv" in output


def test_sweep_metrics_per_operation(tmp_path: Path) -> None:
    """Totals become per-iteration numbers; a count given only as parts is summed; the plot's rate is
    the nopti run's at the same settings."""
    path = tmp_path / "results.csv"
    path.write_text(
        "variant,pcid,workload,iterations,knob_reads,walks_i,walks_d,cr3_writes,cr3_noflush,syscalls,"
        "cycles_total,baseline_cycles_per_op,overhead_percent,worker\n"
        "nopti,False,syscall-loop,10,64,0,30,0,0,10,3000,300,0.0,worker-qz1\n"
        "linux,False,syscall-loop,10,64,5,95,20,0,10,6000,300,100.0,worker-qz2\n"
    )
    res = load(path)
    linux = next(r for r in res.rows if r.variant == "linux")
    assert (
        linux.metrics["walks"] == 10.0 and linux.metrics["cr3_writes"] == 2.0 and linux.metrics["cr3_flushing"] == 2.0
    )
    assert linux.metrics["cycles_per_op"] == 600.0
    assert linux.metrics["syscalls_per_second"] == pytest.approx(10 * 3e9 / 6000)
    assert linux.metrics["nopti_syscalls_per_second"] == pytest.approx(10 * 3e9 / 3000)
    assert res.config_keys == ["iterations", "reads"] and res.swept() == []
    o = outline(render(res))
    assert [r[:2] for r in o.tables["configurations"]] == [["nopti", "off"], ["linux", "off"]]
    # bookkeeping columns are not shown (names no path holds: xdist's tmp_path has "gw1" in it)
    assert "worker-qz" not in " ".join(o.text)
