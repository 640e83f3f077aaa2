"""Assemble and link the realcode kernel and user program with GNU binutils.

`as` assembles `asm/*.s` once per build-switch set (cached in-process by source hash);
`ld` links them per booted kernel with a generated script that puts every section at the
address the kernel model maps it at and defines the layout's addresses (the KASLR-relocated
link a real kernel gets); `objcopy -O binary` extracts each section and `nm` the symbols.
binutils is required: a missing tool is a loud `BuildError`, never a skip.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# The MSRs the kernel's WRMSRs name: in globals(), so ASM_CONSTANTS passes them to the assembly.
from kaiser.x86.bits import (  # noqa: F401
    MSR_EFER,
    MSR_GS_BASE,
    MSR_KERNEL_GS_BASE,
    MSR_LSTAR,
    MSR_STAR,
    MSR_SYSCALL_MASK,
)

ASM_DIR: Final = Path(__file__).parent / "asm"
SOURCES: Final = ("kernel.s", "user.s")
TOOLS: Final = ("as", "ld", "objcopy", "nm")

# Sections, in link order: (name, what it holds). The loader gives each an address.
SECTIONS: Final = (".entry.page", ".entry.text", ".ktext", ".kdata", ".user.text", ".user.data")

# ---- constants the assembly reads (passed with `as --defsym`) --------------------------------
# Linux's 64-bit GDT layout (asm/segment.h: GDT_ENTRY_KERNEL_CS = 2 ... GDT_ENTRY_DEFAULT_USER_CS = 6).
KERNEL_CS: Final = 0x10
KERNEL_DS: Final = 0x18
USER32_CS: Final = 0x23
USER_DS: Final = 0x2B
USER_CS: Final = 0x33
# GDT_ENTRY_INIT values of Linux's gdt_page (arch/x86/kernel/cpu/common.c), accessed bit preset.
GDT: Final = (
    0,
    0x00CF9B000000FFFF,  # 0x08 KERNEL32_CS
    0x00AF9B000000FFFF,  # 0x10 KERNEL_CS (L=1)
    0x00CF93000000FFFF,  # 0x18 KERNEL_DS
    0x00CFFB000000FFFF,  # 0x23 USER32_CS
    0x00CFF3000000FFFF,  # 0x2b USER_DS
    0x00AFFB000000FFFF,  # 0x33 USER_CS (L=1)
)
GDT_LIMIT: Final = 8 * len(GDT) - 1
# syscall_init() before 5.x: TF|DF|IF|IOPL|AC|NT cleared on SYSCALL (arch/x86/kernel/cpu/common.c).
SYSCALL_MASK: Final = 0x47700
# x86_hw_tss is packed: reserved1 (u32), sp0, sp1, sp2 (asm/processor.h). cpu_tss_rw is the
# second page of our per-CPU area (kaiser.linux.kernel.Cpu.tss_va).
PAGE: Final = 4096
TSS_OFFSET: Final = PAGE
TSS_SP0: Final = TSS_OFFSET + 4
TSS_SP1: Final = TSS_OFFSET + 12
TSS_SP2: Final = TSS_OFFSET + 20
# Kernel-only per-CPU variables in a spare page of the per-CPU area (page 12, never user-mapped):
PCPU_VARS: Final = 12 * PAGE
PCPU_TOP_OF_STACK: Final = PCPU_VARS + 0  # cpu_current_top_of_stack
PCPU_USER_PCID_FLUSH_MASK: Final = PCPU_VARS + 8  # cpu_tlbstate.user_pcid_flush_mask
PCPU_CURRENT_PID: Final = PCPU_VARS + 16  # current->tgid (our stand-in for `current`)
KDATA_WORDS: Final = 4
MAX_CALLS: Final = 16
NR_GETPID: Final = 0
NR_KERNEL_WORD: Final = 1
NR_PEEK_PHYS: Final = 2
ENOSYS: Final = 38
EINVAL: Final = 22

ASM_CONSTANTS: Final = {
    name: value
    for name, value in globals().items()
    if name.isupper()
    and isinstance(value, int)
    and name not in ("PAGE", "TSS_OFFSET", "PCPU_VARS", "ENOSYS", "EINVAL")
    and not name.startswith("NR_")
}


class BuildError(RuntimeError):
    """The toolchain is missing or rejected the source."""


@dataclass(frozen=True)
class Switches:
    """Build switches: the ALTERNATIVEs a real kernel patches at boot."""

    pti: bool
    pcid: bool
    trampoline: bool

    def defsyms(self) -> dict[str, int]:
        return {"PTI": int(self.pti), "PCID": int(self.pcid and self.pti), "TRAMPOLINE": int(self.trampoline)}


@dataclass(frozen=True)
class Image:
    """The linked program: each section's link address and bytes, and every global symbol."""

    sections: dict[str, tuple[int, bytes]]
    symbols: dict[str, int]

    def symbol(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise BuildError(f"symbol {name!r} is not defined by the realcode image") from None

    def cr3_write_sites(self) -> list[int]:
        """Addresses of every `mov reg, %cr3` (the WRITE_CR3 macro's `cr3_write_N` symbols)."""
        return sorted(a for n, a in self.symbols.items() if n.startswith("cr3_write_"))


def toolchain() -> dict[str, str]:
    """Paths of as, ld, objcopy and nm; a BuildError naming the package if any is missing."""
    found = {tool: shutil.which(tool) for tool in TOOLS}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise BuildError(
            f"GNU binutils tool(s) {', '.join(missing)} not found on PATH: kaiser run assembles its kernel "
            "with binutils (Debian/Ubuntu: apt-get install binutils)"
        )
    return {tool: path for tool, path in found.items() if path is not None}


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise BuildError(f"{what} failed ({' '.join(cmd[:1])}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


_OBJECTS: dict[str, bytes] = {}


def source_text(name: str) -> str:
    """The text of the assembly source `asm/<name>`."""
    return (ASM_DIR / name).read_text()


def assemble(name: str, switches: Switches) -> bytes:
    """The object file for `asm/<name>` with these switches (cached by source and switch hash)."""
    tools = toolchain()
    defsyms = {**ASM_CONSTANTS, **switches.defsyms()}
    text = source_text(name)
    key = hashlib.sha256((text + repr(sorted(defsyms.items()))).encode()).hexdigest()
    cached = _OBJECTS.get(key)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="kaiser-as-") as tmp:
        src = Path(tmp) / name
        src.write_text(text)
        obj = Path(tmp) / (name + ".o")
        cmd = [tools["as"], "--64", "-o", str(obj), str(src)]
        for sym, value in sorted(defsyms.items()):
            cmd += ["--defsym", f"{sym}={value:#x}"]
        _run(cmd, f"assembling {name}")
        data = obj.read_bytes()
    _OBJECTS[key] = data
    return data


def linker_script(addresses: dict[str, int], symbols: dict[str, int]) -> str:
    """One output section per input section at its address; layout addresses as symbols."""
    lines = ["ENTRY(kaiser_start_kernel)"]
    lines += [f"{name} = {value:#x};" for name, value in sorted(symbols.items())]
    lines.append("SECTIONS {")
    for section in SECTIONS:
        lines.append(f"  {section} {addresses[section]:#x} : {{ *({section}) }}")
    lines.append("  /DISCARD/ : { *(.text) *(.data) *(.bss) *(.note*) *(.comment) }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def link(switches: Switches, addresses: dict[str, int], symbols: dict[str, int]) -> Image:
    """Link kernel and user program at `addresses` (section -> VA) with layout `symbols`."""
    tools = toolchain()
    objects = {name: assemble(name, switches) for name in SOURCES}
    with tempfile.TemporaryDirectory(prefix="kaiser-ld-") as tmp:
        base = Path(tmp)
        paths = []
        for name, data in objects.items():
            path = base / (name + ".o")
            path.write_bytes(data)
            paths.append(str(path))
        script = base / "realcode.ld"
        script.write_text(linker_script(addresses, symbols))
        elf = base / "realcode.elf"
        _run(
            [tools["ld"], "-m", "elf_x86_64", "-static", "-z", "noexecstack", "-T", str(script), "-o", str(elf)]
            + paths,
            "linking the realcode image",
        )
        sections: dict[str, tuple[int, bytes]] = {}
        for section in SECTIONS:
            out = base / (section.strip(".") + ".bin")
            _run(
                [tools["objcopy"], "-O", "binary", f"--only-section={section}", str(elf), str(out)],
                f"extracting {section}",
            )
            sections[section] = (addresses[section], out.read_bytes())
        table = _run([tools["nm"], "--defined-only", str(elf)], "reading symbols")
    found: dict[str, int] = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 3:
            found[parts[2]] = int(parts[0], 16)
    for section, (_va, data) in sections.items():
        if len(data) > PAGE:
            raise BuildError(f"section {section} is {len(data)} bytes; the loader gives it one 4 KiB page")
    return Image(sections, found)
