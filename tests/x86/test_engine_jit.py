"""The engine's numba decorator (`kaiser.x86.engine_jit`): one signature per compiled function
whatever literals its callers pass, and a compile lock that another process sees held."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaiser.x86.engine_jit import compile_lock, lock_path

_LITERALS = """
from kaiser.x86.engine_jit import jit

@jit
def callee(x, flag):
    return x + 1 if flag else x - 1

@jit
def caller(x):
    return callee(x, True) + callee(-1, False) + callee(x, False) + callee(0, True)
"""


def _fresh_process(tmp_path: Path, module: str, code: str, probe: str) -> Any:
    """What `probe` prints last, as JSON, run in a fresh process that imports `code` as `module`
    (written to tmp_path) on the numba cache in tmp_path/cache (empty on the first call)."""
    (tmp_path / f"{module}.py").write_text(code)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compiled_signatures(tmp_path: Path, code: str, call: str) -> dict[str, int]:
    """Signature counts after running `call` in a fresh process on an empty numba cache (a cached
    caller carries its callees compiled in, so their dispatchers would show nothing)."""
    probe = (
        f"import jitted, json\n{call}\n"
        "print(json.dumps({n: len(f.signatures) for n, f in vars(jitted).items() if hasattr(f, 'signatures')}))"
    )
    counts: dict[str, int] = _fresh_process(tmp_path, "jitted", code, probe)
    return counts


def test_literal_arguments_compile_one_signature(tmp_path: Path) -> None:
    """Callers pass constants (`drop(..., -1, True, ...)`): numba would compile one
    specialization per set of literals; `jit` compiles the plain types once."""
    counts = _compiled_signatures(tmp_path, _LITERALS, "assert jitted.caller(5) == 6 + -2 + 4 + 1")
    assert counts["callee"] == 1 and counts["caller"] == 1


@pytest.mark.slow
def test_every_engine_function_compiles_once(tmp_path: Path) -> None:
    """The engine itself, cold (about half a minute of compile): every function one signature."""
    code = "from kaiser.x86.engine_core import *\nfrom kaiser.x86.engine_cache import *\n"
    counts = _compiled_signatures(tmp_path, code, "from kaiser.x86.engine import warm_up\nwarm_up()")
    assert counts["drop"] == counts["l2_request"] == counts["replay"] == 1
    assert {name: n for name, n in counts.items() if n > 1} == {}


def test_the_compile_lock_is_held_against_other_processes() -> None:
    """A process holding `compile_lock` (nested, as a compile nests its callees') keeps another
    from taking the lock file until it lets go."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom kaiser.x86.engine_jit import compile_lock\n"
            "with compile_lock():\n    with compile_lock():\n        print('held', flush=True)\n"
            "        sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        fd = os.open(lock_path(), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(timeout=60) == 0
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the holder let go
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    with compile_lock(), compile_lock():  # reentrant in one thread
        pass


# ---- the cache knows every engine source ----------------------------------------------------------
_STAMPED = """
from kaiser.x86 import engine_jit

@engine_jit.jit
def double(x):
    return 2 * x
"""


def _cache_hits(tmp_path: Path, before: str = "") -> list[int]:
    """[hits, misses] of numba's cache for `double` in a fresh process on tmp_path's cache, after
    `before` ran (with `engine_jit` imported)."""
    probe = (
        f"from kaiser.x86 import engine_jit\n{before}\nimport stamped, json\nstamped.double(3)\n"
        "s = stamped.double.stats\nprint(json.dumps([sum(s.cache_hits.values()), sum(s.cache_misses.values())]))"
    )
    hits: list[int] = _fresh_process(tmp_path, "stamped", _STAMPED, probe)
    return hits


def test_an_edit_to_any_engine_source_makes_the_cache_stale(tmp_path: Path) -> None:
    """numba's own stamp is the defining file's hash; ours adds every engine source, so the same
    function with the same file loads from the cache only while the engine's sources are the same."""
    assert _cache_hits(tmp_path) == [0, 1]  # cold: compiled and saved
    assert _cache_hits(tmp_path) == [1, 0]  # warm: loaded
    edited = "engine_jit.ENGINE_FINGERPRINT = 'another engine_cache.py'"
    assert _cache_hits(tmp_path, edited) == [0, 1]  # an engine source changed: compiled afresh


def test_the_fingerprint_follows_every_file(tmp_path: Path) -> None:
    from kaiser.x86.engine_jit import fingerprint

    files = [tmp_path / n for n in ("a.py", "b.py")]
    for f in files:
        f.write_text("X = 1\n")
    first = fingerprint(tuple(files))
    files[1].write_text("X = 2\n")
    assert fingerprint(tuple(files)) != first
    assert fingerprint((tmp_path / "absent.py",)) == ""


def test_engine_sources_hold_every_kaiser_module_the_engine_imports() -> None:
    """Every kaiser.x86 module that an engine module imports (its constants are compiled in) is
    in `ENGINE_SOURCES`, and so is every engine module."""
    import ast

    from kaiser.x86 import engine_jit

    x86 = Path(engine_jit.__file__).parent
    needed = set()
    for path in x86.glob("engine*.py"):
        if path.name == "engine.py":  # the Python driver: not compiled
            continue
        needed.add(path.name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kaiser."):
                parts = node.module.split(".")
                if parts[:2] == ["kaiser", "x86"] and len(parts) == 3:
                    needed.add(parts[2] + ".py")
                elif node.module == "kaiser.x86":
                    needed.update(a.name + ".py" for a in node.names)
                else:
                    pytest.fail(f"{path.name} imports {node.module}: add it to ENGINE_SOURCES' scan")
    assert needed <= set(engine_jit.ENGINE_SOURCES), sorted(needed - set(engine_jit.ENGINE_SOURCES))
