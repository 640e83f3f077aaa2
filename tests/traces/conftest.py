from __future__ import annotations

from pathlib import Path

import pytest
from trace_support import make_real_trace


@pytest.fixture(scope="session")
def real_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_real_trace(tmp_path_factory.mktemp("real-trace"))


@pytest.fixture(autouse=True)
def private_trace_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The binary trace cache of these tests lives in a temporary directory, never ~/.cache."""
    directory = tmp_path_factory.mktemp("trace-cache")
    monkeypatch.setenv("KAISER_TRACE_CACHE", str(directory))
    return directory
