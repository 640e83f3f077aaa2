"""The KASLR attack on the compiled engine against the reference MMU (issue 15 item 1).

`ProbeCore(path="engine")` steps the engine (`Engine.rounds`: each system call, then each probe
alone) and prices each probe from the counters its translations added (`ProbeCosts.counted`);
`path="reference"` runs the same calls on the readable `Mmu` and prices each `Access`. For random
layouts, variants, probes and machines, both paths must give every probe the same latency and
the same measured cycles, the attacker the same guesses, and leave the same TLB and counters.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kaiser.attacks.cache import QUIET
from kaiser.attacks.kaslr import KaslrAttacker
from kaiser.attacks.timing import PATHS, ProbeConfig, ProbeCore, ProbeCosts, ProbeProcess, public_knowledge, run_kaslr
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.variants import VARIANTS
from kaiser.x86.counters import TlbCounters
from kaiser.x86.mmu import Mmu
from kaiser.x86.rights import Op

ALL_VARIANTS = sorted(VARIANTS)
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
Log = list[tuple[int, float, int]]


def attack_text(config: KernelConfig, probe: str, path: str) -> tuple[object, Log, ProbeCore, TlbCounters]:
    """The text scan; its guess, every probe, the core, and the counters the attack added."""
    kernel = Kernel.boot(config)
    core = ProbeCore(kernel, kernel.spawn(), ProbeConfig(probe), config.seed, path=path)
    core.log = []
    start = counters_of(core)  # the reference's Mmu counted the warm-up call too
    guess = KaslrAttacker(ProbeProcess(core), public_knowledge(config)).find_text()
    return guess.as_dict(), core.log, core, counters_of(core) - start


def counters_of(core: ProbeCore) -> TlbCounters:
    return (core.engine.counters if core.engine is not None else core.mmu.counters).copy()


def assert_same_tlb(a: ProbeCore, b: ProbeCore) -> None:
    ta, tb = a.tlb(), b.tlb()
    assert sorted(ta.entries(), key=repr) == sorted(tb.entries(), key=repr)
    assert sorted(ta.psc_entries()) == sorted(tb.psc_entries())
    assert ta.clock == tb.clock


# No shrinking: each example is two whole scans, and the failing probe is printed anyway.
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=NO_SHRINK)
@given(
    seed=st.integers(0, 999),
    variant=st.sampled_from(ALL_VARIANTS),
    probe=st.sampled_from(("prefetch", "load")),
    pcid=st.booleans(),
    lass=st.booleans(),
)
def test_text_scan_is_the_same_probe_for_probe_on_both_paths(
    seed: int, variant: str, probe: str, pcid: bool, lass: bool
) -> None:
    config = KernelConfig(variant=variant, seed=seed, kaslr=True, pcid=pcid, lass=lass)
    guess_e, log_e, core_e, counted_e = attack_text(config, probe, "engine")
    guess_r, log_r, core_r, counted_r = attack_text(config, probe, "reference")
    assert len(log_e) == len(log_r) > 512  # at least one probe per 2 MiB slot of the window
    for n, (e, r) in enumerate(zip(log_e, log_r, strict=True)):
        assert e == r, f"probe {n}: engine {e} reference {r}"
    assert guess_e == guess_r
    assert counted_e == counted_r
    assert_same_tlb(core_e, core_r)


def test_the_comparison_sees_every_kind_of_probe() -> None:
    """Not vacuous: on linux a text scan's probes hit the TLB, walk to a mapped page, and walk to
    non-present entries at several depths, so several distinct latencies occur on both paths."""
    config = KernelConfig(variant="linux", seed=4, kaslr=True)
    _, log, _, _ = attack_text(config, "prefetch", "engine")
    latencies = {latency for _, latency, _ in log}
    assert len(latencies) >= 3, latencies


def test_counted_prices_what_access_prices() -> None:
    """`ProbeCosts.counted` on one access's counters equals `ProbeCosts.access` on its `Access`,
    for non-default costs (so that no price can stand in for another), on the accesses of a
    kernel's probes: entry text, a mapped page, unmapped neighbours, user and non-canonical."""
    costs = ProbeCosts(l1_tlb_hit=1.5, stlb_hit=7.0, walk_load=11.0, no_lookup=3.0)
    kernel = Kernel.boot(KernelConfig(variant="linux", seed=5))
    core = ProbeCore(kernel, kernel.spawn(), ProbeConfig(noise=QUIET), 5, path="reference")
    core.syscall()
    mmu: Mmu = core.mmu
    other_tss = kernel.cpus[1].tss_va
    vas = [kernel.layout.entry_text[0], other_tss, other_tss + 0x1000, 0x400000, 1 << 47, other_tss]
    seen = set()
    for va in vas:
        for prefetch in (True, False):
            before = np.array(list(vars(mmu.counters).values()), np.int64)
            access = mmu.access(va, Op.READ, implicit=prefetch, prefetch=prefetch)
            delta = np.array(list(vars(mmu.counters).values()), np.int64) - before
            assert float(costs.counted(delta)) == costs.access(access), access.describe()
            seen.add(costs.access(access))
    assert len(seen) >= 4, seen


def test_path_must_be_known() -> None:
    kernel = Kernel.boot(KernelConfig(variant="nopti", seed=0))
    with pytest.raises(ValueError, match="path"):
        ProbeCore(kernel, kernel.spawn(), ProbeConfig(), 0, path="fast")
    assert PATHS == ("engine", "reference")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["nopti", "kaiser-rfc", "linux", "fixed-trampoline"])
@pytest.mark.parametrize("seed", [0, 1])
def test_whole_attack_is_the_same_on_both_paths(variant: str, seed: int) -> None:
    """Every region (the memory-region scans too), every probe, the JSON but for seconds."""
    logs: dict[str, Log] = {}
    runs = {}
    for path in PATHS:
        logs[path] = []
        run = run_kaslr(variant, seed=seed, path=path, log=logs[path]).as_dict()
        run.pop("seconds")
        runs[path] = run
    assert logs["engine"] == logs["reference"]
    assert runs["engine"] == runs["reference"]
