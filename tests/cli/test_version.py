"""One version: `[project] version` of pyproject.toml is the only place it is written; the
installed metadata, `kaiser.__version__`, `kaiser --version` and the report's footer all say it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import kaiser
from kaiser.cli.app import run
from kaiser.report.html import kaiser_version

ROOT = Path(__file__).resolve().parents[2]
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_is_pyprojects() -> None:
    assert metadata.version("kaiser") == DECLARED  # stale if pyproject changed without reinstalling
    assert kaiser.__version__ == DECLARED == kaiser_version()


def test_version_is_written_once() -> None:
    """No other file of src/ spells the version out."""
    spelled = [p for p in (ROOT / "src" / "kaiser").rglob("*.py") if f'"{DECLARED}"' in p.read_text()]
    assert spelled == []


def test_kaiser_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"kaiser {DECLARED}\n"
    done = subprocess.run([str(Path(sys.executable).parent / "kaiser"), "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"kaiser {DECLARED}\n", "")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kaiser.nope  # noqa: B018
