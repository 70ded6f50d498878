"""Directory objects: clear fields the store edits without keys, sealed parts it cannot touch."""

from __future__ import annotations

import dataclasses

import pytest

from boxbox.crypto.keys import Keys
from boxbox.errors import FormatError, IntegrityError
from boxbox.objects import directory as do
from boxbox.objects.attributes import Attributes, FileType

KEYS = Keys.from_master(bytes(range(256)) * 4)
DIR_ID, PARENT = 0x55, 0x1
FILE_ATTRS = Attributes(FileType.REGULAR, 0o644, 1000, 100, 1_600_000_000_000_000_001, 5, "bob", "users")
DIR_ATTRS = Attributes(FileType.DIRECTORY, 0o755, 0, 0, 1_500_000_000_000_000_000, 7, "root", "root")


def make_dir() -> do.Directory:
    d = do.Directory(DIR_ID, PARENT, do.seal_directory_attributes(KEYS, PARENT, b"docs", DIR_ATTRS))
    d.entries.append(do.make_entry(KEYS, DIR_ID, b"a.txt", 0x100, do.FILE, FILE_ATTRS, size_blocks=3))
    d.entries.append(do.make_entry(KEYS, DIR_ID, "sub dir \u00e9".encode(), 0x101, do.DIR, None))
    d.entries.append(do.make_entry(KEYS, DIR_ID, b"\xff\xfe" * 127 + b"z", 0x102, do.FILE | do.DELETED,
                                   FILE_ATTRS._replace(mode=0o600)))
    return d


def test_roundtrip_and_open():
    d = make_dir()
    data = d.serialize()
    back = do.Directory.parse(data)
    assert back == d and back.serialize() == data
    assert do.open_directory_attributes(KEYS, back, b"docs", DIR_ID) == DIR_ATTRS
    root = do.Directory(1, 0, do.seal_directory_attributes(KEYS, 0, b"", DIR_ATTRS))
    assert do.open_directory_attributes(KEYS, do.Directory.parse(root.serialize()), b"") == DIR_ATTRS
    assert do.open_directory_attributes(KEYS, do.Directory(2, 1), b"x") is None
    opened = [do.open_entry(KEYS, DIR_ID, e) for e in back.entries]
    assert opened[0] == (b"a.txt", FILE_ATTRS)
    assert opened[1] == ("sub dir \u00e9".encode(), None)
    assert opened[2][0] == b"\xff\xfe" * 127 + b"z"
    assert back.entries[0].mtime_ns == FILE_ATTRS.mtime_ns and back.entries[0].size_blocks == 3


def test_store_finds_and_edits_without_keys():
    d = do.Directory.parse(make_dir().serialize())
    sealed = make_dir().entries[0].sealed_name  # what a client sends in a request
    entry = d.find(sealed)
    assert entry is not None and entry.object_id == 0x100
    assert d.find(d.entries[2].sealed_name) is None  # deleted: not current
    assert d.find(d.entries[2].sealed_name, exclude=0) is d.entries[2]
    # a new version: the old entry becomes OLD and the two are linked; sizes updated
    entry.flags |= do.OLD
    entry.newer = 0x200
    new = dataclasses.replace(entry, object_id=0x200, flags=do.FILE, older=0x100, newer=0, size_blocks=9)
    d.entries.append(new)
    back = do.Directory.parse(d.serialize())
    assert back.find(sealed).object_id == 0x200
    assert back.entry(0x100).flags == do.FILE | do.OLD and back.entry(0x100).newer == 0x200
    assert do.open_entry(KEYS, DIR_ID, back.entry(0x200)) == (b"a.txt", FILE_ATTRS)  # still opens


def test_sealed_parts_bound_to_their_place():
    d = make_dir()
    a, _, c = d.entries
    # attributes swapped between entries
    swapped = dataclasses.replace(a, sealed_attributes=c.sealed_attributes, attr_hash=c.attr_hash)
    with pytest.raises(IntegrityError, match="directory entry 0x100 attributes"):
        do.open_entry(KEYS, DIR_ID, swapped)
    # an entry moved to another directory by the store
    with pytest.raises(IntegrityError, match="name"):
        do.open_entry(KEYS, 0x56, a)
    # clear mtime or attribute hash changed
    with pytest.raises(IntegrityError, match="mtime"):
        do.open_entry(KEYS, DIR_ID, dataclasses.replace(a, mtime_ns=a.mtime_ns + 1))
    with pytest.raises(IntegrityError, match="attribute hash"):
        do.open_entry(KEYS, DIR_ID, dataclasses.replace(a, attr_hash=c.attr_hash))
    # directory attributes under another parent or name, or another directory sent instead
    with pytest.raises(IntegrityError, match="directory attributes"):
        do.open_directory_attributes(KEYS, dataclasses.replace(d, container_id=0x2), b"docs")
    with pytest.raises(IntegrityError, match="directory attributes"):
        do.open_directory_attributes(KEYS, d, b"other")
    with pytest.raises(IntegrityError, match="the store sent directory 0x55"):
        do.open_directory_attributes(KEYS, d, b"docs", expected_id=0x66)
    # other keys
    with pytest.raises(IntegrityError):
        do.open_entry(Keys.from_master(bytes(1024)), DIR_ID, a)


def test_every_bit_flip_in_sealed_parts_is_integrity_error():
    d = make_dir()
    data = d.serialize()
    spans = [(do.HEADER.size, do.HEADER.size + len(d.sealed_attributes))]
    pos = spans[0][1]
    for e in d.entries:
        pos += do.ENTRY.size
        spans.append((pos, pos + len(e.sealed_name) + len(e.sealed_attributes)))
        pos = spans[-1][1]
    for start, end in spans:
        for i in range(start, end):
            bad = bytearray(data)
            bad[i] ^= 0x10
            back = do.Directory.parse(bytes(bad))
            with pytest.raises(IntegrityError):
                do.open_directory_attributes(KEYS, back, b"docs")
                for e in back.entries:
                    do.open_entry(KEYS, DIR_ID, e)


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than the 32-byte header"),
    (b"BXFO" + bytes(28), "not a directory object"),
    (do.MAGIC + b"\x02" + bytes(27), "version 2"),
    (do.MAGIC + b"\x01\x00\x01\x00" + bytes(24), "reserved"),
    (do.HEADER.pack(do.MAGIC, 1, 1, 0, 0xFFFFFFFF, 0), "declares 4294967295 entries"),
    (do.HEADER.pack(do.MAGIC, 1, 1, 0, 0, 5), "directory attributes: sealed length 5"),
    (do.HEADER.pack(do.MAGIC, 1, 1, 0, 0, 0) + b"x", "1 bytes after its last entry"),
    (do.HEADER.pack(do.MAGIC, 1, 1, 0, 1, 0) + do.ENTRY.pack(1, 3, 32, 0, 0, 0, bytes(8), 0, 0) + bytes(32),
     "invalid flags 0x3"),
    (do.HEADER.pack(do.MAGIC, 1, 1, 0, 1, 0) + do.ENTRY.pack(1, 0x11, 32, 0, 0, 0, bytes(8), 0, 0) + bytes(32),
     "invalid flags 0x11"),
    (do.HEADER.pack(do.MAGIC, 1, 1, 0, 1, 0) + do.ENTRY.pack(1, 1, 16, 0, 0, 0, bytes(8), 0, 0) + bytes(16),
     "sealed name is 16 bytes"),
    (do.HEADER.pack(do.MAGIC, 1, 1, 0, 1, 0) + do.ENTRY.pack(1, 1, 32, 0, 0, 0, bytes(8), 0, 0) + bytes(31),
     "needs 32 bytes"),
])
def test_malformed_directories(data, message):
    with pytest.raises(FormatError, match=message):
        do.Directory.parse(data)
