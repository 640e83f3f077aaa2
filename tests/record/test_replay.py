"""A recorded kernel side through every variant (record/replay.py): the stream runs identically
on the engine and the reference MMU, the CR3 writes are the variant's own, and the body touches
exactly as many distinct pages as the real kernel did."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.cost.run import make_replayer
from kaiser.cost.workloads import get_workload
from kaiser.linux.entry import EntryModel
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.syscalls import SYSCALLS
from kaiser.linux.variants import VARIANTS
from kaiser.record.format import FETCH, REGIONS, Transition, read_recording
from kaiser.record.replay import RecordedSide, _Fold, body_of, recording_path
from kaiser.x86.cpu import CpuFeatures
from kaiser.x86.events import Ev
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY

PAGE = np.uint64(12)


def _compile(variant: str, pcid: bool, side: str, syscall: str = "close") -> tuple[Kernel, EntryModel]:
    kernel = Kernel.boot(KernelConfig(variant, pcid=pcid, ncpus=1, seed=3))
    em = EntryModel(kernel)
    if side == "recorded":
        em.kernel_side = RecordedSide(em)
    wl = get_workload("syscall-loop")
    knobs = wl.resolve({"syscall": syscall, "reads": "4"})
    state = wl.setup(em, knobs)
    wl.iterate(em, state, knobs, 4)
    return kernel, em


@pytest.mark.parametrize("pcid", [True, False], ids=["pcid", "nopcid"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_replays_a_recorded_kernel_side(variant: str, pcid: bool) -> None:
    kernel, em = _compile(variant, pcid, "recorded")
    assert em.recorded_calls == {"close": 4}
    events = em.out.array()
    feats = CpuFeatures(maxphyaddr=kernel.mem.maxphyaddr)
    counts = [
        make_replayer(kernel.mem, em.initial_state(), feats, DEFAULT_GEOMETRY, path)(events)
        for path in ("engine", "reference")
    ]
    assert counts[0] == counts[1]
    assert counts[0].faults == 0  # every recorded reference landed on a page the model maps
    # the CR3 writes (values and order) are the variant's own: those of the modelled kernel side
    _, modelled = _compile(variant, pcid, "modelled")
    mine, theirs = (e.out.array() for e in (em, modelled))
    cr3 = [ev["a"][ev["kind"] == Ev.MOV_CR3].tolist() for ev in (mine, theirs)]
    assert cr3[0] == cr3[1]
    # PTI: setup's return to user, then 2 a call; asi: its first asi_enter only (close touches
    # nothing sensitive, so no ASI fault)
    v = VARIANTS[variant]
    assert len(cr3[0]) == (1 if v.asi else 9 if v.isolating else 0)
    assert len(mine) > len(theirs)  # the real body is longer than the invented one


def _one_body(variant: str, pcid: bool, name: str) -> tuple[np.ndarray, RecordedSide]:
    """The events of one `name` body alone, between the variant's entry and exit."""
    kernel = Kernel.boot(KernelConfig(variant, pcid=pcid, ncpus=1))
    em = EntryModel(kernel)
    side = em.kernel_side = RecordedSide(em)
    wl = get_workload("syscall-loop")
    knobs = wl.resolve({"syscall": "getppid", "reads": "0"})
    wl.setup(em, knobs)
    em.syscall_entry()
    n0 = len(em.out)
    em.syscall_body(SYSCALLS[name])
    body = em.out.array()[n0:]
    em.syscall_exit()
    return body, side


@pytest.mark.parametrize("name", ["getppid", "close", "lseek", "sched_yield"])
@pytest.mark.parametrize("variant", ["linux", "kaiser-rfc", "nopti"])
def test_the_body_touches_the_recordings_distinct_pages(variant: str, name: str) -> None:
    body, side = _one_body(variant, False, name)
    rec = side.body(name)
    assert rec is not None
    assert not np.any(body["kind"] == Ev.MOV_CR3)  # the recorded body writes no CR3: the variant does
    assert np.all(body["cpl"] == 0)
    code = body["a"][body["kind"] == Ev.FETCH] >> PAGE
    data = body["a"][(body["kind"] == Ev.READ) | (body["kind"] == Ev.WRITE)] >> PAGE
    assert (len(np.unique(code)), len(np.unique(data))) == rec.pages()
    # and those are the real call's own: its kernel-text code pages, its data pages outside the
    # entry path's (those the model's entry and exit emit)
    _, records = read_recording(str(recording_path("6.1", name)))
    calls = [r for r in records if isinstance(r, Transition) and r.name == name and not r.switched]
    real_code = {
        len(
            np.unique(
                t.refs["vaddr"][(t.refs["op"] == FETCH) & (t.refs["region"] == REGIONS.index("kernel_text"))] >> PAGE
            )
        )
        for t in calls
    }
    assert rec.pages()[0] in real_code


@pytest.mark.parametrize("name", ["getppid", "read", "write", "sched_yield"])
def test_body_is_every_kernel_text_instruction(name: str) -> None:
    """On every call of the recording: the body keeps exactly the instructions fetched from
    kernel text, and no CR3 write."""
    path = recording_path("6.1", name)
    assert path is not None
    _, records = read_recording(str(path))
    for t in (r for r in records if isinstance(r, Transition) and r.name == name):
        kept = t.refs[body_of(t)]
        fetched = t.refs[t.refs["op"] == FETCH]
        text = fetched[fetched["region"] == REGIONS.index("kernel_text")]
        assert np.array_equal(kept[kept["op"] == FETCH]["vaddr"], text["vaddr"])
        assert not np.any(kept["op"] == 3)


@settings(max_examples=50)
@given(st.integers(1, 64), st.lists(st.integers(0, 1 << 20), max_size=64, unique=True))
def test_fold_is_one_model_page_per_real_page(window: int, offsets: list[int]) -> None:
    fold = _Fold(1000, window)
    got: dict[int, int] = {}
    for off in offsets:
        if len(got) == window:
            with pytest.raises(ValueError):
                fold.page(off)
            return
        got[off] = fold.page(off)
        assert 1000 <= got[off] < 1000 + window
        assert fold.page(off) == got[off]  # the same every time
    assert len(set(got.values())) == len(got)


def test_bench_reports_recorded_kernel_pages() -> None:
    r = CliRunner().invoke(
        app,
        ["bench", "-w", "syscall-loop", "--set", "syscall=close", "--kernel-side", "recorded", "-v", "linux",
         "--no-pcid", "-n", "5", "--warmup", "2", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["kernel_side"] == {"close": "recorded"}
    side = RecordedSide(EntryModel(Kernel.boot(KernelConfig("linux", ncpus=1))))
    body = side.body("close")
    assert body is not None
    pages = doc["kernel_pages"]["close"]
    assert (pages["code_4k"], pages["data_4k"]) == body.pages()
    assert pages["recording"] == "6.1-pti-close.krec"
    run = doc["runs"][0]
    walks = run["counters"]["walks_i"] + run["counters"]["walks_d"]
    assert run["walks"]["total"] == walks > 0  # no PCID: the exit flushes the user side
    assert run["walks"]["per_syscall"] == walks / run["ops"]["syscalls"]
    rw = run["recorded_walks"]  # the walks of the recorded transitions alone: part of the run's
    assert rw["transitions"] == run["ops"]["recorded_syscalls"] == run["ops"]["syscalls"]
    assert 0 < rw["per_transition"] * rw["transitions"] <= walks
    args = ["bench", "-w", "syscall-loop", "--set", "syscall=close", "-v", "linux", "--no-pcid", "-n", "5", "--json"]
    default = json.loads(CliRunner().invoke(app, args).stdout)  # recorded is the default
    assert default["kernel_side"] == {"close": "recorded"}
    assert default["runs"][0]["cycles"]["total"] != 0
    modelled = CliRunner().invoke(app, [*args, "--kernel-side", "modelled"])
    mdoc = json.loads(modelled.stdout)
    assert mdoc["runs"][0]["recorded_walks"] is None
    assert mdoc["kernel_side"] == {"close": "modelled"}
    assert mdoc["kernel_pages"]["close"] == {**pages, "kernel_side": "modelled"}
    assert pages["kernel_side"] == "recorded"
    bad = CliRunner().invoke(app, ["bench", "--kernel-side", "invented"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("pcid", [True, False], ids=["pcid", "nopcid"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("workload", ["interrupts", "page-faults"])
def test_interrupts_and_page_faults_from_user_replay_recorded(workload: str, variant: str, pcid: bool) -> None:
    """The timer interrupt's and the page fault's recorded bodies, between the variant's own
    exception entry and exit: the same CR3 writes and faults as the modelled bodies, and the
    engine agrees with the reference MMU."""
    streams = {}
    for side in ("recorded", "modelled"):
        counts = []
        for path in ("engine", "reference"):  # a fresh boot each: the replay applies the PTE writes
            kernel = Kernel.boot(KernelConfig(variant, pcid=pcid, ncpus=1, seed=5))
            em = EntryModel(kernel)
            if side == "recorded":
                em.kernel_side = RecordedSide(em)
            wl = get_workload(workload)
            knobs = wl.resolve({"reads": "2", **({"kernel_every": "0"} if workload == "interrupts" else {})})
            state = wl.setup(em, knobs)
            wl.iterate(em, state, knobs, 3)
            events = em.out.array()
            feats = CpuFeatures(maxphyaddr=kernel.mem.maxphyaddr)
            counts.append(make_replayer(kernel.mem, em.initial_state(), feats, DEFAULT_GEOMETRY, path)(events))
        assert counts[0] == counts[1]
        streams[side] = (events, counts[0], dict(em.recorded_calls))
    (rec, rc, calls), (mod, mc, _) = streams["recorded"], streams["modelled"]
    assert calls == ({"interrupt": 3} if workload == "interrupts" else {"page_fault": 3})
    assert rec["a"][rec["kind"] == Ev.MOV_CR3].tolist() == mod["a"][mod["kind"] == Ev.MOV_CR3].tolist()
    assert rc.faults == mc.faults  # the page-fault workload's own faulting stores, nothing else
    assert len(rec) > len(mod)
