"""The API's debugfs views (kaiser.api.tables over kaiser.linux.debugfs): one meaning of each file,
checked against Linux's rule (dump_pagetables.c: the user PGD only with X86_FEATURE_PTI) on the
model and against the real machines' dumps of tests/linux/data/real/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.api.process import boot_process
from kaiser.api.tables import dump_text, dump_tree
from kaiser.linux.compare import boot_model, model_text, switches_for, table_of
from kaiser.linux.debugfs import TABLES, live_pgd, spawn_reader, table_tree
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.ptdump_parse import parse_ptdump, parse_ptdump_file, range_lines, render_records
from kaiser.linux.variants import VARIANTS

REAL = Path(__file__).parents[1] / "linux" / "data" / "real"
REAL_DIRS = sorted(p for p in REAL.iterdir() if (p / "meta.json").exists() and (p / "current_user.txt").exists())


def _kernel_half(text: str, kernel_start: int) -> str:
    return render_records([r for r in range_lines(parse_ptdump(text)) if r.start >= kernel_start])


@settings(max_examples=12)
@given(
    variant=st.sampled_from(sorted(VARIANTS)),
    pti=st.sampled_from(["on", "auto"]),
    vendor=st.sampled_from(["intel", "amd"]),
    pcid=st.booleans(),
)
def test_current_user_is_the_user_pgd_only_with_pti(variant: str, pti: str, vendor: str, pcid: bool) -> None:
    kernel, task = boot_process(variant, pcid=pcid, kaslr=False, pti=pti, vendor=vendor, ncpus=1)
    pair = task.mm.pgd
    isolating = pair.user_pt is not None
    assert isolating == kernel.config.isolates  # PTI at run time: the variant, pti=on or a Meltdown CPU
    user = dump_tree(kernel, task, "current_user")
    assert user is (pair.user_pt if isolating else pair.kernel_pt)
    assert dump_tree(kernel, task, "current_kernel") is pair.kernel_pt
    assert dump_tree(kernel, task, "kernel") is kernel.init.kernel_pt
    assert live_pgd(kernel, task, "current_user") == ("user" if isolating else "kernel")
    same = dump_text(kernel, task, "current_user") == dump_text(kernel, task, "current_kernel")
    assert same == (not isolating)  # with PTI the user tables lack most of the kernel
    wide = dump_text(kernel, task, "current_user", wide=True).splitlines()[0]
    assert wide.count("(live)") == 1 and ("user=" in wide) == isolating


def test_unknown_table_and_dialect_are_value_errors() -> None:
    kernel, task = boot_process("linux", ncpus=1)
    with pytest.raises(ValueError, match="unknown table"):
        table_tree(kernel, task, "current")
    with pytest.raises(ValueError, match="unknown dialect"):
        dump_text(kernel, task, "kernel", dialect="new")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generic"):
        dump_text(kernel, task, "kernel", wide=True, dialect="legacy")


@pytest.mark.parametrize("real", REAL_DIRS, ids=lambda p: p.name)
def test_real_current_user_follows_the_same_rule(real: Path) -> None:
    """On each real machine, current_user's kernel half is current_kernel's exactly when the kernel
    ran without PTI; the model booted as compare boots it for that dump agrees."""
    meta = json.loads((real / "meta.json").read_text())
    pti = meta["guest_cpu"]["flags_of_interest"]["pti"]
    user, kern = (real / "current_user.txt").read_text(), (real / "current_kernel.txt").read_text()
    top = 1 << 63  # both halves of every dump here: the kernel half starts above bit 63
    assert (_kernel_half(user, top) == _kernel_half(kern, top)) == (not pti), real.name
    path = real / "current_user.txt"
    sw = switches_for(path, parse_ptdump_file(path), "linux")
    kernel, task = boot_model(sw, ldt=table_of(path)[1])
    assert (task.mm.pgd.user_pt is not None) == pti, real.name
    start = kernel.layout.kernel_start
    model_user = model_text(kernel, task, "current_user")
    assert (_kernel_half(model_user, start) == _kernel_half(model_text(kernel, task, "current_kernel"), start)) == (
        not pti
    )


def test_the_reader_maps_what_it_says() -> None:
    kernel = Kernel.boot(KernelConfig(variant="linux", ncpus=1))
    bare = kernel.spawn()
    reader = spawn_reader(kernel, ldt=True)
    names = {v.name for v in reader.mm.vmas} - {v.name for v in bare.mm.vmas}
    assert {"anon", "ro data"} <= names
    assert reader.mm.brk_end - reader.mm.brk_start > bare.mm.brk_end - bare.mm.brk_start
    assert reader.mm.ldt_entries > 0 and bare.mm.ldt_entries == 0
    for table in TABLES:  # the process shows in its own tables, not in init_mm's
        text = dump_text(kernel, reader, table)
        assert ("USR RW" in text) == (table != "kernel"), table
