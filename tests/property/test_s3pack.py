"""Properties of the S3 pack format: every member reads back as stored, and damage of any kind
(a flipped byte anywhere, a cut, bytes added) is a FormatError or IntegrityError, never a wrong
member."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from boxbox.errors import FormatError, IntegrityError, ProgrammingError
from boxbox.store.s3pack import (
    ENTRY, FOOTER, TRAILER, build, index_start, is_id_name, is_pack_name, pack_name, parse_index, read_member, seal,
)

payloads = st.dictionaries(st.integers(0, 2**64 - 1), st.binary(max_size=300), min_size=1, max_size=12)


def sealed(members: dict[int, bytes]) -> list[tuple[int, bytes]]:
    return [(i, seal(p)) for i, p in members.items()]


@given(payloads)
@example({0: b""})
@example({2**64 - 1: b"x" * 300, 0: b"", 5: b"abc"})
def test_every_member_reads_back(members: dict[int, bytes]) -> None:
    pack = build(sealed(members))
    assert index_start(pack[-FOOTER.size:], len(pack), "p") == sum(len(p) + TRAILER.size for p in members.values())
    index = parse_index(pack, len(pack), "p")
    assert sorted(index) == sorted(members)
    for object_id, payload in members.items():
        e = index[object_id]
        assert pack[e.offset:e.offset + e.length] == seal(payload)  # byte for byte the standalone object
        assert read_member(pack, object_id, "p") == payload
    absent = next(i for i in range(len(members) + 1) if i not in members)
    assert read_member(pack, absent, "p") is None
    # the index alone, from the pack's tail, is enough
    tail = pack[-(len(pack) - index_start(pack[-FOOTER.size:], len(pack), "p")):]
    assert parse_index(tail, len(pack), "p") == index


def read_all(pack: bytes, ids: list[int]) -> dict[int, bytes | None]:
    return {i: read_member(pack, i, "p") for i in ids}


@given(payloads, st.data())
@example({7: b"hello"}, None)
def test_a_flipped_byte_is_an_error_never_a_wrong_member(members: dict[int, bytes], data: st.DataObject | None) -> None:
    pack = build(sealed(members))
    positions = [len(pack) - 1] if data is None else [data.draw(st.integers(0, len(pack) - 1))]
    for at in positions:
        bit = 1 if data is None else data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
        bad = bytearray(pack)
        bad[at] ^= bit
        for object_id, payload in members.items():
            try:
                got = read_member(bytes(bad), object_id, "p")
            except (FormatError, IntegrityError):
                continue
            # a flip inside another member's bytes leaves this one readable, and right
            assert got == payload


@given(payloads, st.data())
def test_cut_or_extended_packs_are_errors(members: dict[int, bytes], data: st.DataObject) -> None:
    pack = build(sealed(members))
    cut = data.draw(st.integers(0, len(pack) - 1))
    skip = data.draw(st.integers(1, len(pack)))
    extra = data.draw(st.binary(min_size=1, max_size=40))
    for bad in (pack[:cut], pack[skip:], pack + extra, extra + pack):
        for object_id in members:
            with pytest.raises((FormatError, IntegrityError)):
                read_member(bad, object_id, "p")


@given(payloads, st.data())
def test_a_short_tail_is_a_format_error(members: dict[int, bytes], data: st.DataObject) -> None:
    pack = build(sealed(members))
    need = len(pack) - index_start(pack[-FOOTER.size:], len(pack), "p")
    short = data.draw(st.integers(0, need - 1))
    with pytest.raises(FormatError):
        parse_index(pack[len(pack) - short:], len(pack), "p")


@given(st.binary(max_size=200))
def test_garbage_is_only_a_format_or_integrity_error(blob: bytes) -> None:
    try:
        read_member(blob, 0, "p")
    except (FormatError, IntegrityError):
        pass


def test_names_never_collide() -> None:
    assert is_id_name("0123456789abcdef") and not is_id_name("0123456789ABCDEF") and not is_id_name("info")
    assert is_pack_name(pack_name(0xfeed)) and not is_id_name(pack_name(0xfeed))
    assert not is_pack_name("pack~0123") and ENTRY.size == 24


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ProgrammingError, match="given twice"):
        build([(1, seal(b"a")), (1, seal(b"b"))])
