"""The system tools kaiser's commands and tests use, the Debian package that provides each, and
one installer for them.

Standard library only: `make` runs it before any venv exists (`python3 src/kaiser/systools.py
GROUP...`), and the package imports it (`from kaiser.systools import ensure`). A group is what one
job needs: `venv` (creating `.venv`), `demo` (`kaiser demo`), `test` (the default suite), `record`
(recording a real kernel under QEMU). As root, `ensure` runs `apt-get update` once and installs
exactly the missing packages, saying in one line what and why; otherwise it raises `ToolsMissing`,
one line naming the command to run (the script exits 2 with it).

To add a requirement, add one `Need` row to `NEEDS`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["command", "file", "module"]

# Debian's python3.X does not ship ensurepip (so `python3 -m venv` fails): python3.X-venv does.
_VENV_PACKAGE: Final = f"python3.{sys.version_info.minor}-venv"


@dataclass(frozen=True)
class Need:
    """One thing a group needs: a command on PATH, a file (a glob under the system root) or a
    module of the interpreter running this; the Debian package providing it; who needs it."""

    name: str
    kind: Kind
    package: str
    why: str
    groups: tuple[str, ...]


NEEDS: Final[tuple[Need, ...]] = (
    Need("ensurepip", "module", _VENV_PACKAGE, "python3 -m venv creates .venv", ("venv", "demo", "test", "record")),
    Need("gcc", "command", "gcc", "tests/traces compile the built-in C program", ("test",)),
    Need("gcc", "command", "gcc", "kaiser record builds its QEMU plugin and static guest init", ("record",)),
    Need("usr/lib/*/libc.a", "file", "libc6-dev", "kaiser record links the guest init -static", ("record",)),
    # apt-get source (QEMU's plugin header is only in its source package) wants dpkg-dev's tools.
    Need("dpkg-source", "command", "dpkg-dev", "kaiser record fetches qemu-plugin.h with apt-get source", ("record",)),
    Need("dpkg-deb", "command", "dpkg", "kaiser record unpacks the kernel package it boots", ("record",)),
    # gcc -static links against libc.a, which only the development package has.
    Need("usr/lib/*/libc.a", "file", "libc6-dev", "tests/traces link it -static", ("test",)),
    Need("as", "command", "binutils", "tests/realcode build the real-code kernel", ("test",)),
    Need("ld", "command", "binutils", "tests/realcode build the real-code kernel", ("test",)),
    Need("objcopy", "command", "binutils", "tests/realcode build the real-code kernel", ("test",)),
    Need("nm", "command", "binutils", "tests/realcode build the real-code kernel", ("test",)),
    Need("valgrind", "command", "valgrind", "tests/traces record a lackey trace", ("test",)),
    Need("strace", "command", "strace", "tests/traces record system calls natively", ("test",)),
    Need("chromium", "command", "chromium", "tests/report open the report headless", ("test",)),
    Need("qemu-system-x86_64", "command", "qemu-system-x86", "kaiser record boots a real kernel", ("record",)),
)

GROUPS: Final[tuple[str, ...]] = tuple(dict.fromkeys(g for need in NEEDS for g in need.groups))


class ToolsMissing(RuntimeError):
    """Something a group needs is absent and cannot be installed from here: one line naming the
    command that would install it."""


@dataclass
class Host:
    """Where the checks look and what they may run (the tests point these at a fake system)."""

    path: str | None = None  # PATH for commands; None: the environment's
    sysroot: str = "/"  # root of the file globs
    is_root: bool | None = None  # None: os.geteuid() == 0
    run: Callable[[list[str]], int] | None = None  # runs apt-get; None: subprocess with the env below


def needs(*groups: str) -> list[Need]:
    """The rows of the named groups, in table order; ValueError naming an unknown group."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group {', '.join(unknown)} (groups: {', '.join(GROUPS)})")
    return [need for need in NEEDS if set(need.groups) & set(groups)]


def present(need: Need, host: Host | None = None) -> bool:
    """Whether `need` is on this machine."""
    host = host or Host()
    if need.kind == "command":
        return shutil.which(need.name, path=host.path) is not None
    if need.kind == "file":
        return bool(glob.glob(os.path.join(host.sysroot, need.name)))
    return importlib.util.find_spec(need.name) is not None


def missing(*groups: str, host: Host | None = None) -> list[Need]:
    """The rows of the named groups that are absent."""
    return [need for need in needs(*groups) if not present(need, host)]


def _packages(absent: Sequence[Need]) -> list[str]:
    return list(dict.fromkeys(need.package for need in absent))


def _apt(args: list[str], host: Host) -> int:
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", *args]
    if host.run is not None:
        return host.run(cmd)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if host.path is not None:
        env["PATH"] = host.path
    # apt's and dpkg's progress is kept back and shown only if they fail.
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode:
        sys.stderr.write("".join(proc.stdout.splitlines(keepends=True)[-20:]))
    return proc.returncode


def ensure(*groups: str, host: Host | None = None, say: Callable[[str], None] | None = None) -> list[str]:
    """Install what the named groups need and is absent; the Debian packages installed (none when
    all is present). Not root, no apt-get, or still absent after installing: `ToolsMissing`."""
    host = host or Host()
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    absent = missing(*groups, host=host)
    if not absent:
        return []
    packages = _packages(absent)
    reasons = "; ".join(
        f"{', '.join(n.name for n in absent if n.package == p)}: "
        + ", ".join(dict.fromkeys(n.why for n in absent if n.package == p))
        for p in packages
    )
    if _VENV_PACKAGE in packages and sys.base_prefix != "/usr":
        raise ToolsMissing(f"{sys.executable} has no ensurepip and is not Debian's python3: use one with venv")
    is_root = os.geteuid() == 0 if host.is_root is None else host.is_root
    sudo = "sudo " if not is_root and shutil.which("sudo", path=host.path) else ""
    install = f"{sudo}apt-get update && {sudo}apt-get install -y {' '.join(packages)}"
    if not is_root:
        raise ToolsMissing(f"missing {' '.join(packages)} ({reasons}); run {'' if sudo else 'as root: '}{install}")
    if shutil.which("apt-get", path=host.path) is None and host.run is None:
        raise ToolsMissing(f"missing {' '.join(packages)} ({reasons}) and no apt-get here: install them")
    say(f"systools: installing {' '.join(packages)} ({reasons})")
    for args in (["update", "-qq"], ["install", "-y", "-qq", *packages]):
        status = _apt(args, host)
        if status:
            raise ToolsMissing(f"apt-get {args[0]} failed (exit status {status}); run as root: {install}")
    still = missing(*groups, host=host)
    if still:
        names = ", ".join(f"{need.name} ({need.package})" for need in still)
        raise ToolsMissing(f"still missing after apt-get install: {names}")
    return packages


def main(argv: Sequence[str] | None = None) -> int:
    """`python3 src/kaiser/systools.py GROUP...`: 0 when everything is there (installed or not),
    2 with one line on stderr otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: systools.py GROUP...  (groups: {', '.join(GROUPS)})", file=sys.stderr)
        return 0 if args else 2
    try:
        ensure(*args)
    except (ValueError, ToolsMissing) as e:
        print(f"systools: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
