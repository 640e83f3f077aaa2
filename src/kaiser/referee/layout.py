"""The referee's fixed physical/virtual layout: harness code, stack, GDT and their page tables.

The harness lives in top-level slot 0 (PML4[0], or PML5[0] -> PML4[0]) and is identity-mapped;
every test walk uses a different top-level slot, as kvm-unit-tests' `x86/access.c` does
(`__ac_test_init`), so a test entry can never change how the harness itself is translated.
Harness entries carry A (and D in leaves) already, so the emulator never writes to them.

Physical memory (64 MiB, MAXPHYADDR 40 as in Unicorn/TCG `TCG_PHYS_ADDR_BITS`):

| range                | contents                                           |
| -------------------- | -------------------------------------------------- |
| 0x1000 .. 0x5000     | kernel code, user code, kernel stack, GDT          |
| 0x10000 .. 0x14000   | harness PML4 (5-level only), PDPT, PD, PT          |
| 1 MiB .. 2 MiB       | pool for the per-case test tables (incl. the root) |
| 32 MiB .. 64 MiB     | data frames that test leaves map                   |
"""

from __future__ import annotations

import struct
from typing import Final

from kaiser.x86.bits import PTE

RAM_SIZE: Final = 64 << 20
MAXPHYADDR: Final = 40  # Unicorn/TCG: TCG_PHYS_ADDR_BITS = 40 (facts/x86-paging.md §3)
PAGE: Final = 4096

KCODE: Final = 0x1000
UCODE: Final = 0x2000
KSTACK: Final = 0x3000
GDT: Final = 0x4000
H_PML4: Final = 0x10000
H_PDPT: Final = 0x11000
H_PD: Final = 0x12000
H_PT: Final = 0x13000

TABLE_POOL: Final = (1 << 20, 2 << 20)
DATA_REGION: Final = (32 << 20, 64 << 20)

# Kernel code (CPL 0). Entry at KCODE: load PKRU, set the case's CR4, then jump to the stage in R15.
K_ENTRY: Final = KCODE + 0x00  # wrpkru (EAX=PKRU, ECX=EDX=0; needs CR4.PKE)        0F 01 EF
K_SET_CR4: Final = KCODE + 0x03  # mov cr4, r14 (drop PKE if the case has it clear)   41 0F 22 E6
K_DISPATCH: Final = KCODE + 0x07  # jmp r15                                           41 FF E7
K_LOAD: Final = KCODE + 0x10  # mov rdi, [rbx] ; int3                                 48 8B 3B CC
K_STORE: Final = KCODE + 0x20  # mov [rbx], rsi ; int3                                48 89 33 CC
K_FETCH: Final = KCODE + 0x30  # jmp rbx                                              FF E3
K_IRETQ: Final = KCODE + 0x40  # iretq to the user stage (frame at KSTACK_FRAME)      48 CF
K_UNTIL: Final = KCODE + 0x800  # emu_start's `until`: never reached (int3 filler)
U_LOAD: Final = UCODE + 0x00
U_STORE: Final = UCODE + 0x10
U_FETCH: Final = UCODE + 0x20
KSTACK_FRAME: Final = KSTACK + 0xF00
U_STACK: Final = UCODE + 0x800  # user RSP after iretq (never used)

ACCESS_LEN: Final = 3  # both `mov rdi,[rbx]` and `mov [rbx],rsi` are 3 bytes, then int3
TARGET_CODE_LEN: Final = 6  # at the test address: mov eax, imm32 ; int3

# GDT (SDM Vol. 3A §3.4.5, §5.2.1): 64-bit code (L=1) and data descriptors, accessed bit preset
# so loading them never writes memory.
GDT_ENTRIES: Final = (
    0,
    0x00209B0000000000,  # 0x08 kernel code, DPL 0
    0x0000930000000000,  # 0x10 kernel data, DPL 0
    0x0000F30000000000,  # 0x18 user data, DPL 3
    0x0020FB0000000000,  # 0x20 user code, DPL 3
)
USER_CS: Final = 0x20 | 3
USER_SS: Final = 0x18 | 3
GDT_LIMIT: Final = 8 * len(GDT_ENTRIES) - 1


def _code(at: int, base: int, code: bytes, image: bytearray) -> None:
    image[at - base : at - base + len(code)] = code


def kernel_code() -> bytes:
    """The harness's CPL-0 code page: entry, CR4 load, dispatch to the case's access stage, the
    accesses, iretq to user."""
    image = bytearray(b"\xcc" * PAGE)
    _code(K_ENTRY, KCODE, bytes.fromhex("0f01ef"), image)
    _code(K_SET_CR4, KCODE, bytes.fromhex("410f22e6"), image)
    _code(K_DISPATCH, KCODE, bytes.fromhex("41ffe7"), image)
    _code(K_LOAD, KCODE, bytes.fromhex("488b3bcc"), image)
    _code(K_STORE, KCODE, bytes.fromhex("488933cc"), image)
    _code(K_FETCH, KCODE, bytes.fromhex("ffe3"), image)
    _code(K_IRETQ, KCODE, bytes.fromhex("48cf"), image)
    return bytes(image)


def user_code() -> bytes:
    """The harness's CPL-3 code page: the user load, store and fetch stages, each followed by int3."""
    image = bytearray(b"\xcc" * PAGE)
    _code(U_LOAD, UCODE, bytes.fromhex("488b3bcc"), image)
    _code(U_STORE, UCODE, bytes.fromhex("488933cc"), image)
    _code(U_FETCH, UCODE, bytes.fromhex("ffe3"), image)
    return bytes(image)


def target_code(marker: int) -> bytes:
    """`mov eax, imm32 ; int3`: a fetch that succeeds leaves `marker` in EAX."""
    return b"\xb8" + struct.pack("<I", marker) + b"\xcc"


def _table(entries: dict[int, int]) -> bytes:
    words = [0] * 512
    for index, value in entries.items():
        words[index] = value
    return struct.pack("<512Q", *words)


HARNESS_TABLE_FLAGS: Final = int(PTE.P | PTE.RW | PTE.US | PTE.A)
_LEAF = int(PTE.P | PTE.RW | PTE.A | PTE.D)


def harness_frames() -> dict[int, bytes]:
    """Every harness frame except the kernel stack (which holds the per-case iretq frame)."""
    return {
        KCODE: kernel_code(),
        UCODE: user_code(),
        GDT: struct.pack(f"<{len(GDT_ENTRIES)}Q", *GDT_ENTRIES).ljust(PAGE, b"\0"),
        H_PML4: _table({0: H_PDPT | HARNESS_TABLE_FLAGS}),
        H_PDPT: _table({0: H_PD | HARNESS_TABLE_FLAGS}),
        H_PD: _table({0: H_PT | HARNESS_TABLE_FLAGS}),
        # Kernel pages U/S=0 (so SMEP/SMAP never trip on the harness), the user code page U/S=1.
        H_PT: _table(
            {
                KCODE >> 12: KCODE | _LEAF,
                UCODE >> 12: UCODE | _LEAF | int(PTE.US),
                KSTACK >> 12: KSTACK | _LEAF,
                GDT >> 12: GDT | _LEAF,
            }
        ),
    }


def root_harness_entry(la57: bool) -> int:
    """Slot 0 of a per-case root table: the harness PML4 (5-level) or PDPT (4-level)."""
    return (H_PML4 if la57 else H_PDPT) | HARNESS_TABLE_FLAGS


def iret_frame(rip: int, rflags: int) -> bytes:
    """The 64-bit IRET frame (SDM Vol. 3A §6.14.3): RIP, CS, RFLAGS, RSP, SS."""
    return struct.pack("<5Q", rip, USER_CS, rflags, U_STACK, USER_SS)
