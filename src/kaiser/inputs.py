"""One reader for every input file a user hands kaiser (dumps, traces, specs, results, recordings).

Every command that reads a file goes through here, so every such file is refused or read the same
way: only regular files (never a directory, FIFO, socket, device, or a /proc or /sys file, whose
sizes lie and whose reads may never end), a bounded number of bytes, strict UTF-8 for text, and
errors that name the file and the place (``FILE:LINE:`` or ``FILE: byte N:``). The CLI turns an
:class:`InputError` into one line on stderr and exit status 2.

This module is the bottom of the tree: it imports nothing of kaiser.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

# CHOSEN: the largest text input read whole. Real ptdumps are well under 10 MiB (the 6.1 kernel
# table with ESPfix compressed is ~200 KiB); sweep specs and results are smaller still.
TEXT_LIMIT = 64 << 20
# Pseudo file systems whose files report sizes that are not their contents, or never end.
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


class InputError(ValueError):
    """A user's input file is unusable: names the file and, where known, the line or byte offset."""

    def __init__(
        self, path: str | os.PathLike[str], message: str, *, line: int | None = None, offset: int | None = None
    ) -> None:
        self.path = str(path)
        self.line = line
        self.offset = offset
        self.reason = message
        if line is not None:
            where = f"{self.path}:{line}: "
        elif offset is not None:
            where = f"{self.path}: byte {offset}: "
        else:
            where = f"{self.path}: "
        super().__init__(where + message)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_input(path: str | os.PathLike[str], what: str = "input") -> Path:
    """`path` as a readable regular file on a real file system, or an :class:`InputError`."""
    p = Path(path)
    try:
        st = p.stat()  # follows links: what matters is what would be read
    except FileNotFoundError:
        raise InputError(p, f"{what}: no such file") from None
    except NotADirectoryError:
        raise InputError(p, f"{what}: a path component is not a directory") from None
    except PermissionError:
        raise InputError(p, f"{what}: permission denied") from None
    except OSError as exc:
        raise InputError(p, f"{what}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(p, f"{what}: is {_kind(st.st_mode)}, not a regular file")
    real = os.path.realpath(p)
    if any(real == root or real.startswith(root + "/") for root in _PSEUDO_ROOTS):
        root = "/" + real.split("/")[1]
        raise InputError(p, f"{what}: is under {root}, whose files are not stable contents; copy it to a regular file")
    if not os.access(p, os.R_OK):
        raise InputError(p, f"{what}: permission denied")
    return p


def open_input(path: str | os.PathLike[str], what: str = "input") -> BinaryIO:
    """A checked regular file opened for binary streaming (traces, recordings)."""
    p = check_input(path, what)
    try:
        return p.open("rb")
    except OSError as exc:
        raise InputError(p, f"{what}: cannot be opened ({exc.strerror or exc})") from None


def read_bytes(path: str | os.PathLike[str], what: str = "input", limit: int = TEXT_LIMIT) -> bytes:
    """The whole of a checked regular file, refusing one longer than `limit` bytes."""
    with open_input(path, what) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise InputError(path, f"{what}: read failed ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise InputError(path, f"{what}: larger than {limit >> 20} MiB; not a file kaiser reads whole")
    return data


def decode_text(path: str | os.PathLike[str], data: bytes, what: str = "input") -> str:
    """`data` as strict UTF-8, or an error naming the line and byte of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            path, f"{what}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", line=line
        ) from None


def read_text(path: str | os.PathLike[str], what: str = "input", limit: int = TEXT_LIMIT) -> str:
    """A checked, bounded, strictly decoded text file."""
    data = read_bytes(path, what, limit)
    if b"\0" in data:
        off = data.index(b"\0")
        raise InputError(
            path, f"{what}: binary data (NUL byte at offset {off}), not text", line=data.count(b"\n", 0, off) + 1
        )
    return decode_text(path, data, what)
