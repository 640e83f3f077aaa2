"""Boot a kernel and start the process that reads its debugfs page tables (`kaiser dump`,
`kaiser walk --variant`, `kaiser audit --variant`)."""

from __future__ import annotations

from typing import Any

from kaiser.linux.debugfs import spawn_reader
from kaiser.linux.kernel import Kernel, KernelConfig, Task


def boot_process(variant: str = "linux", *, ldt: bool = False, **switches: Any) -> tuple[Kernel, Task]:
    """Boot `variant` with the other `KernelConfig` switches (pcid, la57, kaslr, seed, pti, vendor,
    vsyscall, ncpus, ...) and start `kaiser.linux.debugfs.spawn_reader`'s process (with an LDT when
    `ldt`). `UnknownVariant` for a bad name, `ValueError` for contradicting switches."""
    kernel = Kernel.boot(KernelConfig(variant=variant, **switches))
    return kernel, spawn_reader(kernel, ldt=ldt)
