"""`kaiser attack meltdown` through a local typer app (the lead registers `attack_app`)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from kaiser.cli.attack import attack_app

app = typer.Typer()
app.add_typer(attack_app, name="attack")
runner = CliRunner()


def test_json_single_run() -> None:
    result = runner.invoke(app, ["attack", "meltdown", "--variant", "nopti", "-n", "4", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["variant"] == "nopti" and data["region"] == "direct-map"
    assert data["recovered_bytes"] == data["secret_bytes"] and data["accuracy"] == 1.0
    assert data["reachable"]["present"] is True


def test_json_target_on_an_isolating_variant() -> None:
    args = ["attack", "meltdown", "--variant", "linux", "-n", "2", "--json", "--target", "0xffffffff81000000"]
    data = json.loads(runner.invoke(app, [*args, "--nokaslr"]).output)
    assert data["region"] == "target" and data["target"] == "0xffffffff81000000"
    assert data["recovered_bytes"] == [None, None] and data["accuracy"] == 0.0


def test_rich_output_of_a_matrix() -> None:
    result = runner.invoke(app, ["attack", "meltdown", "--variant", "all", "--secret-in", "all", "-n", "1"])
    assert result.exit_code == 0, result.output
    for name in ("nopti", "two-pgd", "fixed-trampoline", "direct-map", "vmalloc", "fixmap_pgd", "task_stacks"):
        assert name in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--variant", "nope"], "unknown variant 'nope'"),
        (["--secret-in", "heap"], "--secret-in 'heap' is not one of"),
        (["--target", "0x10", "--secret-in", "vmalloc"], "either --target or --secret-in"),
        (["--target", "0xzz"], "--target '0xzz' is not a number"),
        (["--target", "0x1000"], "is not a kernel address"),
        (["--length", "0"], "--length 0 must be 1..4096"),
        (["--max-rounds", "0"], "--max-rounds"),
        (["--variant", "nopti", "--target", "0xffffc00000000000"], "nothing is mapped at 0xffffc00000000000"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["attack", "meltdown", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1
