"""`kaiser bench --machine NAME` for every machine of cost/machines.py: it runs, fits 80 columns
(counted in characters), says the machine it ran as, and docs/cost.md's machine table says of it
what `MACHINES` holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.choices import MACHINE_NAMES
from kaiser.cli import output
from kaiser.cli.app import app
from kaiser.cost.machines import MACHINES

DOC = Path(__file__).parents[2] / "docs" / "cost.md"


@pytest.mark.parametrize("name", MACHINE_NAMES)
def test_every_machine_runs_within_80_columns(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(output.console, "width", output.terminal_width())
    result = CliRunner().invoke(app, ["bench", "--machine", name, "-n", "5", "--warmup", "0", "-v", "linux-4.15"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    m = MACHINES[name]
    text = " ".join(result.stdout.split())  # the lines rejoined where the terminal wrapped them
    assert f"machine {name}: {m.what}; {m.clock_ghz:g} GHz, caches {m.caches.name}" in text
    assert ("nested paging" in text) == (m.guest is not None)


def test_the_docs_machine_table_is_the_registry() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in MACHINES:
            rows[cells[0]] = cells
    assert set(rows) == set(MACHINES)
    for name, (_, setup, caches, ghz, guest, _src) in rows.items():
        m = MACHINES[name]
        assert re.split(r"[,(]", setup)[0].strip() in m.what, name
        assert caches.split()[0] == m.caches.name, name
        assert float(re.sub(r" \(.*", "", ghz)) == m.clock_ghz, name
        if m.guest is None:
            assert guest == "–", name
        else:  # the hypervisor as named (Xen's mode may follow), then the EPT page size
            assert guest.startswith(m.guest) and guest.endswith(f"({m.host_page})"), name
