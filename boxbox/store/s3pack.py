"""Byte formats of the store on S3: the trailer every object ends with, and packs.

Trailer byte layout (little-endian), after the payload of every stored object:

    offset  size  field
    0       4     magic b"BXST"
    4       2     version (1)
    6       2     reserved, zero
    8       8     payload length
    16      32    SHA-256 of the payload

A pack holds the small new objects of one sync in one shard directory as one S3 object, so a
restore reads them with one GET instead of one each (SeaweedFS spends ~0.38 ms of CPU per GET
whatever its size: 48 MB as 3,200 GETs cost it 1.15 CPU s, as 50 GETs 0.10). Each member is
stored byte for byte as its standalone object would be (payload + trailer), so a member read
from a pack is checked exactly like one read alone. Pack byte layout (little-endian):

    offset  size        field
    0       ...         the members, contiguous, ascending id
    I       24 * count  index entries: id (u64), offset (u64), length (u64)
    end-52  4           magic b"BXSP"
            2           version (1)
            2           reserved, zero
            4           count
            8           I: where the index starts (= the members' total length)
            32          SHA-256 of the entries and of the 20 footer bytes before it

A pack's name in its directory is `pack~<16 hex digits>`: never a 16-hex-digit object id, which
is the only kind of name packed, so a LIST of the directory shows both and they cannot collide.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import NamedTuple

from boxbox import magic
from boxbox.errors import FormatError, IntegrityError, ProgrammingError

MAGIC = magic.S3_TRAILER
VERSION = 1
SUPPORTED_VERSIONS = (1,)
TRAILER = struct.Struct("<4sHHQ32s")
assert TRAILER.size == 48

PACK_MAGIC = magic.S3_PACK
PACK_VERSION = 1
PACK_SUPPORTED_VERSIONS = (1,)
ENTRY = struct.Struct("<QQQ")
assert ENTRY.size == 24
FOOTER = struct.Struct("<4sHHIQ32s")
assert FOOTER.size == 52
#: Footer bytes covered by the index's SHA-256 (all but the digest itself).
FOOTER_SIGNED = FOOTER.size - 32
#: A pack name is this plus 16 hex digits.
PACK_PREFIX = "pack~"
_ID_NAME = re.compile(r"[0-9a-f]{16}")
_PACK_NAME = re.compile(re.escape(PACK_PREFIX) + r"[0-9a-f]{16}")


class Entry(NamedTuple):
    """Where a member lies in its pack."""

    offset: int
    length: int


def seal(payload: bytes | bytearray | memoryview) -> bytes:
    """Payload + trailer, for a small object written in one go."""
    return bytes(payload) + trailer(len(payload), hashlib.sha256(payload).digest())


def trailer(length: int, digest: bytes) -> bytes:
    return TRAILER.pack(MAGIC, VERSION, 0, length, digest)


def parse_trailer(data: bytes, size: int, where: str) -> tuple[int, bytes]:
    """(payload length, SHA-256) from the last TRAILER.size bytes of an object of `size` bytes."""
    if size < TRAILER.size or len(data) != TRAILER.size:
        raise FormatError(f"{where}: object of {size} bytes, expected at least {TRAILER.size}")
    magic_, version, _, length, digest = TRAILER.unpack(data)
    if magic_ != MAGIC:
        raise FormatError(f"{where}: trailer magic {magic_!r}, expected {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{where}: trailer version {version}, expected one of {SUPPORTED_VERSIONS}")
    if length != size - TRAILER.size:
        raise FormatError(f"{where}: trailer says {length} bytes of payload, the object holds {size - TRAILER.size}")
    return length, digest


def checked(data: bytes | memoryview, where: str) -> bytes:
    """The payload of a whole stored object (payload + trailer), its SHA-256 checked."""
    length, digest = parse_trailer(bytes(data[-TRAILER.size:]), len(data), where)
    payload = bytes(data[:length])
    if hashlib.sha256(payload).digest() != digest:
        raise IntegrityError(f"{where}: SHA-256 of the {length} bytes stored does not match the object's trailer")
    return payload


def is_id_name(name: str) -> bool:
    """Whether an object named `name` may go into a pack: an object id, 16 lower-case hex digits."""
    return len(name) == 16 and _ID_NAME.fullmatch(name) is not None


def is_pack_name(name: str) -> bool:
    return len(name) == len(PACK_PREFIX) + 16 and _PACK_NAME.fullmatch(name) is not None


def pack_name(token: int) -> str:
    return f"{PACK_PREFIX}{token:016x}"


def build(members: list[tuple[int, bytes]]) -> bytes:
    """A pack of `members` (id, stored bytes), in ascending id order; ids must be distinct."""
    members = sorted(members)
    parts: list[bytes] = []
    entries: list[bytes] = []
    offset = 0
    last = -1
    for object_id, data in members:
        if object_id <= last:
            raise ProgrammingError(f"pack member {object_id:016x} given twice")
        last = object_id
        parts.append(data)
        entries.append(ENTRY.pack(object_id, offset, len(data)))
        offset += len(data)
    head = FOOTER.pack(PACK_MAGIC, PACK_VERSION, 0, len(members), offset, b"")[:FOOTER_SIGNED]
    index = b"".join(entries)
    digest = hashlib.sha256(index + head).digest()
    return b"".join(parts) + index + head + digest


def index_start(tail: bytes, size: int, where: str) -> int:
    """Where the index of a pack of `size` bytes starts, from at least its last FOOTER.size bytes (`tail`)."""
    if size < FOOTER.size or len(tail) < FOOTER.size or len(tail) > size:
        raise FormatError(f"{where}: pack of {size} bytes, expected at least {FOOTER.size}")
    magic_, version, _, count, start, _ = FOOTER.unpack(tail[-FOOTER.size:])
    if magic_ != PACK_MAGIC:
        raise FormatError(f"{where}: pack magic {magic_!r}, expected {PACK_MAGIC!r}")
    if version not in PACK_SUPPORTED_VERSIONS:
        raise FormatError(f"{where}: pack version {version}, expected one of {PACK_SUPPORTED_VERSIONS}")
    if start + count * ENTRY.size + FOOTER.size != size:
        raise FormatError(f"{where}: pack index of {count} entries at {start} does not end a pack of {size} bytes")
    return start


def parse_index(tail: bytes, size: int, where: str) -> dict[int, Entry]:
    """The members of a pack of `size` bytes, from its last bytes (`tail`, the whole index at least)."""
    start = index_start(tail, size, where)
    if len(tail) < size - start:
        raise FormatError(f"{where}: {len(tail)} bytes of the pack's end read, its index takes {size - start}")
    index = tail[len(tail) - (size - start):]
    if hashlib.sha256(index[:-32]).digest() != index[-32:]:
        raise IntegrityError(f"{where}: SHA-256 of the pack index does not match")
    entries: dict[int, Entry] = {}
    offset = 0
    last = -1
    for object_id, at, length in ENTRY.iter_unpack(index[:-FOOTER.size]):
        if object_id <= last or at != offset or length < TRAILER.size:
            raise FormatError(f"{where}: pack entry {object_id:016x} at {at} of {length} bytes out of order "
                              f"(expected an id above {last:x}, at {offset}, of at least {TRAILER.size} bytes)")
        entries[object_id] = Entry(at, length)
        last = object_id
        offset += length
    if offset != start:
        raise FormatError(f"{where}: pack members take {offset} bytes, the index starts at {start}")
    return entries


def read_member(pack: bytes, object_id: int, where: str) -> bytes | None:
    """The payload of member `object_id` of a whole pack, checked; None if it holds no such member."""
    entry = parse_index(pack, len(pack), where).get(object_id)
    if entry is None:
        return None
    return checked(memoryview(pack)[entry.offset:entry.offset + entry.length], f"{where}: {object_id:016x}")


class Location(NamedTuple):
    """A member as a read finds it: its pack's name and size, and where it lies in it."""

    pack: str
    size: int
    entry: Entry


class ShardView:
    """What one shard directory holds, as one LIST and its packs' indexes showed it: standalone objects
    (name -> size) and packs (name -> size, members). A standalone object always wins over a member of
    the same name (a rewrite is a plain PUT); a name in two packs is read from the first by name."""

    __slots__ = ("plain", "packs", "members")

    def __init__(self, plain: dict[str, int], packs: dict[str, tuple[int, dict[str, Entry]]]) -> None:
        self.plain = plain
        self.packs: dict[str, tuple[int, dict[str, Entry]]] = {}
        self.members: dict[str, Location] = {}
        for name in sorted(packs):
            self.add_pack(name, *packs[name])

    def where(self, name: str) -> Location | None:
        """The pack member a read of `name` gets; None if a standalone object shadows it, or none exists."""
        return None if name in self.plain else self.members.get(name)

    def size(self, name: str) -> int | None:
        """The stored size of `name` (payload + trailer) wherever it is; None if it is nowhere."""
        size = self.plain.get(name)
        if size is None and name in self.members:
            size = self.members[name].entry.length
        return size

    def holding(self, name: str) -> list[str]:
        """The packs with a member `name`, shadowed or not."""
        return [pack for pack, (_, index) in self.packs.items() if name in index]

    def add_pack(self, pack: str, size: int, index: dict[str, Entry]) -> None:
        self.packs[pack] = (size, index)
        for name, entry in index.items():
            self.members.setdefault(name, Location(pack, size, entry))

    def drop_pack(self, pack: str) -> None:
        _, index = self.packs.pop(pack, (0, {}))
        for name in index:
            if self.members.get(name, Location("", 0, Entry(0, 0))).pack == pack:
                del self.members[name]
                for other in sorted(self.holding(name)):
                    size, other_index = self.packs[other]
                    self.members[name] = Location(other, size, other_index[name])
                    break
