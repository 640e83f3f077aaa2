"""What a recording needs, built or fetched at record time into a cache (never committed):
QEMU's plugin header from Debian's qemu source package, our plugin and guest init compiled with
gcc, and Debian's kernel packages unpacked to their vmlinuz.

Cache: $KAISER_CACHE, else $XDG_CACHE_HOME/kaiser, else ~/.cache/kaiser; everything under
`record/`. The apt calls use a private sources list, lists and archive directory there, so the
host's apt configuration is never changed (a `deb-src` line for the host's own suite is added
only to the private list).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Final

# The kernels `--kernel` names: Debian bookworm's own packages (linux-image-amd64 depends on the
# 6.1 one; 6.12 is packaged for bookworm as linux-image-6.12.*+deb12-amd64). POSIX ERE: apt-cache
# search takes them too.
KERNELS: Final = {
    "6.1": r"linux-image-6\.1\.0-[0-9]+-amd64",
    "6.12": r"linux-image-6\.12\.[0-9]+\+deb12-amd64",
}
HEADER_MEMBER: Final = "include/qemu/qemu-plugin.h"
Say = Callable[[str], None]


class BuildError(RuntimeError):
    """A build or fetch step failed: one line naming the step and what to do."""


def cache_dir() -> Path:
    """Where built plugins, guests and unpacked kernels are kept ($KAISER_CACHE, else
    $XDG_CACHE_HOME/kaiser or ~/.cache/kaiser, then record/)."""
    root = os.environ.get("KAISER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kaiser"
    )
    path = Path(root) / "record"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} not found") from None
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BuildError(f"{what} failed (exit {proc.returncode}): {tail[-1] if tail else ' '.join(cmd)}")
    return proc.stdout


def _suite() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    m = re.search(r"^VERSION_CODENAME=(\w+)", text, re.M)
    return m[1] if m else "bookworm"


def _private_apt(cache: Path) -> list[str]:
    """apt-get options for a private deb-src list (the host's sources stay as they are)."""
    apt = cache / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    suite = _suite()
    sources = apt / "sources.list"
    sources.write_text(
        f"deb-src http://deb.debian.org/debian {suite} main\n"
        f"deb-src http://deb.debian.org/debian-security {suite}-security main\n"
    )
    opts = [
        f"Dir::Etc::SourceList={sources}",
        "Dir::Etc::SourceParts=/nonexistent",
        f"Dir::State::Lists={apt / 'lists'}",
        f"Dir::Cache={apt / 'cache'}",
    ]
    if os.geteuid() == 0:
        opts.append("APT::Sandbox::User=root")
    return [arg for o in opts for arg in ("-o", o)]


def plugin_header(say: Say) -> Path:
    """The directory holding qemu-plugin.h of the installed QEMU's own source package."""
    cache = cache_dir()
    version = _run(["dpkg-query", "-W", "-f", "${source:Version}", "qemu-system-x86"], "dpkg-query qemu-system-x86")
    dest = cache / "qemu-include" / re.sub(r"[^\w.+-]", "_", version)
    if (dest / "qemu-plugin.h").exists():
        return dest
    src = cache / "qemu-src"
    src.mkdir(exist_ok=True)
    opts = _private_apt(cache)
    say(f"record: fetching QEMU {version}'s source package for qemu-plugin.h (apt-get source)")
    _run(["apt-get", *opts, "update", "-qq"], "apt-get update (deb-src)")
    upstream = version.split(":")[-1].rsplit("-", 1)[0]
    _run(["apt-get", *opts, "source", "--download-only", "-qq", f"qemu={version}"], "apt-get source qemu", cwd=src)
    tarballs = sorted(src.glob(f"qemu_{upstream}.orig.tar.*"))
    if not tarballs:
        raise BuildError(f"apt-get source qemu: no qemu_{upstream}.orig.tar.* in {src}")
    with tarfile.open(tarballs[0]) as tar:
        member = next((m for m in tar if m.name.endswith("/" + HEADER_MEMBER)), None)
        if member is None:
            raise BuildError(f"{tarballs[0].name} has no {HEADER_MEMBER}")
        data = tar.extractfile(member)
        assert data is not None
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "qemu-plugin.h").write_bytes(data.read())
    for tarball in src.iterdir():  # the 24 MB source is not needed again
        tarball.unlink()
    return dest


def _source(name: str) -> bytes:
    return resources.files("kaiser.record").joinpath(name).read_bytes()


def _compiled(name: str, source: bytes, extra: bytes, cmd: Callable[[Path, Path], list[str]], what: str) -> Path:
    cache = cache_dir() / "bin"
    cache.mkdir(exist_ok=True)
    digest = hashlib.sha256(source + extra).hexdigest()[:16]
    out = cache / f"{name}-{digest}"
    if out.exists():
        return out
    src = cache / f"{name}-{digest}.c"
    src.write_bytes(source)
    tmp = out.with_suffix(".tmp")
    _run(cmd(src, tmp), what)
    tmp.rename(out)
    return out


def build_plugin(say: Say) -> Path:
    """libkaiser.so, compiled against the installed QEMU's own plugin header."""
    include = plugin_header(say)
    header = (include / "qemu-plugin.h").read_bytes()
    return _compiled(
        "libkaiser.so",
        _source("plugin/kaiser_plugin.c"),
        header,
        lambda src, out: ["gcc", "-O2", "-Wall", "-shared", "-fPIC", f"-I{include}", "-o", str(out), str(src)],
        "gcc (QEMU plugin)",
    )


def build_init() -> Path:
    """The static guest init."""
    return _compiled(
        "init",
        _source("guest/init.c"),
        b"",
        lambda src, out: ["gcc", "-static", "-O2", "-Wall", "-o", str(out), str(src)],
        "gcc -static (guest init)",
    )


def _newest_known(version: str) -> str | None:
    """The newest package of the series in apt's lists, or None."""
    if version == "6.1":
        deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        m = re.search(r"Depends: (" + KERNELS["6.1"] + ")", deps.stdout)
        if m:
            return m[1]
    found = _run(["apt-cache", "search", "--names-only", "^" + KERNELS[version] + "$"], "apt-cache search")
    names = [line.split()[0] for line in found.splitlines() if line.strip()]
    return sorted(names, key=lambda n: [int(x) for x in re.findall(r"\d+", n)])[-1] if names else None


def kernel_package(version: str, say: Say | None = None) -> str:
    """The newest Debian package of the named kernel series apt knows (as root, after one
    `apt-get update` when its lists know none: a fresh machine's are often empty)."""
    if version not in KERNELS:
        raise BuildError(f"--kernel {version}: not one of {', '.join(KERNELS)}")
    name = _newest_known(version)
    if name is None and os.geteuid() == 0:
        if say is not None:
            say("record: apt knows no kernel package of that series; apt-get update")
        _run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"], "apt-get update")
        name = _newest_known(version)
    if name is None:
        raise BuildError(f"--kernel {version}: apt knows no package matching {KERNELS[version]} (apt-get update?)")
    return name


def vmlinuz(version: str, say: Say) -> tuple[Path, str]:
    """The kernel image of the named series (downloaded with apt-get download, unpacked from the
    .deb; nothing is installed into the host's /boot) and the package it came from."""
    package = kernel_package(version, say)
    release = package.removeprefix("linux-image-")
    kernels = cache_dir() / "kernels"
    kernels.mkdir(exist_ok=True)
    image = kernels / f"vmlinuz-{release}"
    if image.exists():
        return image, package
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    say(f"record: downloading {package} (apt-get download)")
    opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    _run(["apt-get", *opts, "download", "-qq", package], f"apt-get download {package}", cwd=debs)
    deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))), None)
    if deb is None:
        raise BuildError(f"apt-get download {package}: no .deb in {debs}")
    # stderr discarded: stopping at vmlinuz leaves dpkg-deb a broken pipe, which it reports
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.name.lstrip("./") == f"boot/vmlinuz-{release}":
                    data = tar.extractfile(member)
                    assert data is not None
                    tmp = image.with_suffix(".tmp")
                    with tmp.open("wb") as f:
                        shutil.copyfileobj(data, f)
                    tmp.rename(image)
                    break
    finally:
        proc.stdout.close()
        proc.wait()
    if not image.exists():
        raise BuildError(f"{deb.name} has no boot/vmlinuz-{release}")
    deb.unlink()  # 70-110 MB; the image is what is kept
    return image, package
