"""Meltdown against every variant: isolation holds, nopti leaks, a fixed core leaks nothing, and the
attack itself finds where a variant maps more than it should."""

from __future__ import annotations

import random

import pytest

from kaiser.attacks.core import REGIONS, Core, UserProcess, plant_at, run_meltdown
from kaiser.attacks.meltdown import MeltdownAttacker, MeltdownParams
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.variants import VARIANTS
from kaiser.x86.cpu import CpuState

SEEDS = (1, 2, 3)
ISOLATING = [name for name, v in VARIANTS.items() if v.isolating]
SMALL = 8  # bytes per secret in the default run


@pytest.mark.parametrize("variant", ISOLATING)
def test_isolating_variants_leak_no_direct_map_byte(variant: str) -> None:
    for seed in SEEDS:
        result = run_meltdown(variant, region="direct-map", length=SMALL, seed=seed)
        assert result.correct == 0, (seed, result.recovered)
        assert result.claimed == 0, "a non-leaking run must report unknown bytes, not zeros"
        assert not result.reach.present


def test_nopti_on_a_vulnerable_core_leaks_at_least_99_percent() -> None:
    correct = total = 0
    for seed in SEEDS:
        result = run_meltdown("nopti", region="direct-map", length=32, seed=seed)
        correct += result.correct
        total += len(result.secret.data)
        assert result.reach.present and result.reach.level == "PDPTE"  # the 1 GiB direct-map leaf
    assert correct / total >= 0.99


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_fixed_core_leaks_nothing_anywhere(variant: str) -> None:
    for region in REGIONS:
        result = run_meltdown(variant, region=region, length=4, seed=5, vulnerable=False)
        assert result.correct == 0 and result.claimed == 0, (region, result.recovered)


@pytest.mark.parametrize(
    ("variant", "region", "leaks", "part"),
    [
        ("two-pgd", "kernel-data", True, "fixmap_pgd"),  # the shared top-level entry holds the image
        ("kaiser-rfc", "vmalloc", True, "task_stacks"),  # KAISER mapped every task stack
        ("kaiser-global", "vmalloc", True, "task_stacks"),
        ("linux", "kernel-data", False, None),
        ("linux", "vmalloc", False, None),
        ("linux-4.15", "kernel-data", False, None),
        ("fixed-trampoline", "kernel-data", False, None),
        ("two-pgd", "vmalloc", False, None),
        ("nopti", "vmalloc", True, "no isolation"),
    ],
)
def test_the_attack_finds_what_a_variant_maps(variant: str, region: str, leaks: bool, part: str | None) -> None:
    result = run_meltdown(variant, region=region, length=SMALL, seed=2)
    if leaks:
        assert result.correct == SMALL, result.recovered
        assert result.reach.present and result.reach.part == part
    else:
        assert result.correct == 0 and result.claimed == 0
        assert not result.reach.present


def test_linux_without_pcid_leaks_kernel_rodata_through_its_global_text_clone() -> None:
    """pti_clone_kernel_text() maps text and rodata when there is no PCID (§3.3): a secret there
    is Meltdown-readable; with PCID it is not."""
    kernel = Kernel.boot(KernelConfig(variant="linux", pcid=False, seed=1))
    rodata = kernel.layout.section("rodata").start + 0x3000
    leaky = run_meltdown("linux", target=rodata, length=SMALL, seed=1, pcid=False)
    safe = run_meltdown("linux", target=rodata, length=SMALL, seed=1, pcid=True)
    assert leaky.correct == SMALL and leaky.reach.part == "kernel_text"
    assert safe.correct == 0


def test_zero_bytes_are_recovered_as_zeros_only_with_evidence() -> None:
    kernel = Kernel.boot(KernelConfig(variant="nopti", seed=4))
    task = kernel.spawn()
    data = bytes([0, 0x11, 0, 0xFF, 0, 0x80])
    va = kernel.layout.page_offset_base + 0x3000_0000
    plant_at(kernel, va, data)
    kcr3, _ = kernel.cr3_pair(task)
    core = Core(kernel.mem, CpuState(cr3=kcr3, cr4=kernel.cr4(), cpl=3), seed=4)
    attacker = MeltdownAttacker(UserProcess(core, task, kernel.user_top))
    readings = attacker.read(va, len(data))
    assert [r.value for r in readings] == list(data)
    assert readings[0].zero_rounds >= readings[0].rounds // 2 + 1


def test_five_level_two_pgd_also_leaks_the_image_and_still_hides_the_direct_map() -> None:
    leak = run_meltdown("two-pgd", region="kernel-data", length=4, seed=1, la57=True)
    safe = run_meltdown("two-pgd", region="direct-map", length=4, seed=1, la57=True)
    assert leak.correct == 4 and safe.correct == 0


def test_result_json_has_the_fields_the_issue_names() -> None:
    data = run_meltdown("nopti", length=4, seed=1).as_dict()
    for key in ("secret_bytes", "recovered_bytes", "accuracy", "variant", "region", "target", "reachable"):
        assert key in data
    assert data["secret_bytes"] == data["recovered_bytes"]
    assert data["reachable"]["level"] == "PDPTE"  # type: ignore[index]


def test_attack_params_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="stride"):
        MeltdownParams(stride=100)
    with pytest.raises(ValueError, match="min_votes"):
        MeltdownParams(max_rounds=2, min_votes=3)


@pytest.mark.slow
@pytest.mark.parametrize("la57", [False, True])
def test_full_matrix_over_many_seeds(la57: bool) -> None:
    expected_leaks = {
        ("nopti", "direct-map"),
        ("nopti", "kernel-data"),
        ("nopti", "vmalloc"),
        ("kaiser-rfc", "vmalloc"),
        ("kaiser-global", "vmalloc"),
        ("two-pgd", "kernel-data"),
    }
    rng = random.Random(99)
    for seed in rng.sample(range(1000), 6):
        for variant in VARIANTS:
            for region in REGIONS:
                result = run_meltdown(variant, region=region, length=32, seed=seed, la57=la57)
                if (variant, region) in expected_leaks:
                    assert result.accuracy >= 0.99, (variant, region, seed, result.recovered)
                else:
                    assert result.correct == 0 and result.claimed == 0, (variant, region, seed)
