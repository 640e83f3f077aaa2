"""The syscall catalogue (kaiser.api.syscalls): every Linux name a trace maps lands on a modelled
body, and the numbers agree with the kernel's own table (the installed asm/unistd_64.h)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kaiser.api.syscalls import catalogue, priced_as
from kaiser.linux.syscalls import SYSCALLS
from kaiser.traces.interleave import MODELLED_AS

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")  # linux-libc-dev (gcc's libc6-dev)


def test_every_traced_name_maps_to_a_listed_body() -> None:
    listed = {c.name: c for c in catalogue()}
    assert list(listed) == list(SYSCALLS)
    for linux_name, body in MODELLED_AS.items():
        assert linux_name in listed[body].linux_names
        assert priced_as(linux_name) == body
    assert sum(len(c.linux_names) for c in listed.values()) == len(MODELLED_AS)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=20))
def test_any_other_name_is_priced_generic(name: str) -> None:
    assume(name not in MODELLED_AS)
    assert priced_as(name) == "generic"
    assert {priced_as(n) for n in ("mmap", "openat", "brk")} == {"generic"}  # calls the model has no body for


def test_numbers_are_the_kernels() -> None:
    if not UNISTD.exists():
        pytest.skip(f"{UNISTD} is not installed (Debian linux-libc-dev)")
    nrs = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+) (\d+)", UNISTD.read_text())}
    checked = 0
    for c in catalogue():
        for linux_name in c.linux_names:
            if linux_name == c.name:
                assert nrs[linux_name] == c.nr, c.name
                checked += 1
    assert checked >= 5
