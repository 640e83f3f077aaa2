"""Linux's names for page-table bits and its composite protections (arch/x86/include/asm/pgtable_types.h).

The hardware layer (`kaiser.x86.bits`) names each bit as the SDM does; what Linux calls them and
which combinations it writes live here, the one home of Linux's table flags. The software bits
are the ones the SDM leaves to the OS (ignored by the walk: Vol. 3A Tables 4-15..4-20, bits 11:9
and 58:52, the latter below the protection key when CR4.PKE); Linux gives them these meanings:

* `_PAGE_BIT_SOFTW1` (bit 9, `PTE.SW1`): `_PAGE_SPECIAL` / `_PAGE_CPA_TEST`;
* `_PAGE_BIT_SOFTW2` (bit 10, `PTE.SW2`): `_PAGE_UFFD_WP`;
* `_PAGE_BIT_SOFTW3` (bit 11, `PTE.SW3`): `_PAGE_SOFT_DIRTY` / `_PAGE_KERNEL_4K`;
* `_PAGE_BIT_SOFTW4` (bit 57, `PTE.SW4`): `_PAGE_DEVMAP` (4.x..6.x);
* `_PAGE_BIT_SOFTW5` (bit 58, `PTE.SW5`): `_PAGE_SAVED_DIRTY` on a leaf, `_PAGE_NOPTISHADOW` on a
  top-level entry (6.13+; `PAGE_NOPTISHADOW` below, which `kaiser.linux.pti` tests).
"""

from __future__ import annotations

from typing import Final

from kaiser.x86.bits import ADDR_MASK_52, MASK64, PTE
from kaiser.x86.geometry import PagingMode

# _PAGE_NOPTISHADOW = _PAGE_BIT_SOFTW5, bit 58 on x86-64 (pgtable_types.h, mainline d0ceea662d45,
# 6.13): a top-level entry that carries it is not mirrored into the user PGD (kernel_ident_mapping_init()
# sets it on the identity map of a kexec PGD). The Oct 2025 proposal to move it to bit 9 ("x86/mm:
# Move _PAGE_BIT_NOPTISHADOW from bit 58 to bit 9") was not taken: a 2026 tree still defines it as
# SOFTW5. The CPU ignores bit 58 in a PML4E (SDM Vol. 3A Table 4-15).
PAGE_NOPTISHADOW: Final = int(PTE.SW5)

# Linux's names of the table levels, top first (pgtable_types.h). With 4-level paging the p4d level
# is folded into the pgd (pgtable-nop4d.h): the PML4 is Linux's pgd there, its p4d under LA57.
LEVEL_NAMES: Final = ("pgd", "p4d", "pud", "pmd", "pte")


def level_names(mode: PagingMode) -> tuple[str, ...]:
    """Linux's name of each level of `mode`, top first: `pgd pud pmd pte` or `pgd p4d pud pmd pte`."""
    return LEVEL_NAMES[:1] + LEVEL_NAMES[len(LEVEL_NAMES) - len(mode.levels) + 1 :]


PTE_PFN_MASK: Final = ADDR_MASK_52  # bits 51:12, the frame of an entry
PTE_FLAGS_MASK: Final = MASK64 & ~PTE_PFN_MASK  # every other bit: what ptdump compares (§6.2)

# Composite protections.
KERNPG_TABLE: Final = PTE.P | PTE.RW | PTE.A | PTE.D  # _KERNPG_TABLE: every kernel non-leaf entry
PAGE_TABLE: Final = KERNPG_TABLE | PTE.US  # _PAGE_TABLE: user non-leaf entry (pgalloc.h)
PAGE_KERNEL: Final = PTE.P | PTE.RW | PTE.A | PTE.D | PTE.G | PTE.NX  # __PAGE_KERNEL
PAGE_KERNEL_RO: Final = PAGE_KERNEL & ~PTE.RW
PAGE_KERNEL_RX: Final = PAGE_KERNEL & ~(PTE.RW | PTE.NX)
PAGE_KERNEL_VVAR: Final = int(PAGE_KERNEL_RO | PTE.US)  # __PAGE_KERNEL_VVAR: the emulated vsyscall page (§3.3)
# The non-leaf flags of the tables Linux allocates, (user half, kernel half): pmd_populate and
# friends write _PAGE_TABLE below user addresses and _KERNPG_TABLE below kernel ones (pgalloc.h).
TABLE_FLAGS: Final = (int(PAGE_TABLE), int(KERNPG_TABLE))

__all__ = [
    "LEVEL_NAMES",
    "KERNPG_TABLE",
    "PAGE_KERNEL",
    "PAGE_KERNEL_RO",
    "PAGE_KERNEL_RX",
    "PAGE_KERNEL_VVAR",
    "PAGE_NOPTISHADOW",
    "PAGE_TABLE",
    "PTE_FLAGS_MASK",
    "PTE_PFN_MASK",
    "TABLE_FLAGS",
    "level_names",
]
