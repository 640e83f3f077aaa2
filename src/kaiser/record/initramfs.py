"""A newc ("070701") cpio archive, the format Linux unpacks as an initramfs
(Documentation/driver-api/early-userspace/buffer-format.rst), written with the stdlib only."""

from __future__ import annotations

import stat
from dataclasses import dataclass

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a regular file (data), a directory, or a character device (rdev)."""

    name: str  # path inside the archive, no leading "/"
    mode: int  # full st_mode: type and permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    """A regular file of the archive."""
    return Entry(name, stat.S_IFREG | perm, data)


def directory(name: str, perm: int = 0o755) -> Entry:
    """A directory of the archive."""
    return Entry(name, stat.S_IFDIR | perm)


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    """A character device node of the archive (major, minor as in Documentation/admin-guide/devices.txt)."""
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _member(ino: int, e: Entry) -> bytes:
    name = e.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
    head = NEWC_MAGIC + b"".join(b"%08x" % f for f in fields)
    return head + name + _pad(len(head) + len(name)) + e.data + _pad(len(e.data))


def newc(entries: list[Entry]) -> bytes:
    """The archive of `entries`, in order, with its trailer (parents must come before children)."""
    out = [_member(i + 1, e) for i, e in enumerate(entries)]
    out.append(_member(0, Entry(TRAILER, 0)))
    blob = b"".join(out)
    return blob + _pad(len(blob))
