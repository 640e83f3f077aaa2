"""The asi variant (kaiser.linux.asi): what its tables hold, how its CPU switches, what it costs.

Properties over random process and allocation histories: no sensitive frame is ever reachable
through the kernel half of an ASI PGD while every nonsensitive allocation is; each ASI PGD's user
half is its mm's, entry for entry; freeing everything returns the frame count to the boot's.
Then the transitions (asi_enter/asi_exit CR3 values, replayed by both paths), the walker under
the two CR3s, the audit (which must catch a sensitive mapping planted on purpose), Meltdown by
secret sensitivity, and the pricing of the ASI fault and flush.
"""

from __future__ import annotations

import bisect
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kaiser.attacks.core import run_meltdown
from kaiser.cli.app import app
from kaiser.cost.model import price
from kaiser.cost.params import SKYLAKE
from kaiser.cost.run import make_replayer
from kaiser.linux.asi import (
    ASI_PCID_SHIFT,
    ASI_USER_PGTABLE_BIT,
    PAGEBLOCK_FRAMES,
    PAGEBLOCK_SIZE,
    asi_map,
)
from kaiser.linux.audit import audit_model
from kaiser.linux.entry import EntryModel
from kaiser.linux.kernel import Kernel, KernelConfig, Task
from kaiser.linux.mm import MmError
from kaiser.x86.bits import CR3_NOFLUSH, PTE
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.events import Ev
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PAGE_SIZE, FrameKind
from kaiser.x86.rights import Op
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY
from kaiser.x86.walker import Fault, translate

runner = CliRunner()


def boot(**kw: object) -> Kernel:
    return Kernel.boot(KernelConfig("asi", **kw))


def asi_pt(task: Task) -> PageTable:
    """The task's ASI PGD (the pair's second page)."""
    pt = task.mm.pgd.user_pt
    assert pt is not None
    return pt


def kernel_half_frames(kernel: Kernel, task: Task) -> list[tuple[int, int]]:
    """Sorted [first, end) physical ranges every kernel-half leaf of the task's ASI PGD maps."""
    pt = asi_pt(task)
    out = {(leaf.pa, leaf.pa + leaf.size) for leaf in pt.leaves(kernel.layout.kernel_start, once=True)}
    return sorted(out)


def reachable(ranges: list[tuple[int, int]], pa: int) -> bool:
    i = bisect.bisect_right(ranges, (pa, 1 << 64)) - 1
    return i >= 0 and ranges[i][0] <= pa < ranges[i][1]


def sensitive_frames(kernel: Kernel, sensitive_allocs: dict[int, int]) -> set[int]:
    """Every user frame, every page-table frame and every __GFP_SENSITIVE kernel allocation."""
    out = set(kernel._frame_refs)  # user pages (GFP_USER)
    out |= {pa for pa in kernel.mem.touched_frames() if kernel.mem.kind_of(pa) is FrameKind.PAGE_TABLE}
    for pa, count in sensitive_allocs.items():
        out |= {pa + i * PAGE_SIZE for i in range(count)}
    return out


def check(kernel: Kernel, sensitive_allocs: dict[int, int], nonsensitive_allocs: dict[int, int]) -> None:
    asi = kernel.asi
    assert asi is not None
    secret = sensitive_frames(kernel, sensitive_allocs)
    lay = kernel.layout
    ldt_slot = asi.pgd.levels[0].index(lay.ldt_base)
    for task in kernel.tasks.values():
        pt, full = asi_pt(task), task.mm.pgd.kernel_pt
        ranges = kernel_half_frames(kernel, task)
        leaked = sorted(pa for pa in secret if reachable(ranges, pa))
        assert not leaked, f"pid {task.pid}: sensitive frames reachable through its ASI PGD: {leaked[:4]}"
        for pa, count in nonsensitive_allocs.items():
            for i in range(count):  # ... while what is nonsensitive is mapped, at its direct-map address
                leaf = pt.lookup(lay.page_offset_base + pa + i * PAGE_SIZE)
                assert (
                    leaf is not None
                    and leaf.pa + (lay.page_offset_base + pa + i * PAGE_SIZE - leaf.va) == pa + i * PAGE_SIZE
                )
        mem = kernel.mem
        for index in range(256):  # the user half mirrors the mm's, entry for entry
            assert mem.read_u64(pt.root + 8 * index) == mem.read_u64(full.root + 8 * index), (task.pid, index)
        for index in range(256, 512):  # the kernel half is the nonsensitive PGD's (the LDT slot per mm)
            if index != ldt_slot:
                assert mem.read_u64(pt.root + 8 * index) == mem.read_u64(asi.pgd.root + 8 * index), index


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("spawn"), st.integers(0, 0)),
        st.tuples(st.just("fork"), st.integers(0, 50)),
        st.tuples(st.just("exit"), st.integers(0, 50)),
        st.tuples(st.just("mmap"), st.integers(1, 64)),
        st.tuples(st.just("munmap"), st.integers(0, 50)),
        st.tuples(st.just("ldt"), st.integers(1, 600)),
        st.tuples(st.just("kalloc"), st.integers(1, 40)),
        st.tuples(st.just("kalloc-sensitive"), st.integers(1, 40)),
        st.tuples(st.just("kfree"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, la57=st.booleans(), seed=st.integers(0, 3))
def test_no_sensitive_frame_reachable_user_half_mirrored_and_frames_return(
    ops: list[tuple[str, int]], la57: bool, seed: int
) -> None:
    kernel = boot(la57=la57, seed=seed)
    base_pt, base_total = kernel.mem.stats().page_table, kernel.mem.stats().total
    sensitive: dict[int, int] = {}
    nonsensitive: dict[int, int] = {}
    tasks = [kernel.spawn()]
    maps: list[tuple[Task, int, int]] = []
    for op, n in ops:
        live = [t for t in tasks if t.pid in kernel.tasks]
        if op == "spawn":
            tasks.append(kernel.spawn())
        elif op == "fork" and live:
            tasks.append(kernel.fork(live[n % len(live)]))
        elif op == "exit" and live:
            kernel.exit(live[n % len(live)])
        elif op == "mmap" and live:
            task = live[n % len(live)]
            maps.append((task, task.mm.mmap(n * PAGE_SIZE), n * PAGE_SIZE))
        elif op == "munmap" and maps:
            task, va, size = maps.pop(n % len(maps))
            if task.pid in kernel.tasks:
                task.mm.munmap(va, size)
        elif op == "ldt" and live:
            kernel.map_ldt(live[n % len(live)].mm, n)
        elif op in ("kalloc", "kalloc-sensitive"):
            is_sensitive = op == "kalloc-sensitive"
            pa = kernel.alloc_kernel_pages(n, "test", sensitive=is_sensitive)
            (sensitive if is_sensitive else nonsensitive)[pa] = n
        elif op == "kfree" and (sensitive or nonsensitive):
            pool = sensitive if n % 2 and sensitive else nonsensitive or sensitive
            pa = sorted(pool)[n % len(pool)]
            kernel.free_kernel_pages(pa, pool.pop(pa))
        check(kernel, sensitive, nonsensitive)
    for task in [t for t in tasks if t.pid in kernel.tasks]:
        kernel.exit(task)
    for pool in (sensitive, nonsensitive):
        for pa, count in pool.items():
            kernel.free_kernel_pages(pa, count)
    assert kernel.asi is not None and not kernel.asi.pageblocks  # every nonsensitive pageblock given back
    stats = kernel.mem.stats()
    assert (stats.page_table, stats.total) == (base_pt, base_total)


def test_nonsensitive_allocations_share_pageblocks_and_sensitive_ones_never_do() -> None:
    kernel = boot(seed=1)
    asi = kernel.asi
    assert asi is not None
    a = kernel.alloc_kernel_pages(3, "a")
    b = kernel.alloc_kernel_pages(PAGEBLOCK_FRAMES - 3, "b")  # fills a's pageblock exactly
    c = kernel.alloc_kernel_pages(1, "c")  # needs a second pageblock
    s = kernel.alloc_kernel_pages(1, "s", sensitive=True)
    assert a % PAGEBLOCK_SIZE == 0 and b == a + 3 * PAGE_SIZE
    assert c // PAGEBLOCK_SIZE != a // PAGEBLOCK_SIZE and sorted(asi.pageblocks) == sorted({a, c - c % PAGEBLOCK_SIZE})
    assert not asi.is_nonsensitive(s)
    leaf = asi.pgd.lookup(kernel.layout.page_offset_base + a)
    assert leaf is not None and leaf.size == PAGEBLOCK_SIZE  # one 2 MiB leaf per pageblock
    assert leaf.entry & ~0x000F_FFFF_FFE0_0000 == _kernel_leaf_flags(kernel, a)
    kernel.free_kernel_pages(c, 1)
    assert asi.pgd.lookup(kernel.layout.page_offset_base + c) is None  # given back: unmapped
    with pytest.raises(ValueError, match="not allocated"):
        kernel.free_kernel_pages(b, 1)
        kernel.free_kernel_pages(b, 1)


def _kernel_leaf_flags(kernel: Kernel, pa: int) -> int:
    """The kernel's direct-map rights at `pa`, as a 2 MiB leaf carries them (PS, PAT at bit 12)."""
    leaf = kernel.init.kernel_pt.lookup(kernel.layout.page_offset_base + pa)
    assert leaf is not None and leaf.size >= PAGEBLOCK_SIZE
    return leaf.entry & ~0x000F_FFFF_FFFF_F000 | int(PTE.PS)


@pytest.mark.parametrize("la57", [False, True])
def test_walker_under_the_asi_cr3_faults_on_sensitive_and_reads_nonsensitive(la57: bool) -> None:
    kernel = boot(la57=la57, seed=2)
    task = kernel.spawn()
    lay = kernel.layout
    ns = lay.page_offset_base + kernel.alloc_kernel_pages(1, "ns")
    sens = lay.page_offset_base + kernel.alloc_kernel_pages(1, "s", sensitive=True)
    user_frame = lay.page_offset_base + next(iter(kernel._frame_refs))
    kcr3, acr3 = kernel.cr3_pair(task)
    assert acr3 is not None and acr3 == kcr3 | 1 << ASI_USER_PGTABLE_BIT | 1 << ASI_PCID_SHIFT
    for cr3, mapped in ((kcr3, {ns, sens, user_frame}), (acr3, {ns})):
        state = CpuState(cr3=cr3, cr4=kernel.cr4(), cpl=0)
        for va in (ns, sens, user_frame, lay.kernel_base, lay.section("data").start):
            walk = translate(kernel.mem, state, va, Op.READ, set_ad=False)
            expect = va in mapped or va in (lay.kernel_base, lay.section("data").start)
            assert isinstance(walk, Fault) != expect, (hex(cr3), hex(va), walk)


def test_asi_cr3_without_pcid_has_no_pcid_bits() -> None:
    kernel = boot(pcid=False)
    kcr3, acr3 = kernel.cr3_pair(kernel.spawn())
    assert acr3 == kcr3 | 1 << ASI_USER_PGTABLE_BIT and kcr3 & 0xFFF == 0


def _em(pcid: bool) -> EntryModel:
    kernel = boot(pcid=pcid, ncpus=1, seed=4)
    task = kernel.spawn()
    em = EntryModel(kernel)
    em.start(task)
    em.return_to_user()
    return em


def _cr3s(em: EntryModel, since: int = 0) -> list[int]:
    ev = em.out.array()[since:]
    return [int(v) for v in ev["a"][ev["kind"] == Ev.MOV_CR3]]


@pytest.mark.parametrize("pcid", [True, False])
def test_transitions_switch_only_on_asi_faults(pcid: bool) -> None:
    em = _em(pcid)
    full = em.kernel.cr3_pair(em._task())[0]
    first = _cr3s(em)
    assert len(first) == 1 and first[0] & ~CR3_NOFLUSH == em.kernel.cr3_pair(em._task())[1]
    assert not first[0] & CR3_NOFLUSH  # the first asi_enter fills a fresh ASI PCID
    n = len(em.out)
    for _ in range(3):  # getppid touches only nonsensitive memory: no CR3 write at all
        em.syscall("getppid")
    assert _cr3s(em, n) == [] and em.ops.asi_faults == 0
    n = len(em.out)
    em.syscall("pipe_write", user_buf=[0x400000], kernel_buf=[em.pipe_buffer()])  # the buffer is sensitive
    exit_, enter = _cr3s(em, n)
    assert em.ops.asi_faults == 1 and em.ops.asi_enters == 2
    noflush = CR3_NOFLUSH if pcid else 0
    assert exit_ == full | noflush  # asi_exit: the full tables, the kernel PCID kept
    assert enter == em.kernel.cr3_pair(em._task())[1] | noflush  # the ASI PCID still fresh


@pytest.mark.parametrize("pcid", [True, False])
def test_asi_stream_replays_alike_on_both_paths_with_exactly_its_asi_faults(pcid: bool) -> None:
    em = _em(pcid)
    other = em.kernel.spawn()
    first = em._task()
    for name in ("getppid", "close", "lseek"):
        em.user(reads=[0x400000], fetch=0x400000)
        em.syscall(name)
    buf = first.mm.mmap(PAGE_SIZE)  # pipe_read copies to user: a writable page
    em.syscall("pipe_read", user_buf=[buf], kernel_buf=[em.pipe_buffer()])
    em.interrupt()
    em.syscall_entry()
    em.context_switch(other)
    em.syscall_exit()
    em.syscall_entry()
    em.context_switch(first)
    em.syscall_exit()
    events = em.out.array()
    feats = CpuFeatures(maxphyaddr=em.kernel.mem.maxphyaddr)
    counts = [
        make_replayer(em.kernel.mem, em.initial_state(), feats, DEFAULT_GEOMETRY, path)(events)
        for path in ("engine", "reference")
    ]
    assert counts[0] == counts[1]
    assert counts[0].faults == em.ops.asi_faults >= 1
    assert counts[0].cr3_writes == int((events["kind"] == Ev.MOV_CR3).sum())
    # pricing: the ASI fault and the asi_enter flush are their own parameters, charged per event
    cycles = price(counts[0], em.ops).total
    cheaper = SKYLAKE.with_overrides(asi_fault=0.0, asi_enter_flush=0.0)
    saved = em.ops.asi_faults * SKYLAKE.asi_fault + em.ops.asi_enters * SKYLAKE.asi_enter_flush
    assert cycles - price(counts[0], em.ops, cheaper).total == pytest.approx(saved)


def test_audit_passes_and_catches_a_sensitive_mapping_planted_on_purpose() -> None:
    kernel = boot(seed=5)
    kernel.alloc_kernel_pages(1, "ns")
    task = kernel.spawn()
    report = audit_model(kernel, task, mode="strict")
    assert report.exit_status == 0, [f.message for f in report.violations]
    assert any(m.klass == "asi_nonsensitive" for m in report.mappings)
    assert kernel.asi is not None
    pa = kernel.alloc_kernel_pages(1, "secret", sensitive=True)  # a broken ASI maps it anyway
    va = kernel.layout.page_offset_base + pa
    asi_map(kernel.init.kernel_pt, kernel.asi.pgd, va, va + PAGE_SIZE)
    broken = audit_model(kernel, task, mode="strict")
    assert any(f.start <= va < f.end and f.kind == "not-allowed" for f in broken.violations)


def test_cli_audit_of_asi_passes() -> None:
    result = runner.invoke(app, ["audit", "--variant", "asi", "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("pcid", [True, False])
def test_meltdown_reads_no_sensitive_byte_and_every_nonsensitive_one(pcid: bool) -> None:
    for region in ("sensitive", "direct-map"):
        r = run_meltdown("asi", region=region, length=8, seed=6, pcid=pcid)
        assert r.correct == 0 and r.protected, (region, r.reach.describe())
    for region, part in (
        ("nonsensitive", "asi_nonsensitive"),
        ("kernel-data", "asi_image"),
        ("vmalloc", "asi_vmalloc"),
    ):
        r = run_meltdown("asi", region=region, length=8, seed=6, pcid=pcid)
        assert r.correct == 8 and not r.protected and r.reach.part == part, (region, r.reach.describe())
    # the same sensitive secret leaks without isolation: the attack can find it
    assert run_meltdown("nopti", region="sensitive", length=8, seed=6, pcid=pcid).correct == 8


def test_cli_meltdown_asi_exit_status_counts_only_sensitive_secrets() -> None:
    for region in ("sensitive", "nonsensitive"):
        result = runner.invoke(
            app, ["attack", "meltdown", "--variant", "asi", "--secret-in", region, "-n", "4", "--json"]
        )
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["protected"] == (region == "sensitive")
        assert (data["correct"] > 0) == (region == "nonsensitive")


def test_freeing_a_process_keeps_its_mmap_frames_out_of_reach() -> None:
    kernel = boot(seed=7)
    victim, other = kernel.spawn(), kernel.spawn()
    va = victim.mm.mmap(4 * PAGE_SIZE)
    frames = set(kernel._frame_refs)
    ranges = kernel_half_frames(kernel, other)
    assert not any(reachable(ranges, pa) for pa in frames)
    kernel.exit(victim)
    with pytest.raises(MmError):
        victim.mm.munmap(va, PAGE_SIZE)


STEPS = st.lists(
    st.sampled_from(["getppid", "close", "lseek", "pipe_write", "pipe_read", "irq", "switch"]), max_size=12
)


def _compile_steps(steps: list[str], pcid: bool) -> EntryModel:
    em = _em(pcid)
    tasks = [em._task(), em.kernel.spawn()]
    bufs = {t.pid: t.mm.mmap(PAGE_SIZE) for t in tasks}
    for step in steps:
        task = em._task()
        if step == "irq":
            em.interrupt()
        elif step == "switch":
            em.syscall_entry()
            em.context_switch(tasks[1] if task is tasks[0] else tasks[0])
            em.syscall_exit()
        elif step.startswith("pipe"):
            em.syscall(step, user_buf=[bufs[task.pid]], kernel_buf=[em.pipe_buffer()])
        else:
            em.syscall(step)
    return em


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, pcid=st.booleans())
def test_random_transitions_fault_exactly_where_the_asi_tables_lack_the_address(steps: list[str], pcid: bool) -> None:
    """Every fault of the replay is an ASI fault the compiler took (an access under an ASI CR3 to
    an address that CR3's tables do not map), and each is followed by the full CR3; both paths
    agree (each on its own compile of the same steps: a replay sets A/D bits in the tables)."""
    counts = []
    for path in ("engine", "reference"):
        em = _compile_steps(steps, pcid)
        feats = CpuFeatures(maxphyaddr=em.kernel.mem.maxphyaddr)
        events = em.out.array()
        counts.append(make_replayer(em.kernel.mem, em.initial_state(), feats, DEFAULT_GEOMETRY, path)(events))
    assert counts[0] == counts[1]
    assert counts[0].faults == em.ops.asi_faults == steps.count("pipe_write") + steps.count("pipe_read")
    state = em.initial_state()
    cr3, rows = state.cr3, events.tolist()
    for i, (kind, cpl, _, va, _) in enumerate(rows):
        if kind == Ev.MOV_CR3:
            cr3 = va & ~CR3_NOFLUSH
        elif kind <= Ev.FETCH and cpl == 0 and cr3 & 1 << ASI_USER_PGTABLE_BIT:
            walk = translate(em.kernel.mem, CpuState(cr3=cr3, cr4=state.cr4, rflags=state.rflags, cpl=0), va, Op.READ)
            if isinstance(walk, Fault):  # an ASI fault: the very next event loads the full tables
                assert rows[i + 1][0] == Ev.MOV_CR3 and not rows[i + 1][3] & 1 << ASI_USER_PGTABLE_BIT
