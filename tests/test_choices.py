"""kaiser/choices.py is the one home of the names the command line offers: the model modules that
check a name use these very objects, and each registry of objects is keyed by exactly the names
choices.py lists for it, in its order (a workload, machine or recording workload added to a
registry and not to choices.py -- or the other way round -- fails here)."""

from __future__ import annotations

from typing import Any

import pytest

from kaiser import choices
from kaiser.api import walks
from kaiser.attacks import core, timing
from kaiser.cost import machines, workloads
from kaiser.linux import audit_policy, kernel, variants
from kaiser.record import recorder
from kaiser.x86 import nested


@pytest.mark.parametrize(
    ("registry", "names"),
    [
        (workloads.WORKLOADS, choices.WORKLOAD_NAMES),
        (machines.MACHINES, choices.MACHINE_NAMES),
        (recorder.WORKLOADS, choices.RECORDING_WORKLOADS),
    ],
    ids=["cost workloads", "machines", "recording workloads"],
)
def test_every_registry_is_keyed_by_its_names(registry: dict[str, Any], names: tuple[str, ...]) -> None:
    assert tuple(registry) == names
    assert all(obj.name == key for key, obj in registry.items())


@pytest.mark.parametrize(
    ("used", "home"),
    [
        (kernel.VSYSCALL_MODES, choices.VSYSCALL_MODES),
        (kernel.PTI_MODES, choices.PTI_MODES),
        (kernel.VENDORS, choices.VENDORS),
        (audit_policy.POLICY_MODES, choices.POLICY_MODES),
        (nested.HOST_PAGES, choices.HOST_PAGES),
        (workloads.THP_MODES, choices.THP_MODES),
        (machines.THP_MODES, choices.THP_MODES),
        (core.REGIONS, choices.SECRET_REGIONS),
        (timing.PROBES, choices.PROBES),
        (variants.BASELINE, choices.BASELINE),
        (walks.PGDS, choices.PGDS),
    ],
)
def test_the_model_checks_the_names_of_choices(used: object, home: object) -> None:
    assert used is home  # imported, not restated


def test_the_baseline_and_the_machines_name_what_is_registered() -> None:
    assert choices.BASELINE in variants.VARIANTS and not variants.VARIANTS[choices.BASELINE].isolating
    assert {m.thp for m in machines.MACHINES.values()} <= set(choices.THP_MODES)
    assert {m.host_page for m in machines.MACHINES.values()} - {None} <= set(choices.HOST_PAGES)
