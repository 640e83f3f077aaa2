"""`kaiser bench attack` and `kaiser attack kaslr --path/--jobs`: what they report, never how fast
(speed is the command's output, not a test's assertion)."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from kaiser.cli.app import app

runner = CliRunner()


def test_bench_attack_json_compares_both_paths_and_runs_the_whole_attack() -> None:
    result = runner.invoke(
        app,
        ["bench", "attack", "--variant", "nopti", "-n", "2", "--compare", "1", "--compare-variant", "fixed-trampoline"]
        + ["--jobs", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    pair, whole = data["compare"], data["whole"]
    assert pair["identical"] is True and pair["probes"] > 512
    assert pair["engine"]["cpu_seconds"] > 0 and pair["reference"]["cpu_seconds"] > 0
    assert whole["text_matched"] == {"nopti": 2} and whole["jobs"] == 2 and whole["layouts"] == 2


def test_bench_attack_table_fits_80_columns() -> None:
    result = runner.invoke(
        app,
        ["bench", "attack", "--variant", "fixed-trampoline", "-n", "1", "--compare", "0", "--jobs", "1"],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "fixed-trampoline 0/1" in result.output


def test_attack_kaslr_same_json_with_any_jobs() -> None:
    """The command's JSON (but for seconds) is the same with 1 or 2 processes (the reference path's
    is compared with the engine's in test_kaslr_engine.py: a whole attack is seconds there)."""

    def run(*extra: str) -> list[dict[str, Any]]:
        args = ["attack", "kaslr", "--variant", "all", "-n", "1", "--first-seed", "3", "--json", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code in (0, 1), result.output
        data: list[dict[str, Any]] = json.loads(result.output)
        for summary in data:
            for r in summary["runs"]:
                r.pop("seconds")
        return data

    engine = run("--path", "engine", "--jobs", "2")
    assert engine == run("--path", "engine", "--jobs", "1")
    fixed = next(s for s in engine if s["variant"] == "fixed-trampoline")
    assert fixed["summary"]["text"]["matched"] == 0


def test_bad_path_and_jobs_are_one_line_errors() -> None:
    for args in (["--path", "fast"], ["--jobs", "-1"]):
        result = runner.invoke(app, ["attack", "kaslr", "-n", "1", *args])
        assert result.exit_code == 2, result.output
