"""Bit layouts: encoders reject out-of-range fields, decoders round-trip, describe() names bits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.x86.bits import (
    ADDR_MASK_52,
    CR0,
    CR3_NOFLUSH,
    CR4,
    EFER,
    PFEC,
    PKEY_MASK,
    PTE,
    RFLAGS,
    BitsError,
    Cr3Fields,
    cr3_pcid,
    cr3_table,
    decode_cr3,
    decode_entry,
    describe,
    describe_entry,
    entry_phys,
    make_cr3,
    make_entry,
    pkey_of,
)

FAST = settings(max_examples=200, derandomize=True)
K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30


# ---- the architectural bit positions (SDM Vol. 3A) --------------------------------------------
@pytest.mark.parametrize(
    "flag, bit",
    [
        (PTE.P, 0),
        (PTE.RW, 1),
        (PTE.US, 2),
        (PTE.PWT, 3),
        (PTE.PCD, 4),
        (PTE.A, 5),
        (PTE.D, 6),
        (PTE.PS, 7),
        (PTE.G, 8),
        (PTE.PAT_LARGE, 12),
        (PTE.PKEY0, 59),
        (PTE.NX, 63),
        (CR0.PE, 0),
        (CR0.WP, 16),
        (CR0.PG, 31),
        (CR4.PAE, 5),
        (CR4.PGE, 7),
        (CR4.LA57, 12),
        (CR4.PCIDE, 17),
        (CR4.SMEP, 20),
        (CR4.SMAP, 21),
        (CR4.PKE, 22),
        (EFER.LME, 8),
        (EFER.LMA, 10),
        (EFER.NXE, 11),
        (RFLAGS.AC, 18),
        (PFEC.P, 0),
        (PFEC.WR, 1),
        (PFEC.US, 2),
        (PFEC.RSVD, 3),
        (PFEC.ID, 4),
        (PFEC.PK, 5),
    ],
)
def test_bit_positions(flag: int, bit: int) -> None:
    assert int(flag) == 1 << bit


def test_cr3_constants() -> None:
    assert CR3_NOFLUSH == 1 << 63
    assert make_cr3(0, pcide=True, pcid=0xFFF) == 0xFFF
    assert make_cr3(0, pwt=True, pcd=True) == 0b11000


# ---- make_entry ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, what",
    [
        (dict(phys=0x1001, flags=1), "0x1001"),
        (dict(phys=1 << 46, flags=1, maxphyaddr=46), "physical address"),
        (dict(phys=-K4, flags=1), "physical address"),
        (dict(phys=K4, flags=1, maxphyaddr=53), "maxphyaddr=53"),
        (dict(phys=K4, flags=1, maxphyaddr=0), "maxphyaddr=0"),
        (dict(phys=K4, flags=1, pkey=16), "pkey"),
        (dict(phys=K4, flags=1, pkey=-1), "pkey"),
        (dict(phys=K4, flags=1 << 12), "0x1000"),  # an address bit in the flags of a 4 KiB entry
        (dict(phys=K4, flags=1 << 40), "overlap"),
        (dict(phys=K4, flags=1 << 60), "overlap"),  # key bits go through pkey=
        (dict(phys=K4, flags=1 << 64), "flags"),
        (dict(phys=K4, flags=-1), "flags"),
        (dict(phys=M2 + K4, flags=0x81, align=M2), "0x201000"),
        (dict(phys=M2, flags=0x81, align=3 * K4), "alignment"),
        (dict(phys=0, flags=0x81, align=0), "alignment"),
    ],
)
def test_make_entry_rejects_out_of_range_fields(kwargs: dict, what: str) -> None:
    with pytest.raises(BitsError, match=what):
        make_entry(**kwargs)


def test_make_entry_allows_pat_on_large_pages_only() -> None:
    assert make_entry(M2, PTE.P | PTE.PS | PTE.PAT_LARGE, align=M2) == M2 | 0x1081
    assert make_entry(G1, PTE.P | PTE.PS | PTE.PAT_LARGE, align=G1) == G1 | 0x1081


@FAST
@given(
    st.sampled_from([K4, M2, G1]),
    st.integers(0, (1 << 52) - 1),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, 15),
)
def test_entry_round_trip(page_size: int, phys: int, flags: int, pkey: int) -> None:
    phys &= ~(page_size - 1)
    allowed = ~(ADDR_MASK_52 | PKEY_MASK) | (int(PTE.PAT_LARGE) if page_size > K4 else 0)
    flags &= allowed
    entry = make_entry(phys, flags, pkey=pkey, align=page_size)
    assert entry_phys(entry, page_size) == phys and pkey_of(entry) == pkey
    fields = decode_entry(entry, page_size)
    assert (fields.phys, fields.flags, fields.pkey) == (phys, flags, pkey)
    assert make_entry(fields.phys, fields.flags, pkey=fields.pkey, align=page_size) == entry


# ---- CR3 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, what",
    [
        (dict(pgd_phys=0x1800), "0x1800"),
        (dict(pgd_phys=1 << 52), "CR3 table address"),
        (dict(pgd_phys=1 << 46, maxphyaddr=46), "CR3 table address"),
        (dict(pgd_phys=K4, pcid=1), "PCIDE"),  # a PCID without PCIDE
        (dict(pgd_phys=K4, noflush=True), "PCIDE"),
        (dict(pgd_phys=K4, pcide=True, pcid=0x1000), "PCID"),
        (dict(pgd_phys=K4, pcide=True, pcid=-1), "PCID"),
        (dict(pgd_phys=K4, pcide=True, pwt=True), "PWT"),
        (dict(pgd_phys=K4, pcide=True, pcd=True), "PCD"),
    ],
)
def test_make_cr3_rejects_out_of_range_fields(kwargs: dict, what: str) -> None:
    with pytest.raises(BitsError, match=what):
        make_cr3(**kwargs)


@FAST
@given(st.integers(0, (1 << 40) - 1), st.integers(0, 0xFFF), st.booleans(), st.booleans(), st.booleans())
def test_cr3_round_trip(pfn: int, pcid: int, noflush: bool, pwt: bool, pcd: bool) -> None:
    table = pfn * K4
    with_pcid = make_cr3(table, pcid=pcid, noflush=noflush, pcide=True)
    fields = decode_cr3(with_pcid, pcide=True)
    assert fields == Cr3Fields(table, True, pcid=pcid, noflush=noflush)
    assert fields.encode() == with_pcid
    assert cr3_table(with_pcid) == table and cr3_pcid(with_pcid, True) == pcid
    plain = make_cr3(table, pwt=pwt, pcd=pcd)
    fields = decode_cr3(plain, pcide=False)
    assert fields == Cr3Fields(table, False, pwt=pwt, pcd=pcd) and fields.encode() == plain
    assert cr3_pcid(plain, False) == 0


def test_decode_cr3_rejects_reserved_bits_and_describes() -> None:
    with pytest.raises(BitsError, match="reserved"):
        decode_cr3(1 << 55, pcide=True)
    with pytest.raises(BitsError, match="NOFLUSH"):
        decode_cr3(CR3_NOFLUSH | K4, pcide=False)
    assert decode_cr3(0x5000 | 7 | CR3_NOFLUSH, pcide=True).describe() == "table=0x5000 pcid=0x7 NOFLUSH"
    assert decode_cr3(0x5000 | 0x18, pcide=False).describe() == "table=0x5000 PWT PCD"


# ---- describe ----------------------------------------------------------------------------------
def test_describe_names_bits() -> None:
    assert describe(PFEC, 0b10111) == "P|WR|US|ID"
    assert describe(PFEC, 0b100001) == "P|PK"
    assert describe(PFEC, 0) == "0"
    assert describe(CR0, CR0.PE | CR0.WP | CR0.PG) == "PE|WP|PG"
    assert describe(CR4, CR4.PAE | CR4.PCIDE | CR4.LA57) == "PAE|LA57|PCIDE"
    assert describe(EFER, 0xD01) == "SCE|LME|LMA|NXE"
    assert describe(RFLAGS, 0x40202) == "IF|AC|0x2"  # unknown bits as hex
    assert describe(PTE, 0x8000000000000067) == "P|RW|US|A|D|NX"
    assert describe(PTE, 0x12345003) == "P|RW|PAT_LARGE|addr=0x12344000"  # level-blind: see describe_entry
    with pytest.raises(BitsError):
        describe(PTE, 1 << 64)


def test_describe_entry_names_pat_where_it_lives() -> None:
    pte = make_entry(0x1234000, PTE.P | PTE.RW | PTE.PS, pkey=3)  # bit 7 of a PTE is PAT
    assert describe_entry(pte) == "P|RW|PS phys=0x1234000 pkey=3"
    assert describe_entry(pte, K4) == "P|RW|PAT phys=0x1234000 pkey=3"
    large = make_entry(M2, PTE.P | PTE.PS | PTE.PAT_LARGE | PTE.NX, align=M2)
    assert describe_entry(large, M2) == "P|PS|NX|PAT phys=0x200000"
    assert describe_entry(0) == "0 phys=0x0"


@FAST
@given(st.integers(0, (1 << 64) - 1))
def test_describe_accounts_for_every_bit(value: int) -> None:
    text = describe(PTE, value)
    rebuilt = 0
    for part in text.split("|"):
        if part.startswith("addr="):
            rebuilt |= int(part[5:], 16)
        elif part.startswith("0x"):
            rebuilt |= int(part, 16)
        elif part != "0":
            rebuilt |= int(PTE[part])
    assert rebuilt == value
