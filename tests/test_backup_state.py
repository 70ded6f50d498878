"""The client state file: round trip, atomic save, and every kind of damage is a FormatError."""

from __future__ import annotations

import logging
import os
import stat
import struct
from pathlib import Path

import pytest

from boxbox import magic
from boxbox.backup import state as S
from boxbox.backup.records import RECORD, InodeMap, Records
from boxbox.backup.scan import Scanner
from boxbox.errors import FormatError


def sample_state(tmp_path: Path) -> S.ClientState:
    for d in ("a/b", "c", "d\xe9"):
        (tmp_path / "tree" / d).mkdir(parents=True)
    scanner = Scanner(tmp_path / "tree")
    for i, change in enumerate(scanner):
        change.store_id = 1000 + i
        change.done = True
    st = S.ClientState(account=0x1234, store_marker=0xDEADBEEF)
    home = st.location("home")
    home.records = scanner.records
    home.inodes.set(77, 1001)
    home.inodes.set(5, 1002)
    home.pending[b"a/b/young file"] = 1700000000.25
    home.pending[b"\xff"] = 1.0
    st.location("etc")
    return st


def test_round_trip(tmp_path: Path) -> None:
    st = sample_state(tmp_path)
    path = tmp_path / "client.state"
    S.save(path, st)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = S.load(path, account=0x1234)
    assert back == st
    assert back.location("home").records.find(b"a/b") is not None
    assert back.location("home").inodes.get(77) == 1001 and back.location("home").inodes.get(78) is None
    assert back.location("home").pending == {b"a/b/young file": 1700000000.25, b"\xff": 1.0}
    assert open(path, "rb").read(4) == magic.CLIENT_STATE


def test_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    st = S.load(tmp_path / "none", account=7)
    assert st == S.ClientState(account=7)


def _fix_digest(blob: bytes) -> bytes:
    """Re-seal a payload edited on purpose, so parsing reaches the part under test."""
    import hashlib
    head = list(S.HEADER.unpack_from(blob))
    payload = blob[S.HEADER.size:]
    head[6] = len(payload)
    head[7] = hashlib.blake2b(payload, digest_size=16).digest()
    return S.HEADER.pack(*head) + payload


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:10], "shorter than its 48-byte header"),
    (lambda b: b"XXXX" + b[4:], "magic b'XXXX'"),
    (lambda b: b[:4] + struct.pack("<H", 9) + b[6:], "version 9"),
    (lambda b: b[:-1], "payload of"),
    (lambda b: b + b"\0", "payload of"),
    (lambda b: b[:60] + bytes([b[60] ^ 1]) + b[61:], "checksum mismatch"),
    (lambda b: _fix_digest(b[:-3]), "needs"),
    (lambda b: _fix_digest(b + b"junk"), "bytes after"),
])
def test_damaged_file_is_a_format_error(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    blob = S.encode(sample_state(tmp_path))
    with pytest.raises(FormatError, match=message):
        S.decode(damage(blob))


def test_other_account_is_a_mismatch(tmp_path: Path) -> None:
    blob = S.encode(sample_state(tmp_path))
    with pytest.raises(FormatError, match="account 1234, expected 99"):
        S.decode(blob, account=0x99)


def test_bad_records_are_format_errors() -> None:
    recs = Records()
    recs.append(b"", 1)
    recs.append(b"x", 2)
    recs.close(1)
    recs.close(0)
    good = recs.to_bytes()
    assert Records.parse(good, 2) == recs
    with pytest.raises(FormatError, match="root record"):
        Records.parse(good, 1)
    claims_more = bytearray(good)
    struct.pack_into("<I", claims_more, 32, 2)
    with pytest.raises(FormatError, match="record 2: 0 bytes left"):
        Records.parse(bytes(claims_more), 3)
    bad_name = bytearray(good)
    bad_name[-1:] = b"/"
    with pytest.raises(FormatError, match="bad name"):
        Records.parse(bytes(bad_name), 2)
    overrun = bytearray(good)
    struct.pack_into("<I", overrun, RECORD.size + 32, 5)
    with pytest.raises(FormatError, match="overrun"):
        Records.parse(bytes(overrun), 2)


def test_bad_inode_map_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="strictly increasing"):
        InodeMap.parse(struct.pack("<4Q", 5, 1, 5, 2), 2)
    with pytest.raises(FormatError, match="store id 0"):
        InodeMap.parse(struct.pack("<2Q", 5, 0), 1)
    with pytest.raises(FormatError, match="expected 32"):
        InodeMap.parse(b"\0" * 16, 2)


def test_load_or_rebuild_logs_one_line_and_starts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "client.state"
    path.write_bytes(b"BXCS garbage")
    with caplog.at_level(logging.WARNING, logger="boxbox.backup.state"):
        st = S.load_or_rebuild(path, account=3)
    assert st == S.ClientState(account=3)
    assert len(caplog.records) == 1
    assert "discarding the client state" in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()


def test_load_or_rebuild_keeps_a_good_file(tmp_path: Path) -> None:
    st = sample_state(tmp_path)
    S.save(tmp_path / "s", st)
    assert S.load_or_rebuild(tmp_path / "s", account=0x1234) == st


def test_forget_store_drops_ids_but_keeps_the_tree(tmp_path: Path) -> None:
    st = sample_state(tmp_path)
    st.forget_store()
    home = st.location("home")
    assert st.store_marker == 0 and len(home.inodes) == 0
    assert all(home.records.get(i).store_id == 0 for i in range(len(home.records)))
    assert home.records.find(b"a/b") is not None
    # forgotten ids make every directory a change again
    scanner = Scanner(tmp_path / "tree", previous=home.records)
    assert len(list(scanner)) == len(home.records)


def test_inode_map_changes_and_compaction() -> None:
    m = InodeMap()
    for i in range(100):
        m.set(i * 7, i + 1)
    m.compact()
    m.discard(14)
    m.set(21, 999)
    assert m.get(14) is None and m.get(21) == 999 and m.get(7) == 2
    assert len(m) == 99 and m.get(21) == 999 and m.get(14) is None
    assert InodeMap.parse(m.to_bytes(), 99) == m
