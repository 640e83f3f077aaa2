"""Item 4 of issue 11: the real pti=on kernel's CR3 writes, and what runs under the user CR3, match
linux/entry.py's `linux --no-pcid` syscall by syscall, up to the documented kernel behaviour."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.record.check import CHECKED_KINDS, KERNEL_ONLY, check_recording, model_side
from kaiser.record.recorder import SHIPPED, data_dir, shipped_name

runner = CliRunner()
WORKLOADS = ("getppid", "close", "lseek", "read", "write", "sched_yield", "timer", "page-fault", "pipe")


@pytest.mark.parametrize("kernel", SHIPPED)
def test_recorded_cr3_side_matches_the_model(kernel: str) -> None:
    seen = set()
    for workload in WORKLOADS:
        for c in check_recording(data_dir() / shipped_name(kernel, True, workload)):
            seen.add(c.kind)
            assert c.cr3_match, (workload, c.kind, c.real, c.model)
            assert c.unexplained() == {}, (workload, c.kind, c.unexplained())
            # under the user CR3 the real kernel runs only entry text (entry_64.S)
            assert {r for o, r in c.real.entry | c.real.exit if o == "fetch"} == {"entry_text"}
    assert set(CHECKED_KINDS) <= seen


def test_the_check_can_fail() -> None:
    """A model that switched CR3 once more, or ran kernel text under the user CR3, is reported."""
    from dataclasses import replace

    c = check_recording(data_dir() / shipped_name("6.1", True, "getppid"))[0]
    worse = replace(c, model=replace(c.model, cr3_writes=3))
    assert "cr3_writes" in worse.unexplained()
    leaky = replace(c, real=replace(c.real, entry=c.real.entry | {("fetch", "kernel_text")}))
    assert "entry" in leaky.unexplained()
    assert all(kind in CHECKED_KINDS for kind in ("getppid", "interrupt"))
    assert ("load", "entry_text") in KERNEL_ONLY[("syscall", "exit")]


def test_model_side_cr3_writes() -> None:
    assert model_side("getppid").cr3_writes == 2
    assert model_side("context_switch").cr3_writes == 3  # entry, switch_mm_irqs_off, exit


def test_cli_check() -> None:
    res = runner.invoke(app, ["recording", "check", shipped_name("6.1", True, "close"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] and data["kinds"][0]["kind"] == "close"
    res = runner.invoke(app, ["recording", "check", shipped_name("6.1", False, "close")])
    assert res.exit_code == 2 and "nopti" in res.output
