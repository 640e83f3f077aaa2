"""The side-by-side table of every design (kaiser.api.designs): every registered variant has a
row, and each figure is what its own command prints for the same machine."""

from __future__ import annotations

import json
from functools import cache

import pytest
from typer.testing import CliRunner

from kaiser.api.designs import HEADERS, SECRET_BYTES, SEED, Design, design
from kaiser.attacks.core import REGIONS, SENSITIVE_REGIONS
from kaiser.cli.app import app
from kaiser.linux.variants import BASELINE, VARIANTS


@cache
def row(variant: str) -> Design:
    return design(variant)


def _json(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("variant", ["linux", "asi"])
def test_each_figure_is_its_commands(variant: str) -> None:
    d = row(variant)
    for region in ("vmalloc", "sensitive"):
        melt = _json("attack", "meltdown", "--variant", variant, "--secret-in", region, "-n", str(SECRET_BYTES),
                     "--seed", str(SEED), "--json")  # fmt: skip
        assert d.meltdown[region] == melt["correct"]
    bench = _json("bench", "--variant", variant, "-w", "null-syscall", "-n", "100", "--warmup", "20", "--json")
    runs = {(r["variant"], r["pcid"]): r["cycles_per_op"] for r in bench["runs"]}  # type: ignore[index]
    assert (d.cycles_pcid, d.cycles_nopcid) == (runs[variant, True], runs[variant, False])


def test_every_registered_design_is_in_the_table() -> None:
    from kaiser.api.designs import designs

    assert [d.variant for d in designs(["nopti", "linux"])] == ["nopti", "linux"]
    assert {"nopti", "linux", "asi"} <= set(VARIANTS)


def test_the_baseline_leaks_everything_and_isolation_costs_cycles() -> None:
    base, linux = row(BASELINE), row("linux")
    assert all(base.meltdown[r] == SECRET_BYTES for r in REGIONS)
    assert all(linux.meltdown[r] == 0 for r in REGIONS)
    assert linux.reachable < base.reachable and linux.cycles_nopcid > base.cycles_nopcid
    assert len(base.cells()) == len(HEADERS) and json.dumps(base.as_dict())


def test_asi_reads_no_sensitive_secret_but_shows_nonsensitive_memory() -> None:
    asi = row("asi")
    assert all(asi.meltdown[r] == 0 for r in SENSITIVE_REGIONS)
    assert asi.meltdown["nonsensitive"] == SECRET_BYTES
