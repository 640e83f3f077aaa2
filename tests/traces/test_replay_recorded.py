"""`kaiser replay --kernel-side recorded`: a real program's system calls with the kernel bodies of
the shipped recordings where one exists (record/replay.py), the rest modelled, said per call."""

from __future__ import annotations

from pathlib import Path

import pytest
from trace_support import make_real_trace
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.record.replay import recording_path
from kaiser.traces.interleave import MODELLED_AS
from kaiser.traces.multireplay import replay_trace


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_real_trace(tmp_path_factory.mktemp("recorded-side"), rounds=2)[0]


def test_recorded_kernel_side_of_a_real_trace(small_trace: Path) -> None:
    configs = [("linux", False), ("kaiser-rfc", True)]
    rec = replay_trace(small_trace, configs, path="engine", kernel_side="recorded")
    mod = replay_trace(small_trace, configs, path="engine", kernel_side="modelled")
    for r, m in zip(rec.results, mod.results, strict=True):
        assert r.kernel_side.keys() == m.kernel_side.keys()
        for name, side in r.kernel_side.items():
            has = name in MODELLED_AS.values() and recording_path("6.1", name) is not None
            assert side == ("recorded" if has else "modelled"), name
        assert set(m.kernel_side.values()) == {"modelled"}
        assert "recorded" in r.kernel_side.values()
        # the entry and exit, and so the CR3 writes, are the variant's own either way
        assert r.counters.cr3_writes == m.counters.cr3_writes
        assert r.counters.faults == m.counters.faults
        assert r.ops.kernel_refs > m.ops.kernel_refs


def test_replay_cli_says_which_calls_were_recorded(small_trace: Path) -> None:
    out = CliRunner().invoke(app, ["replay", str(small_trace), "-v", "linux", "--no-pcid", "--kernel-side", "recorded"])
    assert out.exit_code == 0, out.output
    assert "kernel side recorded: " in out.stdout
    assert "kernel side modelled: " in out.stdout
    default = CliRunner().invoke(app, ["replay", str(small_trace), "-v", "linux", "--no-pcid"])
    assert default.exit_code == 0, default.output
    sides = [[line for line in o.stdout.splitlines() if line.startswith("kernel side")] for o in (out, default)]
    assert sides[0] == sides[1]  # recorded is the default (docs/recording.md)
    modelled = CliRunner().invoke(
        app, ["replay", str(small_trace), "-v", "linux", "--no-pcid", "--kernel-side", "modelled"]
    )
    assert "kernel side recorded: none" in modelled.stdout
