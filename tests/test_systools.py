"""The system-tool installer against a fake system: a PATH of fake commands, a fake root for files,
and a fake apt-get that records its arguments and environment and "installs" by creating the
commands and files its packages provide. The non-root path also runs for real, as `nobody`."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser import systools
from kaiser.systools import NEEDS, Host, ToolsMissing, ensure, missing, needs

SCRIPT = Path(systools.__file__)
TEST_NEEDS = [n for n in needs("test") if n.kind != "module"]  # the interpreter's ensurepip is real
PROVIDES = {p: [n.name for n in TEST_NEEDS if n.package == p] for p in dict.fromkeys(n.package for n in TEST_NEEDS)}
KINDS = {n.name: n.kind for n in TEST_NEEDS}

FAKE_APT = """#!{python}
import json, os, sys
from pathlib import Path
here = Path(__file__).parent
with open(here.parent / "apt.log", "a") as log:
    log.write(json.dumps({{"args": sys.argv[1:], "frontend": os.environ.get("DEBIAN_FRONTEND")}}) + "\\n")
if {status}:
    print("E: Unable to locate package")
    sys.exit({status})
provides, kinds = {provides!r}, {kinds!r}
if sys.argv[3] == "install" and {works}:
    for package in sys.argv[4:]:
        for name in provides.get(package, []):
            if kinds[name] == "command":
                tool = here / name
                tool.write_text("#!/bin/sh\\n")
                tool.chmod(0o755)
            else:
                target = here.parent / "root" / name.replace("*", "x86_64-linux-gnu")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("")
"""


def fake_system(tmp: Path, have: set[str], *, status: int = 0, works: bool = True) -> Host:
    """A fake machine in `tmp` with the named test-group tools present; as root."""
    for sub in ("bin", "root"):
        shutil.rmtree(tmp / sub, ignore_errors=True)
        (tmp / sub).mkdir()
    (tmp / "apt.log").unlink(missing_ok=True)
    apt = tmp / "bin" / "apt-get"
    apt.write_text(FAKE_APT.format(python=sys.executable, status=status, provides=PROVIDES, kinds=KINDS, works=works))
    apt.chmod(0o755)
    for name in have:
        if KINDS[name] == "command":
            (tmp / "bin" / name).write_text("#!/bin/sh\n")
            (tmp / "bin" / name).chmod(0o755)
        else:
            target = tmp / "root" / name.replace("*", "x86_64-linux-gnu")
            target.parent.mkdir(parents=True)
            target.write_text("")
    return Host(path=str(tmp / "bin"), sysroot=str(tmp / "root"), is_root=True)


def apt_calls(tmp: Path) -> list[dict[str, object]]:
    log = tmp / "apt.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(have=st.sets(st.sampled_from(sorted(KINDS))))
def test_installs_exactly_what_is_missing(tmp_path: Path, have: set[str]) -> None:
    host = fake_system(tmp_path, have)
    lines: list[str] = []
    installed = ensure("test", host=host, say=lines.append)
    expected = list(dict.fromkeys(n.package for n in TEST_NEEDS if n.name not in have))
    assert installed == expected
    calls = apt_calls(tmp_path)
    if not expected:
        assert calls == [] and lines == []
        return
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    assert [c["args"] for c in calls] == [lock + ["update", "-qq"], lock + ["install", "-y", "-qq", *expected]]
    assert all(c["frontend"] == "noninteractive" for c in calls)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert all(p in lines[0] for p in expected)
    assert missing("test", host=host) == []


def test_not_root_names_the_command_and_runs_nothing(tmp_path: Path) -> None:
    host = fake_system(tmp_path, set(KINDS) - {"chromium", "valgrind"})
    host.is_root = False
    with pytest.raises(ToolsMissing) as e:
        ensure("test", host=host)
    message = str(e.value)
    assert "\n" not in message
    assert message.endswith("as root: apt-get update && apt-get install -y valgrind chromium")
    assert apt_calls(tmp_path) == []


def test_apt_failure_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    host = fake_system(tmp_path, set(KINDS) - {"strace"}, status=100)
    with pytest.raises(ToolsMissing, match=r"^apt-get update failed \(exit status 100\)"):
        ensure("test", host=host, say=lambda line: None)
    assert "Unable to locate package" in capfd.readouterr().err  # apt's own words are kept


def test_still_missing_after_install_is_an_error(tmp_path: Path) -> None:
    host = fake_system(tmp_path, set(KINDS) - {"nm"}, works=False)
    with pytest.raises(ToolsMissing, match=r"still missing after apt-get install: nm \(binutils\)"):
        ensure("test", host=host, say=lambda line: None)


def test_groups_and_table() -> None:
    assert systools.GROUPS == ("venv", "demo", "test", "record")
    names = {n.name: n.package for n in needs("test")}
    for tool, package in {"gcc": "gcc", "as": "binutils", "valgrind": "valgrind", "chromium": "chromium"}.items():
        assert names[tool] == package
    assert "libc6-dev" in names.values()
    assert {n.name for n in needs("record")} >= {"qemu-system-x86_64"}
    assert all(n.groups and n.package and n.why for n in NEEDS)
    with pytest.raises(ValueError, match="unknown group junk"):
        needs("test", "junk")


def test_script_is_standard_library_only() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"__future__"} <= sys.stdlib_module_names
    # Without site-packages (-S) and without the package on the path (-I), as make runs it first.
    proc = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), "junk"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "systools: unknown group junk (groups: venv, demo, test, record)\n"


def test_not_root_for_real() -> None:
    """As `nobody`, with a PATH holding no tool: exit 2, one line naming the exact command."""
    python = "/usr/bin/python3"  # Debian's, which `nobody` can run (a pyenv or venv one may be private)
    assert os.access(python, os.X_OK), "this test needs Debian's /usr/bin/python3"
    # `nobody` may not enter the checkout or pytest's tmp_path (both can be 0700): run a copy of
    # the script from a directory it can read
    public = Path(tempfile.mkdtemp(prefix="kaiser-systools-", dir="/tmp"))
    try:
        public.chmod(0o755)
        script = public / "systools.py"
        shutil.copyfile(SCRIPT, script)
        script.chmod(0o644)
        (public / "empty").mkdir(mode=0o755)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, str(script), "test"],
            capture_output=True,
            text=True,
            env={"PATH": str(public / "empty")},
            executable=shutil.which("setpriv"),
        )
    finally:
        shutil.rmtree(public)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    absent = [n for n in needs("test") if n.kind == "command" or (n.kind == "file" and not systools.present(n))]
    packages = " ".join(dict.fromkeys(n.package for n in absent))  # with no tool on PATH, every command's
    assert "chromium" in packages and "binutils" in packages
    assert lines[0].startswith(f"systools: missing {packages} (")
    assert lines[0].endswith(f"; run as root: apt-get update && apt-get install -y {packages}")
