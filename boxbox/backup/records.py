"""Directory records and the inode map: the client's memory of a location, packed, not per file.

A Python object per directory would cost ~300 bytes; a packed record costs 38 bytes plus the
name plus a 4-byte offset, so a million files in 100,000 directories fit in ~7 MB
(PERFORMANCE.md: packed struct ~38 B vs tuple ~241 B per item).

Records are kept in pre-order, each directory before its descendants, so a whole subtree is
one contiguous slice: a moved or unreadable directory keeps its old subtree by copying bytes.

# Record layout (little-endian), repeated; record i starts at offsets[i]:
#    0  16s  checksum  blake2b-128 of the directory's sorted listing; all zeros: not known in sync
#   16  Q    store_id  the directory object's id on the store; 0 until known
#   24  Q    inode     st_ino of the directory (finds a moved directory)
#   32  I    subtree   number of descendant directories (the next sibling is subtree + 1 records on)
#   36  H    name_len  followed by name_len bytes of name (b"" for the location root)
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from typing import NamedTuple

from boxbox.errors import FormatError

# CPython's own BLAKE2: `hashlib` would also load OpenSSL's libcrypto (~4 MiB RSS, ~4 ms), which a run
# that finds nothing changed has no other use for.
try:
    from _blake2 import blake2b
except ImportError:  # an interpreter built without it
    from hashlib import blake2b

RECORD = struct.Struct("<16sQQIH")
assert RECORD.size == 38
NO_CHECKSUM = bytes(16)
MAX_NAME = 0xFFFF


def digest16(data: bytes | memoryview) -> bytes:
    """BLAKE2b-128: a directory's checksum (scan.py) and the state file's digest (state.py)."""
    return blake2b(data, digest_size=16).digest()


_STORE_ID = _INODE = struct.Struct("<Q")
_SUBTREE = struct.Struct("<I")


class Record(NamedTuple):
    checksum: bytes
    store_id: int
    inode: int
    subtree: int
    name: bytes


class Records:
    """The directory records of one location in pre-order (index 0 is the location root)."""

    __slots__ = ("data", "offsets", "_inode_keys", "_inode_pos")

    def __init__(self) -> None:
        self.data = bytearray()
        self.offsets = array("I")
        self._inode_keys: array[int] | None = None  # sorted inodes, built on the first by_inode()
        self._inode_pos = array("I")

    def __len__(self) -> int:
        return len(self.offsets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Records) and self.data == other.data

    def append(self, name: bytes, inode: int, store_id: int = 0, checksum: bytes = NO_CHECKSUM) -> int:
        """Add a directory (its subtree count is set by `close` once its descendants are in)."""
        if len(name) > MAX_NAME:
            raise FormatError(f"directory name of {len(name)} bytes, at most {MAX_NAME}")
        index = len(self.offsets)
        self.offsets.append(len(self.data))
        self.data += RECORD.pack(checksum, store_id, inode, 0, len(name))
        self.data += name
        return index

    def close(self, index: int) -> None:
        """Set `index`'s subtree count to the records appended after it."""
        _SUBTREE.pack_into(self.data, self.offsets[index] + 32, len(self.offsets) - index - 1)

    def copy_subtree(self, other: Records, index: int, name: bytes) -> int:
        """Append `other`'s record `index` under a new `name`, with all its descendants unchanged."""
        rec = other.get(index)
        top = self.append(name, rec.inode, rec.store_id, rec.checksum)
        if rec.subtree:
            start = other.offsets[index + 1]
            end = other.offsets[index + rec.subtree + 1] if index + rec.subtree + 1 < len(other) else len(other.data)
            shift = len(self.data) - start
            self.offsets.extend(o + shift for o in other.offsets[index + 1:index + rec.subtree + 1])
            self.data += other.data[start:end]
        self.close(top)
        return top

    def get(self, index: int) -> Record:
        off = self.offsets[index]
        checksum, store_id, inode, subtree, name_len = RECORD.unpack_from(self.data, off)
        start = off + RECORD.size
        return Record(checksum, store_id, inode, subtree, bytes(self.data[start:start + name_len]))

    def name(self, index: int) -> bytes:
        off = self.offsets[index]
        name_len = self.data[off + 36] | (self.data[off + 37] << 8)
        return bytes(self.data[off + RECORD.size:off + RECORD.size + name_len])

    def store_id(self, index: int) -> int:
        return _STORE_ID.unpack_from(self.data, self.offsets[index] + 16)[0]

    def set_store_id(self, index: int, store_id: int) -> None:
        _STORE_ID.pack_into(self.data, self.offsets[index] + 16, store_id)

    def set_checksum(self, index: int, checksum: bytes) -> None:
        off = self.offsets[index]
        self.data[off:off + 16] = checksum

    def children(self, index: int) -> Iterator[int]:
        """Indices of the direct subdirectories of `index`."""
        end = index + self.get(index).subtree
        child = index + 1
        while child <= end:
            yield child
            child += _SUBTREE.unpack_from(self.data, self.offsets[child] + 32)[0] + 1

    def find(self, path: bytes) -> int | None:
        """Index of the directory at `path` inside the location (b'' is the root)."""
        if not len(self):
            return None
        index = 0
        for part in filter(None, path.split(b"/")):
            index = next((c for c in self.children(index) if self.name(c) == part), -1)
            if index < 0:
                return None
        return index

    def paths(self) -> Iterator[tuple[int, bytes]]:
        """(index, path) of every directory, in pre-order."""
        stack: list[tuple[int, bytes]] = []  # (last index of the subtree, path)
        for index in range(len(self)):
            rec = self.get(index)
            while stack and stack[-1][0] < index:
                stack.pop()
            path = rec.name if not stack or not stack[-1][1] else stack[-1][1] + b"/" + rec.name
            yield index, path
            stack.append((index + rec.subtree, path))

    def by_inode(self, inode: int) -> int | None:
        """Index of a directory with this inode, in finished records (sorted arrays, 12 B a directory)."""
        if self._inode_keys is None:
            inodes = [_INODE.unpack_from(self.data, off + 24)[0] for off in self.offsets]
            order = sorted(range(len(inodes)), key=inodes.__getitem__)
            self._inode_keys = array("Q", [inodes[i] for i in order])
            self._inode_pos = array("I", order)
        i = bisect_left(self._inode_keys, inode)
        if i < len(self._inode_keys) and self._inode_keys[i] == inode:
            return self._inode_pos[i]
        return None

    def store_id_by_inode(self, inode: int) -> int | None:
        """The store id of the directory that had this inode: finds a moved directory."""
        index = self.by_inode(inode)
        return (self.store_id(index) or None) if index is not None else None

    def forget_store(self) -> None:
        """Zero every store id and checksum: the store no longer matches (other store, lost marker)."""
        for off in self.offsets:
            self.data[off:off + 24] = bytes(24)

    def to_bytes(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def parse(cls, blob: bytes | memoryview, count: int) -> Records:
        """Records from a state file, checked record by record; anything wrong is a FormatError."""
        recs = cls()
        view = memoryview(blob)
        ends: list[int] = []  # last index of each open subtree
        pos = 0
        for index in range(count):
            if len(view) - pos < RECORD.size:
                raise FormatError(f"directory record {index}: {len(view) - pos} bytes left, need {RECORD.size}")
            _, _, _, subtree, name_len = RECORD.unpack_from(view, pos)
            start = pos + RECORD.size
            if len(view) - start < name_len:
                raise FormatError(f"directory record {index}: name of {name_len} bytes, {len(view) - start} left")
            name = bytes(view[start:start + name_len])
            while ends and ends[-1] < index:
                ends.pop()
            if index == 0:
                if name_len or subtree != count - 1:
                    raise FormatError(f"root record: name of {name_len} bytes and {subtree} descendants, "
                                      f"expected none and {count - 1}")
            elif not name_len or b"/" in name or b"\0" in name or name in (b".", b".."):
                raise FormatError(f"directory record {index}: bad name")
            elif index + subtree > ends[-1]:
                raise FormatError(f"directory record {index}: {subtree} descendants overrun its parent")
            recs.offsets.append(pos)
            ends.append(index + subtree)
            pos = start + name_len
        if pos != len(view):
            raise FormatError(f"directory records: {len(view) - pos} bytes after {count} records")
        recs.data = bytearray(view)
        return recs


class InodeMap:
    """inode -> store id of tracked files: sorted packed arrays plus recent changes.

    Lookups bisect two `array('Q')` (16 bytes per entry, not ~100 in a dict); changes go to a
    small dict until `compact()` merges them. A store id of 0 means "not tracked".
    """

    __slots__ = ("_keys", "_ids", "_recent")

    def __init__(self) -> None:
        self._keys = array("Q")
        self._ids = array("Q")
        self._recent: dict[int, int] = {}

    def get(self, inode: int) -> int | None:
        store_id = self._recent.get(inode)
        if store_id is None:
            i = bisect_left(self._keys, inode)
            if i < len(self._keys) and self._keys[i] == inode:
                store_id = self._ids[i]
        return store_id or None

    def set(self, inode: int, store_id: int) -> None:
        self._recent[inode] = store_id

    def discard(self, inode: int) -> None:
        self._recent[inode] = 0

    def __len__(self) -> int:
        self.compact()
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InodeMap) and dict(self.items()) == dict(other.items())

    def items(self) -> Iterator[tuple[int, int]]:
        self.compact()
        return zip(self._keys, self._ids)

    def compact(self) -> None:
        """Merge recent changes into the sorted arrays."""
        if not self._recent:
            return
        merged = dict(zip(self._keys, self._ids))
        merged.update(self._recent)
        self._recent = {}
        keys = sorted(k for k, v in merged.items() if v)
        self._keys = array("Q", keys)
        self._ids = array("Q", (merged[k] for k in keys))

    def to_bytes(self) -> bytes:
        self.compact()
        pairs = array("Q", bytes(16 * len(self._keys)))
        pairs[0::2] = self._keys
        pairs[1::2] = self._ids
        if sys.byteorder == "big":
            pairs.byteswap()
        return pairs.tobytes()

    @classmethod
    def parse(cls, blob: bytes | memoryview, count: int) -> InodeMap:
        """The map from a state file: `count` (inode, store id) pairs, inodes strictly increasing."""
        if len(blob) != 16 * count:
            raise FormatError(f"inode map: {len(blob)} bytes, expected {16 * count}")
        pairs = array("Q")
        pairs.frombytes(blob)
        if sys.byteorder == "big":
            pairs.byteswap()
        imap = cls()
        imap._keys = pairs[0::2]
        imap._ids = pairs[1::2]
        if not all(map(int.__lt__, imap._keys, imap._keys[1:])):
            raise FormatError("inode map: inodes not strictly increasing")
        if 0 in imap._ids:
            raise FormatError("inode map: store id 0")
        return imap
