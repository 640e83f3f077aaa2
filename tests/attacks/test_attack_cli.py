"""`kaiser attack meltdown` through the `kaiser` app: output, JSON, exit status 0/1/2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app

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


def test_rich_output_of_a_matrix_and_exit_1_for_the_isolating_variants_that_leak() -> None:
    result = runner.invoke(app, ["attack", "meltdown", "--variant", "all", "--secret-in", "all", "-n", "1"])
    assert result.exit_code == 1, result.output
    for name in ("nopti", "two-pgd", "fixed-trampoline", "direct-map", "vmalloc", "fixmap_pgd", "task_stacks"):
        assert name in result.output
    verdict = " ".join(result.output[result.output.index("LEAK") :].split())
    leaked = {part.split()[0] for part in verdict.removeprefix("LEAK: isolating variant(s) leak:").split(";")}
    assert leaked == {"kaiser-rfc", "kaiser-global", "two-pgd"}  # docs/attacks.md's table; nopti is no finding


@pytest.mark.parametrize(
    ("variant", "region", "status"),
    [
        ("nopti", "direct-map", 0),
        ("linux", "direct-map", 0),
        ("kaiser-rfc", "vmalloc", 1),
        ("two-pgd", "kernel-data", 1),
    ],
)
def test_exit_status_is_1_only_when_an_isolating_variant_leaks(variant: str, region: str, status: int) -> None:
    result = runner.invoke(app, ["attack", "meltdown", "-v", variant, "--secret-in", region, "-n", "2", "--json"])
    assert result.exit_code == status, result.output
    data = json.loads(result.output)
    assert data["leaked"] is (variant != "linux")  # what was found stays in the output either way


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--variant", "nope"], "unknown variant 'nope'"),
        (["--secret-in", "heap"], "--secret-in 'heap' is not one of"),
        (["--target", "0x10", "--secret-in", "vmalloc"], "either --target or --secret-in"),
        (["--target", "0xzz"], "--target '0xzz' is not a number"),
        (["--target", "0x1000"], "is not a kernel address"),
        (["--length", "0"], "attack meltdown: --length 0: "),
        (["--length", "4097"], "attack meltdown: --length 4097: "),
        (["--max-rounds", "0"], "--max-rounds"),
        (["--seed", "-1"], "attack meltdown: --seed -1: "),
        (["--variant", "nopti", "--target", "0xffffc00000000000"], "nothing is mapped at 0xffffc00000000000"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["attack", "meltdown", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1
