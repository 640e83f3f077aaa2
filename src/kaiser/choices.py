"""The names a user picks from on the command line, in one place that imports nothing of kaiser.

Every command's options offer these names (``choice(...)`` callbacks, help texts, ``max=``
bounds), and click reads a command's signature to print its ``--help``: kept here, beside no
model code, they let every ``kaiser ... --help`` start without numpy, numba or the linux model
(issue 15, lazy start; docs/architecture.md). Standard library only (the import-linter contract
of pyproject.toml).

Tuples of plain names have their one home here: the model modules that check them import them
from this module. The registries of objects (workloads, machines, recording workloads) stay keyed
by the objects' own names where they are built; this module holds their names in order, and
tests/test_choices.py checks that each list equals its registry's keys.
"""

from __future__ import annotations

from typing import Final

# -- linux/variants.py: the variant every isolation overhead is measured against (no PTI: Linux
# with pti=off), for the cost model, traces, sweeps, reports and the CLI
BASELINE: Final = "nopti"

# -- the kernel's boot switches (linux/kernel.py KernelConfig; cli/machine.py's options)
VSYSCALL_MODES: Final = ("emulate", "xonly", "none")  # vsyscall= / CONFIG_LEGACY_VSYSCALL_* (vsyscall_64.c)
PTI_MODES: Final = ("auto", "on")  # pti= (arch/x86/mm/pti.c pti_check_boottime_disable(); nopti is --variant nopti)
VENDORS: Final = ("intel", "amd")  # the CPU vendors whose differences Linux's page tables show

# -- linux/audit.py: the policy an audit judges by (`kaiser audit --policy`)
POLICY_MODES: Final = ("strict", "variant")

# -- x86/nested.py: a guest's host page size (`--host-page`): log2 of the EPT page size
HOST_PAGES: Final = {"4k": 12, "2m": 21, "1g": 30}

# -- cost/: transparent huge pages (Linux's /sys/kernel/mm/transparent_hugepage/enabled), the
# workloads of cost/workloads.py WORKLOADS and the machines of cost/machines.py MACHINES
THP_MODES: Final = ("always", "madvise", "never")
WORKLOAD_NAMES: Final = ("syscall-loop", "null-syscall", "read", "write", "pipe", "interrupts", "page-faults")
MACHINE_NAMES: Final = ("garloff-bare", "garloff-kvm", "garloff-xen", "hansen-skylake", "c5-2018")

# -- record/: the kernel side a replay prices (record/replay.py) and the workloads a recording
# runs (record/recorder.py WORKLOADS)
KERNEL_SIDES: Final = ("recorded", "modelled")
RECORDING_WORKLOADS: Final = (
    "getppid",
    "close",
    "lseek",
    "read",
    "write",
    "pipe",
    "page-fault",
    "sched_yield",
    "timer",
    "s1bench",
)

# -- attacks/: where Meltdown's secret is planted (attacks/core.py) and the KASLR probes
# (attacks/timing.py)
SECRET_REGIONS: Final = ("direct-map", "kernel-data", "vmalloc", "sensitive", "nonsensitive")
PROBES: Final = ("prefetch", "load")

# -- api/walks.py: the PGD `kaiser walk --pgd` walks
PGDS: Final = ("user", "kernel")
