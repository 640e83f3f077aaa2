"""`verify_command` under typer: exit codes, JSON output, the first disagreement printed in full."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import typer
from typer.testing import CliRunner

import kaiser.cli.verify as verify_cli
from kaiser.referee import run_verify
from kaiser.x86.walker import Translation, translate


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("verify")(verify_cli.verify_command)
    app.command("noop")(lambda: None)  # two commands, so `verify` is a subcommand as in `kaiser verify`
    return app


def test_verify_json_exits_zero() -> None:
    result = CliRunner().invoke(_app(), ["verify", "--cases", "120", "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cases"] == 120 and report["disagreements"] == 0
    assert report["agreements"] + report["known_qemu_deviations"] == 120


def test_verify_table_and_exit_one_on_disagreement(monkeypatch: Any) -> None:
    def off_by_eight(*args: Any, **kw: Any) -> Any:
        result = translate(*args, **kw)
        return dataclasses.replace(result, pa=result.pa + 8) if isinstance(result, Translation) else result

    monkeypatch.setattr(
        verify_cli,
        "run_verify",
        lambda cases, seed, progress=None: run_verify(cases, seed, progress, walker=off_by_eight),
    )
    result = CliRunner().invoke(_app(), ["verify", "--cases", "200"])
    assert result.exit_code == 1
    assert "disagreements" in result.stdout and "first disagreement" in result.stdout
    assert "PTE" in result.stdout or "PDE" in result.stdout or "PDPTE" in result.stdout
