"""kaiser.api.walks against the debugfs dump of the same tree: a kernel-mode read (SMAP off) on a
process's user or kernel PGD translates exactly where the ptdump of that tree shows a present
range (the walker and the ptdump writer read the same bits independently)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.api.process import boot_process
from kaiser.api.tables import dump_text
from kaiser.api.walks import process_walk, sample_walk
from kaiser.linux.ptdump_parse import parse_ptdump, range_lines
from kaiser.x86.rights import Op
from kaiser.x86.walker import Translation

BOOTS = {v: boot_process(v, pcid=True, kaslr=True, seed=7, ncpus=1) for v in ("linux", "nopti", "kaiser-rfc")}


@settings(max_examples=60)
@given(variant=st.sampled_from(sorted(BOOTS)), pgd=st.sampled_from(["user", "kernel"]), data=st.data())
def test_a_walk_translates_where_the_dump_shows_a_present_range(variant: str, pgd: str, data: st.DataObject) -> None:
    kernel, task = BOOTS[variant]
    if pgd == "user" and task.mm.pgd.user_pt is None:
        with pytest.raises(ValueError, match="no user PGD"):
            process_walk(kernel, task, kernel.layout.kernel_start, Op.READ, pgd="user")
        return
    table = "current_user" if pgd == "user" else "current_kernel"
    lines = [
        r for r in range_lines(parse_ptdump(dump_text(kernel, task, table))) if r.start >= kernel.layout.kernel_start
    ]
    line = data.draw(st.sampled_from(lines))
    va = data.draw(st.integers(line.start, min(line.end, 1 << 64) - 1)) & ~0xFFF
    walk = process_walk(kernel, task, va, Op.READ, pgd=pgd, smap=False)  # SMAP off: a USR page reads too
    assert isinstance(walk.result, Translation) == line.present, (line.describe(), walk.result)
    assert f"{pgd} PGD" in walk.space


def test_the_default_pgd_is_the_one_loaded_at_that_cpl() -> None:
    kernel, task = BOOTS["linux"]
    va = task.mm.vmas[0].start
    assert "user PGD" in process_walk(kernel, task, va, Op.READ, user=True).space
    assert "kernel PGD" in process_walk(kernel, task, va, Op.READ, user=False).space
    nopti, ntask = BOOTS["nopti"]
    assert "kernel PGD" in process_walk(nopti, ntask, va, Op.READ, user=True).space  # one PGD without PTI


def test_smap_decides_a_kernel_write_to_user_data_on_the_sample() -> None:
    blocked = sample_walk(0x600000, Op.WRITE, smap=True).result
    allowed = sample_walk(0x600000, Op.WRITE, smap=True, ac=True).result
    assert not isinstance(blocked, Translation) and isinstance(allowed, Translation)
