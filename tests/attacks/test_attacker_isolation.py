"""The attacker sees only its process interface: never physical memory, the walker or the value."""

from __future__ import annotations

from typing import Any

from isolation_support import RecordingPort, imported_modules, names_used

import kaiser.attacks.meltdown as attacker_module
from kaiser.attacks.core import Core, UserProcess
from kaiser.attacks.meltdown import MeltdownAttacker, MeltdownParams, Sigsegv
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.x86.cpu import CpuState

ALLOWED_IMPORTS = {"__future__", "statistics", "collections", "collections.abc", "dataclasses", "typing"}
FORBIDDEN_NAMES = {"read_bytes", "read_u64", "read_frame", "translate", "mem", "frames", "walker", "_core", "_task"}
PORT_API = {"mmap", "clflush", "timed_load", "meltdown_gadget"}


def test_attacker_module_imports_nothing_of_the_model() -> None:
    imported = imported_modules(attacker_module)
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS
    assert not any(name.startswith("kaiser") for name in imported)


def test_attacker_module_never_names_memory_or_walker_accessors() -> None:
    names = names_used(attacker_module)
    assert not names & FORBIDDEN_NAMES, names & FORBIDDEN_NAMES


class GadgetRecordingPort(RecordingPort):
    """A `RecordingPort` that also keeps what each Meltdown gadget returned."""

    def __init__(self, inner: UserProcess) -> None:
        super().__init__(inner)
        self.gadget_results: list[Sigsegv | None] = []

    def __getattr__(self, name: str) -> Any:
        value = super().__getattr__(name)
        if name == "meltdown_gadget":

            def gadget(*args: int) -> Sigsegv | None:
                result = value(*args)
                self.gadget_results.append(result)
                return result

            return gadget
        return value


def test_attacker_uses_only_the_port_and_the_gadget_returns_no_value() -> None:
    kernel = Kernel.boot(KernelConfig(variant="nopti", seed=3))
    task = kernel.spawn()
    kcr3, _ = kernel.cr3_pair(task)
    core = Core(kernel.mem, CpuState(cr3=kcr3, cr4=kernel.cr4(), cpl=3), seed=3)
    port = GadgetRecordingPort(UserProcess(core, task, kernel.user_top))
    attacker = MeltdownAttacker(port, MeltdownParams(max_rounds=3))  # type: ignore[arg-type]
    secret_va = kernel.layout.page_offset_base + 0x200000
    attacker.read(secret_va, 2)
    assert port.used <= PORT_API
    assert port.gadget_results and all(isinstance(r, Sigsegv) for r in port.gadget_results)
    segv = port.gadget_results[0]
    assert segv is not None and segv.addr == secret_va
    assert set(vars(segv)) == {"addr", "error_code"}  # the signal frame, not the loaded byte


def test_process_hides_its_core_behind_slots() -> None:
    assert not hasattr(UserProcess, "__dict__") or "__slots__" in UserProcess.__dict__
    assert set(UserProcess.__slots__) == {"_core", "_task", "_user_top"}  # type: ignore[attr-defined]
