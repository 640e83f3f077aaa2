"""A recorded kernel side priced as its instructions (kaiser.cost.model, `--kernel-side recorded`):
the spans of recorded transitions hold exactly their kernel events, replaying in batches at the
span bounds changes no counter, both replay paths price alike, and the instruction counts are
the recordings' own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.cost.model import price
from kaiser.cost.params import SKYLAKE, for_caches
from kaiser.cost.run import Path, make_replayer, make_stepper, replay_split, run
from kaiser.cost.workloads import get_workload
from kaiser.linux.entry import EntryModel
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.record.format import FETCH, Transition, read_recording
from kaiser.record.replay import RecordedSide, recording_path
from kaiser.x86.cache_geometry import get_hierarchy
from kaiser.x86.cpu import CpuFeatures
from kaiser.x86.events import Ev
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY


def _compile(variant: str, pcid: bool, workload: str, n: int = 6) -> tuple[Kernel, EntryModel]:
    kernel = Kernel.boot(KernelConfig(variant, pcid=pcid, ncpus=1, seed=5))
    em = EntryModel(kernel)
    em.kernel_side = RecordedSide(em)
    em.track_spans = True
    wl = get_workload(workload)
    knobs = wl.resolve({"reads": "8"})
    state = wl.setup(em, knobs)  # its events too: they return to user mode on the user CR3
    wl.iterate(em, state, knobs, n)
    return kernel, em


@pytest.mark.parametrize("workload", ["syscall-loop", "interrupts", "page-faults", "pipe"])
@pytest.mark.parametrize("variant", ["nopti", "linux-4.15", "kaiser-rfc", "fixed-trampoline"])
def test_spans_hold_the_recorded_transitions_kernel_events(variant: str, workload: str) -> None:
    _, em = _compile(variant, False, workload)
    ev = em.out.array()
    inside = np.zeros(len(ev), dtype=bool)
    last = 0
    for start, end in em.recorded_spans:
        assert last <= start < end <= len(ev)  # sorted, disjoint
        inside[start:end] = True
        last = end
    access = ev["kind"] <= Ev.FETCH
    assert not np.any(inside & access & (ev["cpl"] != 0))  # no user reference is priced as kernel
    assert int(np.count_nonzero(inside & access)) == em.ops.recorded_refs
    recorded = em.ops.recorded_syscalls + em.ops.recorded_interrupts + em.ops.recorded_exceptions
    assert recorded == sum(n for name, n in em.recorded_calls.items() if name != "context_switch") > 0
    assert em.ops.recorded_switches == em.recorded_calls.get("context_switch", 0)
    # every recorded transition from user mode has its CR3 switches (if any) inside a span; the
    # switch_mm write between a recorded switch's two parts is the model's, outside them
    cr3 = ev["kind"] == Ev.MOV_CR3
    assert np.count_nonzero(cr3 & inside) == (2 * recorded if em.isolating else 0)
    if workload == "pipe":
        assert em.ops.recorded_switches == em.ops.context_switches > 0


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["nopti", "linux", "linux-4.15"]), st.booleans(), st.booleans(), st.booleans())
def test_replay_in_batches_at_the_spans_changes_no_counter(
    variant: str, pcid: bool, caches: bool, engine: bool
) -> None:
    kernel, em = _compile(variant, pcid, "syscall-loop", 4)
    ev = em.out.array()
    feats = CpuFeatures(maxphyaddr=kernel.mem.maxphyaddr)
    hier = get_hierarchy("skylake-client") if caches else None
    path: Path = "engine" if engine else "reference"
    whole = make_replayer(kernel.mem, em.initial_state(), feats, DEFAULT_GEOMETRY, path, hier)(ev)
    kernel2, em2 = _compile(variant, pcid, "syscall-loop", 4)  # the same world again, fresh memory
    step = make_stepper(kernel2.mem, em2.initial_state(), feats, DEFAULT_GEOMETRY, path, hier)
    total, inside = replay_split(step, em2.out.array(), em2.recorded_spans)
    assert total == whole
    assert 0 <= inside.walks <= total.walks and 0 <= inside.l1d_hits <= total.l1d_hits


@pytest.mark.parametrize("variant", ["nopti", "linux"])
def test_the_instructions_are_the_recordings(variant: str) -> None:
    """A call's instruction count is one of the recorded calls' own (fetches counted straight from
    the file: the pti=on recording for an isolating variant, the nopti one without isolation)."""
    _, em = _compile(variant, True, "syscall-loop", 3)
    per_call = em.ops.recorded_instructions / em.ops.recorded_syscalls
    path = recording_path("6.1", "getppid", pti=em.isolating)
    assert path is not None
    _, records = read_recording(path)
    counts = {
        int(np.count_nonzero(r.refs["op"] == FETCH))
        for r in records
        if isinstance(r, Transition) and r.kind == "syscall" and r.name == "getppid" and not r.switched
    }
    assert per_call in counts


@pytest.mark.parametrize("caches", [None, "skylake-client"])
def test_engine_and_reference_price_a_recorded_run_alike(caches: str | None) -> None:
    hier = get_hierarchy(caches) if caches else None
    params = for_caches(SKYLAKE, caches) if caches else SKYLAKE
    got = [
        run("linux", "syscall-loop", pcid=False, iterations=6, warmup=2, path=p, caches=hier, params=params)
        for p in ("engine", "reference")
    ]
    assert got[0].counters == got[1].counters and got[0].recorded_counters == got[1].recorded_counters
    assert got[0].user_counters == got[1].user_counters
    assert got[0].cycles.as_dict() == pytest.approx(got[1].cycles.as_dict())
    r = got[0]
    # the recorded kernel's instructions are priced at kernel_cpi, its L1 hits at nothing more
    assert r.cycles.terms["recorded_kernel"] == pytest.approx(r.ops.recorded_instructions * params.kernel_cpi)
    assert r.user_counters is not None  # syscall-loop's 64 user loads: priced overlapped (model.user_overlap)
    user_loads = r.user_counters.dtlb_hits + r.user_counters.dtlb_misses
    assert user_loads == r.iterations * 64
    if hier is None:
        serial = (r.ops.user_refs + r.ops.kernel_refs - r.ops.recorded_refs) * 4
        assert r.cycles.terms["memory_refs"] == pytest.approx(serial - user_loads * (4 - 1 / params.load_ports))
    else:  # only the recorded references that hit L1 are hidden; those that missed are priced
        assert r.recorded_counters is not None
        as_if_all_hit = price(r.counters, r.ops, params, caches=True, recorded=None, user=r.user_counters)
        hidden = r.recorded_counters.l1i_hits + r.recorded_counters.l1d_hits - r.recorded_counters.walk_loads_l1
        assert 0 <= hidden <= r.ops.recorded_refs
        assert r.cycles.terms["memory_refs"] - as_if_all_hit.terms["memory_refs"] == pytest.approx(
            (r.ops.recorded_refs - hidden) * params.l1_hit
        )


@pytest.mark.parametrize("pcid", [True, False], ids=["pcid", "nopcid"])
@pytest.mark.parametrize("variant", ["nopti", "kaiser-rfc", "two-pgd", "linux-4.15", "linux", "fixed-trampoline"])
def test_a_recorded_context_switch_replays_on_every_variant(variant: str, pcid: bool) -> None:
    """The pipe recording's switching read, cut at switch_mm: both paths agree, nothing faults,
    and the CR3 writes (values, order) are those of the modelled switch."""
    counts = []
    for path in ("engine", "reference"):  # each on a fresh world: a replay sets A/D bits in memory
        kernel, em = _compile(variant, pcid, "pipe", 3)
        assert em.recorded_calls["context_switch"] == em.ops.context_switches == 6
        feats = CpuFeatures(maxphyaddr=kernel.mem.maxphyaddr)
        ev = em.out.array()
        counts.append(make_replayer(kernel.mem, em.initial_state(), feats, DEFAULT_GEOMETRY, path)(ev))
    assert counts[0] == counts[1] and counts[0].faults == 0
    modelled_kernel = Kernel.boot(KernelConfig(variant, pcid=pcid, ncpus=1, seed=5))
    mem = EntryModel(modelled_kernel)
    wl = get_workload("pipe")
    knobs = wl.resolve({"reads": "8"})
    state = wl.setup(mem, knobs)
    wl.iterate(mem, state, knobs, 3)
    theirs = mem.out.array()
    assert ev["a"][ev["kind"] == Ev.MOV_CR3].tolist() == theirs["a"][theirs["kind"] == Ev.MOV_CR3].tolist()
