"""Put the realcode kernel and user program into a booted kernel model's physical memory.

Every byte goes into the frame our model maps at the section's link address: the entry page
into the first frame of entry text (which the entry-area trampoline aliases), the rest of the
kernel into the image's text and data frames (`kernel_phys + (va - kernel_base)`), the user
program into the frames `task.mm.pt` maps at its text and data. Per-CPU state the entry code
reads (GDT, TSS.sp0/sp1, cpu_current_top_of_stack, the PCID flush mask, `current`'s pid) is
written into CPU 0's per-CPU frames, as the kernel's boot would.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

from kaiser.linux.kernel import THREAD_SIZE, Kernel, KernelConfig, Task
from kaiser.linux.mm import ProgramImage
from kaiser.linux.variants import VARIANTS, Entry, Part, Variant, derive_variant, get_variant
from kaiser.realcode import build
from kaiser.realcode.build import PAGE, Image, Switches

BROKEN_VARIANT = "linux-no-entry-text"
BROKEN_BASE = "linux"
USER_STACK_SLACK = 64  # start below the top of the [stack] VMA


def broken_variant() -> Variant:
    """`linux` without the entry-text clone (and without the kernel-text clone, which would map
    the entry text too when PCID is off): the user tables cannot fetch entry_SYSCALL_64."""
    return derive_variant(
        BROKEN_BASE,
        BROKEN_VARIANT,
        summary="debug: linux with the entry text left out of the user tables (SYSCALL must fault)",
        source="test-only (kaiser run --variant linux-no-entry-text)",
        without=(Part.ENTRY_TEXT, Part.KERNEL_TEXT),
    )


def variant_names() -> list[str]:
    """Every name `kaiser run` accepts: the registry plus the broken debug variant."""
    return [*VARIANTS, BROKEN_VARIANT]


def resolve_variant(name: str) -> Variant:
    """A registered variant by name, or the deliberately broken one."""
    return broken_variant() if name == BROKEN_VARIANT else get_variant(name)


def uses_trampoline(variant: Variant) -> bool:
    """Is MSR_LSTAR the entry area's trampoline page (4.15, two-pgd, ours) or entry text?"""
    return variant.entry is not Entry.ENTRY_TEXT


@dataclass(frozen=True)
class Call:
    """One system call the user program makes, with the result it expects."""

    name: str
    nr: int
    arg: int
    expect: int


@dataclass
class Loaded:
    """A booted kernel with the realcode image in its memory, ready for the CPU."""

    kernel: Kernel
    task: Task
    variant: Variant
    image: Image
    switches: Switches
    entry_va: int  # MSR_LSTAR: where the first instruction after SYSCALL is fetched
    calls: list[Call]
    kernel_target: int  # the kernel address the user program finally loads from
    kdata: list[int]  # the kernel words planted in .data
    kdata_pa: int
    user_data_pa: int  # physical address of the user program's data page
    kernel_cr3: int
    user_cr3: int | None
    stack_top: int

    @property
    def cpu_gdt(self) -> int:
        return self.kernel.cpus[0].cea


def boot(
    variant_name: str, *, pcid: bool = True, la57: bool = False, kaslr: bool = True, seed: int = 0, **machine: Any
) -> Loaded:
    """Boot the model for `variant_name`, spawn a process and load the realcode image into it
    (`machine`: further `KernelConfig` switches -- pti, vendor, vsyscall; one CPU)."""
    variant = resolve_variant(variant_name)
    config = KernelConfig(
        variant=variant.registered_name, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed, ncpus=1, **machine
    )
    kernel = Kernel.boot(config, variant=variant)
    task = kernel.spawn(ProgramImage(name="realcode"))
    return load(kernel, task, variant, seed)


def _user_va(task: Task, name: str) -> int:
    vma = next(v for v in task.mm.vmas if v.name == name)
    return vma.start


def _phys_of(kernel: Kernel, task: Task, va: int) -> int:
    leaf = task.mm.pgd.kernel_pt.lookup(va)
    if leaf is None:
        raise build.BuildError(f"{va:#018x} is not mapped in pid {task.pid}'s kernel tables")
    return leaf.pa + (va - leaf.va)


def load(kernel: Kernel, task: Task, variant: Variant, seed: int = 0) -> Loaded:
    """Load the realcode kernel and user program into `kernel`'s memory for `task` under `variant`."""
    lay, cpu, mem = kernel.layout, kernel.cpus[0], kernel.mem
    trampoline = uses_trampoline(variant)
    stub = cpu.cea_layout.trampoline
    if trampoline and stub is None:
        raise build.BuildError(f"{variant.name}: the entry area has no stub page for the trampoline")
    entry_va = cpu.cea + stub if trampoline and stub is not None else lay.entry_text[0]
    data_start = lay.section("data").start
    addresses = {
        ".entry.page": entry_va,
        ".entry.text": lay.entry_text[0] + PAGE,
        ".ktext": lay.kernel_base,
        ".kdata": data_start,
        ".user.text": _user_va(task, "realcode text"),
        ".user.data": _user_va(task, "realcode data+bss"),
    }
    stack = next(v for v in task.mm.vmas if v.name == "[stack]")
    stack_top = stack.end - USER_STACK_SLACK
    symbols = {
        "RSP_SCRATCH": cpu.entry_stack,  # the entry stack's top word (4.15's RSP_SCRATCH)
        "CEA_TSS_SP1": cpu.cea + cpu.cea_layout.offset("tss") + (build.TSS_SP1 - build.TSS_OFFSET),
        "CPU_GDT": cpu.cea,
        "PERCPU_BASE": cpu.percpu_va,
        "PAGE_OFFSET": lay.page_offset_base,
        "USER_STACK_TOP": stack_top,
    }
    switches = Switches(pti=variant.isolating, pcid=kernel.config.pcid, trampoline=trampoline)
    image = build.link(switches, addresses, symbols)

    def phys(va: int) -> int:
        if va >= lay.kernel_base and va < lay.kernel_end:
            return lay.kernel_phys + (va - lay.kernel_base)
        return _phys_of(kernel, task, va)

    for section, (va, data) in image.sections.items():
        # The trampoline page aliases entry text's first frame (Kernel._map_cpu_entry_area).
        target = lay.entry_text[0] if section == ".entry.page" else va
        mem.write_bytes(phys(target), data)

    # Per-CPU state (CPU 0): GDT page, TSS.sp0 (entry stack top) and sp1, kernel-only variables.
    stack_top_kernel = task.stack + THREAD_SIZE
    mem.write_bytes(cpu.percpu_pa, struct.pack(f"<{len(build.GDT)}Q", *build.GDT))
    entry_stack_top = cpu.entry_stack + 8 - 16  # below RSP_SCRATCH
    mem.write_bytes(cpu.percpu_pa + build.TSS_SP0, struct.pack("<Q", entry_stack_top))
    mem.write_bytes(cpu.percpu_pa + build.TSS_SP1, struct.pack("<Q", stack_top_kernel))
    mem.write_bytes(cpu.percpu_pa + build.PCPU_TOP_OF_STACK, struct.pack("<Q", stack_top_kernel))
    asid = 0
    kpcid = asid + 1
    flush_mask = 1 << kpcid  # a pending user-ASID flush: the first exit takes the flush branch
    mem.write_bytes(cpu.percpu_pa + build.PCPU_USER_PCID_FLUSH_MASK, struct.pack("<Q", flush_mask))
    mem.write_bytes(cpu.percpu_pa + build.PCPU_CURRENT_PID, struct.pack("<Q", task.pid))

    # Kernel words in .data, seeded; the user program reads them by system call and then tries
    # the same physical word through the direct map from user mode.
    rng = random.Random(seed ^ 0x5EC2E7)
    kdata = [rng.getrandbits(64) for _ in range(build.KDATA_WORDS)]
    kdata_va = image.symbol("kaiser_kdata")
    kdata_pa = phys(kdata_va)
    mem.write_bytes(kdata_pa, struct.pack(f"<{len(kdata)}Q", *kdata))
    kernel_target = lay.page_offset_base + kdata_pa

    calls = [
        Call("getpid", build.NR_GETPID, 0, task.pid),
        Call("kernel_word(0)", build.NR_KERNEL_WORD, 0, kdata[0]),
        Call("kernel_word(1)", build.NR_KERNEL_WORD, 1, kdata[1]),
        Call("peek_phys(kdata)", build.NR_PEEK_PHYS, kdata_pa, kdata[0]),
        Call("kernel_word(99)", build.NR_KERNEL_WORD, 99, (-build.EINVAL) % (1 << 64)),
        Call("nr 42", 42, 0, (-build.ENOSYS) % (1 << 64)),
    ]
    user_data_va = addresses[".user.data"]
    user_data_pa = phys(user_data_va)

    def put(symbol: str, *words: int) -> None:
        mem.write_bytes(phys(image.symbol(symbol)), struct.pack(f"<{len(words)}Q", *words))

    put("ncalls", len(calls))
    put("kernel_target", kernel_target)
    put("calls", *[w for c in calls for w in (c.nr, c.arg, c.expect, 0)])
    kcr3, ucr3 = kernel.cr3_pair(task, asid)
    return Loaded(
        kernel=kernel,
        task=task,
        variant=variant,
        image=image,
        switches=switches,
        entry_va=entry_va,
        calls=calls,
        kernel_target=kernel_target,
        kdata=kdata,
        kdata_pa=kdata_pa,
        user_data_pa=user_data_pa,
        kernel_cr3=kcr3,
        user_cr3=ucr3,
        stack_top=stack_top,
    )
