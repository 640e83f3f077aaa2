"""The shipped recordings of Debian's kernels: `kaiser recording info --json` reads every one, and
what they say is consistent with itself and with what PTI is (docs/recording.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.record.format import REGIONS, read_header
from kaiser.record.recorder import SHIPPED, WORKLOADS, data_dir, shipped_name
from kaiser.record.stats import METRICS, USER_METRICS

runner = CliRunner()
SHIPPED_FILES = sorted(data_dir().glob("*.krec"))
# The kind each workload exists to record (stats.kind_of names).
MAIN_KIND = {
    "getppid": "getppid",
    "close": "close",
    "lseek": "lseek",
    "read": "read",
    "write": "write",
    "pipe": "context_switch",
    "page-fault": "page_fault",
    "sched_yield": "sched_yield",
    "timer": "interrupt",
    "s1bench": "close",
}
ADDITIVE = ("kernel_instructions", "kernel_loads", "kernel_stores", "cr3_writes")


def test_every_configuration_is_shipped() -> None:
    names = {p.name for p in SHIPPED_FILES}
    want = {shipped_name(k, pti, w) for k in SHIPPED for pti in (True, False) for w in WORKLOADS}
    assert want <= names, sorted(want - names)


def info(path: Path) -> dict[str, object]:
    res = runner.invoke(app, ["recording", "info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[p.name for p in SHIPPED_FILES])
def test_info_json_reads_every_recording(path: Path) -> None:
    data = info(path)
    header = read_header(path)
    kernel, pti_word, workload = path.stem.split("-", 2)
    assert header["kernel_release"].startswith(kernel + ".") and header["workload"] == workload
    assert data["pti"] is (pti_word == "pti") and ("pti=on" in data["cmdline"]) is data["pti"]  # type: ignore[operator]
    transitions = data["transitions"]
    assert isinstance(transitions, dict)
    main = transitions[MAIN_KIND[workload]]
    # most calls are of the workload's own kind (a pipe round trip: up to two switches and two
    # syscalls that did not block); the timer's ticks come in host time, fewer when QEMU is slow
    assert main["calls"] >= header["calls"] // (10 if workload == "timer" else 2)
    for kind, entry in transitions.items():
        assert set(entry["median"]) == set(METRICS) and set(entry["by_region"]) == set(REGIONS)
        med = entry["median"]
        assert med["kernel_instructions"] > 0, kind
        assert med["code_pages_2m"] <= med["code_pages_4k"] and med["data_pages_2m"] <= med["data_pages_4k"]
        # KPTI switches CR3 on entry and exit (arch/x86/entry/calling.h SWITCH_TO_KERNEL_CR3 /
        # SWITCH_TO_USER_CR3); nopti never does, except switch_mm in a context switch
        if kind != "context_switch":
            assert (med["cr3_writes"] >= 2) is data["pti"], kind
        # the entry code runs from entry text (arch/x86/entry/entry_64.S)
        assert entry["by_region"]["entry_text"]["kernel_instructions"] > 0, kind
        assert entry["by_region"]["kernel_text"]["kernel_instructions"] > 0, kind
    user = data["user"]
    assert isinstance(user, dict) and set(user["median"]) == set(USER_METRICS)


@pytest.mark.parametrize("path", SHIPPED_FILES[::7], ids=[p.name for p in SHIPPED_FILES[::7]])
def test_regions_add_up_on_every_call(path: Path) -> None:
    """Per transition, the region split sums to the total (every reference has one region)."""
    from kaiser.record.format import RecordingReader, Transition
    from kaiser.record.stats import transition_metrics

    with RecordingReader(path) as r:
        for n, rec in enumerate(r.records()):
            if isinstance(rec, Transition):
                m = transition_metrics(rec.refs)
                for key in ADDITIVE:
                    assert sum(reg[key] for reg in m["by_region"].values()) == m["total"][key]
                # the kernel's accesses to user memory are data (copy_to_user), never code (SMEP)
                user = rec.refs[rec.refs["region"] == REGIONS.index("user")]
                assert not (user["op"] == 0).any()
            if n > 400:
                break


def test_symbols_name_the_entry_and_syscall_pages() -> None:
    path = data_dir() / shipped_name("6.1", True, "getppid")
    res = runner.invoke(app, ["recording", "info", str(path), "--json", "--symbols"])
    assert res.exit_code == 0, res.output
    pages = json.loads(res.stdout)["transitions"]["getppid"]["pages"]
    names = {n for p in pages for n in p["symbols"]}
    assert {"entry_SYSCALL_64", "__x64_sys_getppid", "do_syscall_64"} <= names
    entry = [p for p in pages if "entry_SYSCALL_64" in p["symbols"]]
    assert entry and all(p["region"] == "entry_text" for p in entry)
    assert all(p["symbols"] == [] for p in pages if p["region"] in ("direct_map", "task_stack"))


def test_list_names_every_shipped_file() -> None:
    res = runner.invoke(app, ["recording", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert {r["name"] for r in json.loads(res.stdout)} == {p.name for p in SHIPPED_FILES}
    text = runner.invoke(app, ["recording", "list"], env={"COLUMNS": "80"})
    assert text.exit_code == 0 and all(len(line) <= 80 for line in text.stdout.splitlines())


def test_info_text_fits_80_columns() -> None:
    for name in (shipped_name("6.1", True, "getppid"), shipped_name("6.12", False, "pipe")):
        res = runner.invoke(app, ["recording", "info", name, "--symbols"], env={"COLUMNS": "80"})
        assert res.exit_code == 0, res.output
        long = [line for line in res.stdout.splitlines() if len(line.rstrip()) > 80]
        assert not long, long[:3]
        assert "entry_text" in res.stdout and "cpu_entry_area" in res.stdout
