"""`kaiser bench published`: the rows, their roles against the FIT tags of cost/params.py, and
every model value recomputed here from the row's own configuration through `kaiser.cost.run`, so
the table cannot drift from the model."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.cost.machines import get_machine
from kaiser.cost.model import overhead_percent
from kaiser.cost.params import SKYLAKE, SOURCES, for_caches
from kaiser.cost.published import fit_markdown, markdown_table
from kaiser.cost.run import RunResult, run
from kaiser.linux.syscalls import SYSCALLS
from kaiser.linux.variants import VARIANTS, GlobalPolicy, Part
from kaiser.report.published_plot import plot
from kaiser.x86.cache_geometry import CacheHierarchy, get_hierarchy

KEYS = ("source", "metric", "published", "model", "ratio", "role")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    res = CliRunner().invoke(app, ["bench", "published", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    out: list[dict[str, Any]] = data["rows"]
    return out


def test_rows_have_the_keys_and_a_reason_when_not_run(rows: list[dict[str, Any]]) -> None:
    assert len(rows) >= 12
    for r in rows:
        for key in KEYS:
            assert key in r, (key, r)
        assert r["role"] in ("fit", "predicted", "not run", "no value")
        assert isinstance(r["published"], (int, float)) and r["published"] > 0
        # what a checker of the predictions does with every `predicted` row must not trip
        if r["role"] in ("fit", "predicted"):
            assert r["runs"] and r["model"] is not None, r
            assert r["ratio"] == pytest.approx(r["model"] / r["published"], rel=1e-12)
        else:  # not run: no runs; no value: runs whose value is not finite; either says why
            assert r["model"] is None and r["ratio"] is None and r["why"], r
            assert bool(r["runs"]) == (r["role"] == "no value"), r
    assert sum(r["model"] is not None for r in rows) >= 12


def test_every_prediction_is_within_1_5x(rows: list[dict[str, Any]]) -> None:
    pred = [r for r in rows if r["role"] == "predicted"]
    assert len(pred) >= 12
    for r in pred:
        assert 1 / 1.5 <= r["model"] / r["published"] <= 1.5, r["configuration"]


def test_fit_rows_are_the_fit_tags(rows: list[dict[str, Any]]) -> None:
    """A row is `fit` exactly when it names parameters, each tagged FIT in params.py with the
    row's source named in its tag (or the lseek body that linux/syscalls.py says is FIT), and every
    FIT parameter of params.py has its row."""
    named: set[str] = set()
    for r in rows:
        assert (r["role"] == "fit") == bool(r["fit_of"]), r
        for name in r["fit_of"]:
            named.add(name)
            author = r["source"].split(",")[0].split()[-1]  # "K. Garloff, ..." -> Garloff
            if name in ("body_cycles[lseek]", "recorded_cycles[lseek]"):
                entry_src = Path(__file__).parents[2] / "src/kaiser/linux/syscalls.py"
                text = entry_src.read_text()
                assert "lseek1" in text and f"{author}'s 5.2 M/s" in text and "FIT" in text
                assert getattr(SYSCALLS["lseek"], name.split("[")[0]) > 0
                continue
            assert SOURCES[name].kind == "FIT", name
            assert author in SOURCES[name].text, (name, author)
    fit_params = {k for k, v in SOURCES.items() if v.kind == "FIT"}
    assert fit_params <= named, fit_params - named


def _variant(name: str) -> Any:
    """The derived variants, built here again from the registry: linux without its kernel-text
    clone, with no global pages or with global kept on the shared pages only."""
    policies = {"linux-noglobal": GlobalPolicy.NONE, "linux-entryglobal": GlobalPolicy.SHARED_ONLY}
    if name not in policies:
        return name
    v = VARIANTS["linux"]
    return dataclasses.replace(
        v,
        name=name,
        clones=tuple(c for c in v.clones if c.part is not Part.KERNEL_TEXT),
        global_policy=policies[name],
    )


def _recompute(r: dict[str, Any]) -> float | None:
    caches: CacheHierarchy | None
    host_page = r["host_page"]  # a guest runs nested: its machine's EPT page size, or the row's own
    if r["machine"]:
        m = get_machine(r["machine"])
        params, caches = m.params(), m.caches
        assert host_page == m.host_page
    else:
        base = SKYLAKE.with_overrides(clock_ghz=r["clock_ghz"], vm_exits_per_interrupt=1.0 if host_page else 0.0)
        name = r["setup"].split(",")[0].removeprefix("caches ")
        caches = get_hierarchy(name) if r["setup"].startswith("caches ") else None
        params = for_caches(base, name) if caches else base
    res: list[RunResult] = [
        run(
            _variant(s["variant"]),
            s["workload"],
            pcid=s["pcid"],
            settings=s["settings"],
            iterations=200,
            warmup=50,
            params=params,
            caches=caches,
            host_page=host_page,
        )  # fmt: skip
        for s in r["runs"]
    ]
    a = res[0]
    kind = r["kind"]
    if kind == "rate":
        return a.ops.syscalls / (a.cycles.total / (params.clock_ghz * 1e9))
    if kind == "cycles":
        return a.cycles.total / a.iterations
    if kind == "us":
        return a.cycles.total / a.iterations / params.clock_ghz / 1e3
    b = res[1]
    if kind == "slowdown":
        return a.cycles.total / b.cycles.total * b.iterations / a.iterations
    if kind == "gain_percent":
        return (b.cycles.total / a.cycles.total - 1) * 100
    if kind == "dtlb_ratio":
        return a.counters.walks_d / b.counters.walks_d if b.counters.walks_d else None
    assert kind == "overhead_at_rate"
    # user work per iteration so that the baseline makes 50k system calls a second
    work = params.clock_ghz * 1e9 / 50e3 * b.iterations / b.ops.syscalls - b.cycles.total / b.iterations
    extra = work * a.iterations
    return overhead_percent(a.cycles.total + extra, b.cycles.total + extra)


def test_every_model_value_is_the_model_run_again(rows: list[dict[str, Any]]) -> None:
    ran = [r for r in rows if r["runs"]]
    assert ran
    for r in ran:
        value = _recompute(r)
        if value is None:
            assert r["model"] is None, r
        else:
            assert r["model"] is not None and math.isfinite(value)
            assert r["model"] == pytest.approx(value, rel=1e-9), r["configuration"]


def test_plot_and_bad_plot_file(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "published.png"
    plot(rows, out)  # what `--plot FILE` draws, from the same rows
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(app, ["bench", "published", "--plot", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert not (tmp_path / "x.txt").exists()


def test_markdown_tables_hold_every_row_and_every_fit(rows: list[dict[str, Any]]) -> None:
    table = markdown_table(rows).splitlines()
    assert len(table) == len(rows) + 2
    for i, (line, r) in enumerate(zip(table[2:], rows, strict=True), 1):
        assert line.startswith(f"| {i} | ") and f"| {r['role']} |" in line
    fits = fit_markdown(rows).splitlines()[2:]
    assert len(fits) == sum(len(r["fit_of"]) for r in rows)
