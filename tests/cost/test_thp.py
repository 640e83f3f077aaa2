"""Transparent huge pages for the benchmark's user buffer (`--thp`, the `thp` knob).

Checked through the page tables, with the reference walker: under `always` every 2 MiB-aligned
2 MiB range inside the buffer translates through one 2 MiB page and everything else through
4 KiB pages; under `madvise` (Debian's default) and `never` a malloc'd buffer is all 4 KiB.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.cost.run import run
from kaiser.cost.workloads import THP_MODES, map_user_buffer
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.x86.cpu import CpuState
from kaiser.x86.rights import Op
from kaiser.x86.walker import Translation, translate

K4, M2 = 1 << 12, 1 << 21


@settings(max_examples=12, deadline=None)
@given(pages=st.integers(1, 3000), mode=st.sampled_from(THP_MODES), seed=st.integers(0, 3))
def test_thp_backs_the_aligned_interior_with_2m_pages(pages: int, mode: str, seed: int) -> None:
    kernel = Kernel.boot(KernelConfig("nopti", seed=seed, ncpus=1))
    task = kernel.spawn()
    size = pages * K4
    va = map_user_buffer(kernel, task, size, K4, mode)
    kcr3, _ = kernel.cr3_pair(task, asid=0)
    state = CpuState(cr3=kcr3, cr4=kernel.cr4(), cpl=3)
    huge = 0
    for page in range(va, va + size, K4):
        t = translate(kernel.mem, state, page, Op.READ)
        assert isinstance(t, Translation), f"{page:#x} not mapped"
        inside = page // M2 * M2 >= va and page // M2 * M2 + M2 <= va + size
        want = M2 if mode == "always" and inside else K4
        assert t.page_size == want, f"{mode}: {page:#x} in a {t.page_size:#x} page"
        huge += t.page_size == M2
    if mode == "always" and size >= 4 * M2:
        assert huge >= (size - 2 * M2) // K4  # "mostly 2 MiB pages": all but the head and tail


def test_thp_always_removes_the_walks_of_a_100m_sweep() -> None:
    """The published-curve configuration: 1024 loads a call at 64 B over 100 MiB. With THP the
    dTLB walks per call fall from one per 4 KiB page touched to almost none (PCID on)."""
    kw = {"iterations": 40, "warmup": 10, "pcid": True}
    knobs = {"syscall": "close", "reads": "1024", "stride": "64", "buffer": "100MiB"}
    small = run("linux-4.15", "syscall-loop", settings={**knobs, "thp": "never"}, **kw)
    thp = run("linux-4.15", "syscall-loop", settings={**knobs, "thp": "always"}, **kw)
    assert small.counters.walks_d >= 16 * 40  # 1024 x 64 B = 16 pages of 4 KiB per call
    assert thp.counters.walks_d < small.counters.walks_d / 10


@pytest.mark.parametrize("mode", ["madvise", "never"])
def test_default_is_madvise_and_keeps_4k(mode: str) -> None:
    from kaiser.cost.workloads import get_workload

    assert get_workload("syscall-loop").resolve({})["thp"] == "madvise"
    kw = {"iterations": 20, "warmup": 5}
    knobs = {"reads": "256", "stride": "4096", "buffer": "4MiB"}
    a = run("nopti", "syscall-loop", settings=knobs, **kw)
    b = run("nopti", "syscall-loop", settings={**knobs, "thp": mode}, **kw)
    assert a.counters == b.counters
