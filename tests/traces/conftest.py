from __future__ import annotations

from pathlib import Path

import pytest
from trace_support import make_real_trace


@pytest.fixture(scope="session")
def real_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_real_trace(tmp_path_factory.mktemp("real-trace"))
