"""The machine switches every command that boots a kernel shares, and the one place that turns
them into a `KernelConfig` (`machine_config`): ``--pti on|auto``, ``--vendor intel|amd``,
``--vsyscall none|xonly|emulate``, ``--cpus N`` beside the variant, PCID, 5-level, KASLR and seed.

* ``--pti auto`` (Linux's default): isolation only on a CPU with the Meltdown bug (``--vendor amd``
  gets none), and the kernel image global without PCID (`pti_kernel_image_global_ok()`, facts
  linux-kpti.md §3.3); ``--pti on`` always isolates and never makes the image global.
* ``--vendor``: Intel maps the entry area's debug-store page; AMD is K8 (no global image).
* ``--vsyscall``: only ``emulate`` maps the vsyscall page (vsyscall_64.c).
* ``--vm/--no-vm`` and ``--host-page 4k|2m|1g`` (bench): run as a guest with nested paging (EPT/NPT,
  `kaiser.x86.nested`) over host pages of that size (default 2m, CHOSEN as the machines'); a
  guest ``--machine`` turns it on, ``--no-vm`` off.
* ``--lass`` (attack meltdown, attack kaslr): a CPU with LASS, and CR4.LASS set at boot. Linux
  turns LASS off with ``vsyscall=emulate`` (`KernelConfig.lass_active`), so with ``--lass`` the
  ``--vsyscall`` default is ``xonly`` (Linux's default since 5.x); ``--lass --vsyscall emulate``
  shows the LASS CPU with LASS off, as Linux boots it (`lass_vsyscall`).

`kaiser compare` takes the same options with no default: each one given overrides what the dump
shows (`kaiser.linux.compare.switches_for`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from kaiser.choices import HOST_PAGES, PTI_MODES, VENDORS, VSYSCALL_MODES
from kaiser.cli.options import choice
from kaiser.cli.output import fail

if TYPE_CHECKING:
    from kaiser.linux.kernel import KernelConfig

MAX_CPUS = 64  # the model's limit (KernelConfig: one espfix page serves 64 CPUs)
# the KernelConfig fields these options (and pcid, la57, kaslr, seed) set
MODEL_SWITCHES = ("pcid", "la57", "kaslr", "seed", "pti", "vendor", "vsyscall", "ncpus")

PtiOption = Annotated[
    str,
    typer.Option("--pti", callback=choice(*PTI_MODES), help="pti=auto (isolate only with the Meltdown bug) or on."),
]
VendorOption = Annotated[
    str, typer.Option("--vendor", callback=choice(*VENDORS), help="CPU vendor: intel or amd (not Meltdown-affected).")
]
VsyscallOption = Annotated[
    str | None,
    typer.Option(
        "--vsyscall",
        callback=choice(*VSYSCALL_MODES),
        help="vsyscall= mode: emulate, xonly or none (default: the era's Linux default, xonly; 4.15's: emulate).",
    ),
]
CpusOption = Annotated[int, typer.Option("--cpus", min=1, max=MAX_CPUS, help="Number of CPUs.")]
VmOption = Annotated[
    bool | None,
    typer.Option(
        "--vm/--no-vm",
        help="Run as a guest with nested paging (EPT/NPT: two-dimensional walks). Default: the machine's.",
    ),
]
HostPageOption = Annotated[
    str | None,
    typer.Option(
        "--host-page",
        callback=choice(*HOST_PAGES),
        help="With --vm: the host's page size backing guest RAM, 4k, 2m or 1g (default: the machine's, else 2m).",
    ),
]
DEFAULT_HOST_PAGE = "2m"  # CHOSEN: a KVM host backs guest RAM with transparent huge pages (cost/machines.py)


def vm_host_page(vm: bool | None, host_page: str | None, machine_host_page: str | None) -> str | None:
    """The host page size a bench runs its guest on, or None for bare metal: ``--vm`` or a guest
    machine turns nested paging on, ``--no-vm`` off; ``--host-page`` without a guest is an error."""
    on = vm if vm is not None else machine_host_page is not None
    if not on:
        if host_page is not None:
            fail(f"--host-page {host_page}: only for a guest (add --vm or a guest --machine)")
        return None
    return host_page or machine_host_page or DEFAULT_HOST_PAGE


LassOption = Annotated[
    bool,
    typer.Option(
        "--lass", help="A CPU with LASS, set in CR4 (vsyscall default becomes xonly; emulate turns LASS off)."
    ),
]

# compare: the same, with no default (what the dump shows)
PtiOrDump = Annotated[
    str | None, typer.Option("--pti", callback=choice(*PTI_MODES), help="pti=auto or on. Default: from the dump.")
]
VendorOrDump = Annotated[
    str | None, typer.Option("--vendor", callback=choice(*VENDORS), help="intel or amd. Default: from the dump.")
]
VsyscallOrDump = Annotated[
    str | None,
    typer.Option(
        "--vsyscall", callback=choice(*VSYSCALL_MODES), help="emulate, xonly or none. Default: from the dump."
    ),
]
CpusOrDump = Annotated[
    int | None, typer.Option("--cpus", min=1, max=MAX_CPUS, help="Number of CPUs. Default: from the dump.")
]


def lass_vsyscall(ctx: typer.Context, lass: bool, vsyscall: str | None) -> str | None:
    """The vsyscall mode to boot with: ``xonly`` when ``--lass`` is given and ``--vsyscall`` is
    not (LASS would be off under the ``emulate`` default), else ``vsyscall`` as given."""
    source = ctx.get_parameter_source("vsyscall")  # typer 0.2x vendors click: compare by name
    if lass and getattr(source, "name", None) == "DEFAULT":
        return "xonly"
    return vsyscall


def machine_config(variant: str, **switches: Any) -> KernelConfig:
    """The `KernelConfig` of a command's options (`cpus` is `ncpus`); a contradiction is a
    one-line error (exit 2)."""
    from kaiser.linux.kernel import KernelConfig  # the model: imported when a command runs

    if "cpus" in switches:
        switches["ncpus"] = switches.pop("cpus")
    try:
        return KernelConfig(variant=variant, **switches)
    except ValueError as exc:
        fail(str(exc))


__all__ = [
    "MODEL_SWITCHES",
    "CpusOption",
    "CpusOrDump",
    "HostPageOption",
    "LassOption",
    "PtiOption",
    "PtiOrDump",
    "VendorOption",
    "VendorOrDump",
    "VsyscallOption",
    "VsyscallOrDump",
    "VmOption",
    "lass_vsyscall",
    "machine_config",
    "vm_host_page",
]
