"""Differential: `kaiser audit --policy strict` and `kaiser attack meltdown` agree on what leaks.

For every variant and every secret region, Meltdown reads a planted secret from user mode or it
does not; the strict audit of the same machine (booted and spawned the same way) has a
not-allowed mapping covering the secret's address exactly when it does. The variant's own policy
does not (two-pgd's and KAISER's designs map what they leak), which is why strict exists.
"""

from __future__ import annotations

from functools import cache

import pytest

from kaiser.attacks.core import REGIONS, MeltdownResult, run_meltdown
from kaiser.linux.audit import AuditReport, audit_model
from kaiser.linux.audit_policy import policy_for
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.variants import VARIANTS


@cache
def attack(variant: str, region: str, seed: int) -> MeltdownResult:
    return run_meltdown(variant, region=region, length=2, seed=seed)


def audit_like(result: MeltdownResult, mode: str) -> AuditReport:
    """The audit of the attacker's process on the machine `run_meltdown` built (boot, victim,
    attacker: the same deterministic steps; the planted bytes change no table)."""
    return _audit(result.config, mode)


@cache
def _audit(config: KernelConfig, mode: str) -> AuditReport:
    """One audit per machine: every region's attack on a variant boots the same one."""
    kernel = Kernel.boot(config)
    kernel.spawn()  # the victim
    attacker = kernel.spawn()
    return audit_model(kernel, attacker, mode=mode)


def flagged(report: AuditReport, va: int) -> bool:
    return any(f.start <= va < f.end for f in report.violations if f.kind == "not-allowed")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_strict_audit_flags_exactly_what_meltdown_reads(variant: str) -> None:
    for region in REGIONS:
        result = attack(variant, region, 1)
        leaked = result.correct > 0 and result.protected  # asi maps nonsensitive memory by design
        assert flagged(audit_like(result, "strict"), result.secret.va) == leaked, (variant, region, leaked)


def test_own_policy_misses_the_leaks_of_the_designs_that_map_them() -> None:
    missed = {
        (v, r)
        for v in ("kaiser-rfc", "two-pgd")
        for r in REGIONS
        if attack(v, r, 1).correct and not flagged(audit_like(attack(v, r, 1), "variant"), attack(v, r, 1).secret.va)
    }
    assert missed == {("kaiser-rfc", "vmalloc"), ("two-pgd", "kernel-data")}


@pytest.mark.parametrize("pcid", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_strict_never_allows_what_the_variant_policy_forbids(variant: str, pcid: bool) -> None:
    own, strict = policy_for(variant, pcid=pcid), policy_for(variant, pcid=pcid, mode="strict")
    linux = policy_for("linux", pcid=pcid)
    if VARIANTS[variant].asi:  # its boundary is sensitivity, not PTI's list: strict is its own policy
        assert (strict.allowed, strict.global_ok) == (own.allowed, own.global_ok)
        return
    if VARIANTS[variant].lass_cpu:  # LASS faults user accesses before paging: strict is its own policy
        assert (strict.allowed, strict.global_ok) == (own.allowed, own.global_ok)
        return
    assert strict.allowed <= own.allowed and strict.allowed <= linux.allowed
    assert strict.global_ok <= own.global_ok and strict.global_ok <= linux.global_ok
