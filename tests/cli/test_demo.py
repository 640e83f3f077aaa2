"""`kaiser demo` runs end to end and shows each part of the tour."""

from __future__ import annotations

from typer.testing import CliRunner

from kaiser.cli.app import app


def test_demo_runs_every_section() -> None:
    result = CliRunner().invoke(app, ["demo", "--verify-cases", "50"])
    assert result.exit_code == 0, result.output
    for needle in (
        "the paging model",
        "the variants: what user mode can reach",
        "fixed-trampoline",
        "CPU entry Area",
        "page-table memory",
        "every design side by side",
        "EntryBleed",
        "0 disagreements in 50 cases",
    ):
        assert needle in result.output
