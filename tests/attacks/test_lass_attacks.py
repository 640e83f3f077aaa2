"""The attacks see LASS, and EntryBleed shown explicitly.

* Meltdown: under CR4.LASS a user load of a kernel address is #GP(0) before paging, so the core has
  no physical address to forward from: nothing leaks even from `nopti`, which maps everything.
* EntryBleed (CVE-2022-4543; Liu et al., HASP 2023): on `linux` the prefetch probe finds the 2 MiB
  slot of `entry_SYSCALL_64`, which every system call leaves in the TLB and PTI maps in the user
  tables, and that slot gives `_text`. With LASS every prefetch of a kernel address is dropped
  (no lookup, no walk) and nothing is found; on `fixed-trampoline` the entry text is not at a
  `_text`-relative address in the user tables, so nothing is found either.
* Linux's interaction: `vsyscall=emulate` turns LASS off; with xonly a user call into the vsyscall
  page is a #GP(0) from LASS (the fault Linux's XONLY emulation then handles), not a #PF.
"""

from __future__ import annotations

import json
import random

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kaiser.attacks.cache import QUIET
from kaiser.attacks.core import REGIONS as SECRET_REGIONS
from kaiser.attacks.core import run_meltdown
from kaiser.attacks.timing import REGIONS, ProbeConfig, ProbeCore, run_kaslr, run_seeds, text_symbols
from kaiser.cli.attack import attack_app
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.referee import verify
from kaiser.referee.cases import generate_case
from kaiser.x86.bits import CR4, PF_VECTOR, PFEC
from kaiser.x86.cpu import CpuState
from kaiser.x86.rights import Op
from kaiser.x86.walker import GP_VECTOR, Fault, translate

VSYSCALL_ADDR = 0xFFFF_FFFF_FF60_0000  # arch/x86/include/uapi/asm/vsyscall.h VSYSCALL_ADDR
runner = CliRunner()
app = typer.Typer()
app.add_typer(attack_app, name="attack")


# ---- the machine -------------------------------------------------------------------------------------
@pytest.mark.parametrize("vsyscall", ["emulate", "xonly", "none"])
@pytest.mark.parametrize("lass", [False, True])
def test_kernel_sets_cr4_lass_unless_vsyscall_emulate(lass: bool, vsyscall: str) -> None:
    config = KernelConfig(variant="linux", lass=lass, vsyscall=vsyscall)
    kernel = Kernel.boot(config)
    assert bool(kernel.cr4() & CR4.LASS) == (lass and vsyscall != "emulate") == config.lass_active
    assert kernel.cr4() & CR4.SMAP  # LASS rests on SMAP


@pytest.mark.parametrize(("lass", "vsyscall", "vector", "error"), [
    (False, "emulate", PF_VECTOR, PFEC.P | PFEC.US | PFEC.ID),  # the NX page: emulate_vsyscall() via #PF
    (False, "xonly", PF_VECTOR, PFEC.US | PFEC.ID),  # no PTE: XONLY emulation via #PF
    (True, "xonly", GP_VECTOR, 0),  # LASS: the XONLY emulation moves into the #GP handler
    (True, "emulate", PF_VECTOR, PFEC.P | PFEC.US | PFEC.ID),  # emulate turned LASS off
])  # fmt: skip
def test_a_user_call_into_the_vsyscall_page(lass: bool, vsyscall: str, vector: int, error: int) -> None:
    kernel = Kernel.boot(KernelConfig(variant="linux", lass=lass, vsyscall=vsyscall))
    task = kernel.spawn()
    kcr3, ucr3 = kernel.cr3_pair(task)
    state = CpuState(cr3=ucr3 or kcr3, cr4=kernel.cr4(), cpl=3)
    fault = translate(kernel.mem, state, VSYSCALL_ADDR, Op.FETCH, set_ad=False)
    assert isinstance(fault, Fault)
    assert (fault.vector, fault.error_code) == (vector, int(error))
    assert (fault.cr2 is None) == (vector == GP_VECTOR)


def test_the_referee_never_sets_lass() -> None:
    """Unicorn does not implement LASS: no referee case may set CR4.LASS, nor its CPU claim it."""
    rng = random.Random(16)
    assert not any(generate_case(rng, i).state.cr4 & CR4.LASS for i in range(300))
    assert not verify.FEATURES.lass


# ---- Meltdown ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("region", SECRET_REGIONS)
def test_meltdown_recovers_nothing_under_lass_even_from_nopti(region: str) -> None:
    leaky = run_meltdown("nopti", region=region, length=4, seed=1, lass=True, vsyscall="emulate")
    blocked = run_meltdown("nopti", region=region, length=4, seed=1, lass=True, vsyscall="xonly")
    assert not leaky.config.lass_active and leaky.correct == 4  # emulate: Linux turned LASS off
    assert blocked.config.lass_active and blocked.correct == blocked.claimed == 0
    assert blocked.reach.reason.startswith("LASS") and blocked.reach.index == -1  # no walk


def test_cli_meltdown_nopti_lass_json() -> None:
    args = ["attack", "meltdown", "--variant", "nopti", "--secret-in", "direct-map", "--length", "8", "--json"]
    plain = runner.invoke(app, args)
    lass = runner.invoke(app, [*args, "--lass"])
    off = runner.invoke(app, [*args, "--lass", "--vsyscall", "emulate"])
    assert plain.exit_code == lass.exit_code == off.exit_code == 0, (plain.output, lass.output, off.output)
    plain_d, lass_d, off_d = (json.loads(r.output) for r in (plain, lass, off))
    assert (plain_d["lass"], plain_d["correct"]) == (False, 8)
    assert (lass_d["lass"], lass_d["correct"], lass_d["claimed"]) == (True, 0, 0)
    assert (off_d["lass"], off_d["correct"]) == (False, 8)


# ---- KASLR: probes and EntryBleed ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    offsets=st.lists(st.integers(0, (1 << 47) - 1), min_size=1, max_size=8), probe=st.sampled_from(["prefetch", "load"])
)
def test_under_lass_every_kernel_address_probes_the_same(offsets: list[int], probe: str) -> None:
    """The entry text (TLB-hot), a mapped uncached page, an unmapped one, random upper-half
    addresses: with LASS the quiet probe costs the same for all, so timing has nothing to show."""
    kernel = Kernel.boot(KernelConfig(variant="linux", seed=5, lass=True, vsyscall="xonly"))
    core = ProbeCore(kernel, kernel.spawn(), ProbeConfig(probe=probe, noise=QUIET), seed=5)
    core.syscall()
    tss = kernel.cpus[1].tss_va
    addresses = [kernel.layout.entry_text[0], tss, tss + 0x1000, *((1 << 64) - (1 << 47) + o for o in offsets)]
    latencies = {core.latency(va) for va in addresses}
    assert len(latencies) == 1, latencies
    walks = core.mmu.counters.walks_d
    core.latency(tss + 0x2000)
    assert core.mmu.counters.walks_d == walks  # the probe walked nothing


@pytest.mark.parametrize("seed", [0, 1])
def test_entrybleed_recovers_linux_text_base_through_the_entry_text(seed: int) -> None:
    run = run_kaslr("linux", seed=seed, probe="prefetch", regions=("text",))
    outcome = run.outcome("text")
    assert outcome.matched, outcome.as_dict()
    entry = outcome.true_base + text_symbols()["entry_SYSCALL_64"]
    assert entry in outcome.guess.found  # the fast slot is the entry text's
    assert "explained by the symbols" in outcome.guess.how  # not the image mapped wholesale


@pytest.mark.parametrize(
    ("variant", "machine"), [("linux", {"lass": True, "vsyscall": "xonly"}), ("fixed-trampoline", {})]
)
@pytest.mark.parametrize("probe", ["prefetch", "load"])
def test_entrybleed_finds_nothing_under_lass_or_on_fixed_trampoline(variant: str, machine: dict, probe: str) -> None:
    for seed in (0, 1):
        run = run_kaslr(variant, seed=seed, probe=probe, regions=("text",), **machine)
        outcome = run.outcome("text")
        assert outcome.guess.guess is None and outcome.guess.found == [], outcome.as_dict()


def test_cli_kaslr_lass_json() -> None:
    result = runner.invoke(app, ["attack", "kaslr", "--variant", "nopti", "--lass", "--seeds", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["runs"][0]["lass"] is True
    assert all(data["summary"][r]["guessed"] == data["summary"][r]["narrowed"] == 0 for r in REGIONS)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["nopti", "linux", "fixed-trampoline"])
def test_lass_hides_every_region_over_20_layouts(variant: str) -> None:
    for probe in ("prefetch", "load"):
        summary = run_seeds(variant, range(20), probe=probe, lass=True, vsyscall="xonly")
        for region in REGIONS:
            assert summary.guessed(region) == summary.narrowed(region) == 0, (probe, region)
