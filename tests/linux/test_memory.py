"""Page-table memory accounting per variant (issue 3 item 4)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.linux.memory import measure
from kaiser.linux.variants import VARIANTS

ISOLATING = [n for n, v in VARIANTS.items() if v.isolating]


@pytest.fixture(scope="module")
def nopti_row():  # type: ignore[no-untyped-def]
    return measure("nopti")


@pytest.mark.parametrize("variant", ISOLATING)
def test_top_level_shadowing_costs_one_pgd_per_process(variant: str, nopti_row) -> None:  # type: ignore[no-untyped-def]
    row = measure(variant)
    assert row.user_footprint == nopti_row.user_footprint
    # Same user tables as without isolation, plus the second half of the order-1 PGD (pti.rst).
    assert row.process_tables == nopti_row.process_tables + 1
    assert row.process_pti_extra == 1
    # Duplicating every level would cost as many frames as the process's own user tables, plus the PGD.
    assert row.full_duplication_extra == nopti_row.process_tables
    assert row.shared_pti_tables >= 1


def test_nopti_has_no_isolation_cost(nopti_row) -> None:  # type: ignore[no-untyped-def]
    assert nopti_row.process_pti_extra == 0 and nopti_row.full_duplication_extra == 0
    assert nopti_row.shared_pti_tables == 0


def test_private_shadow_tables_cost_more_than_shared_clones() -> None:
    """KAISER's private 4 KiB shadow of the kernel half needs more tables than PTI's shared clones."""
    assert measure("kaiser-rfc").shared_pti_tables > measure("linux").shared_pti_tables
    assert measure("two-pgd").shared_pti_tables == 1  # just the user PGD: both clones are top-level entries


def test_bench_memory_json_lists_every_variant() -> None:
    result = CliRunner().invoke(app, ["bench", "memory", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["variant"] for r in rows] == list(VARIANTS)
