"""Directory objects: clear structure the store maintains, sealed names and attributes it cannot read.

Byte layout (little-endian):
    HEADER, 32 bytes
      0   4   magic b"BXDO"
      4   1   version (1)
      5   3   reserved, zero
      8   8   object id of this directory
      16  8   container id (parent directory; 0 for the root)
      24  4   entry count
      28  4   length D of the sealed directory attributes (0: none)
    32  D     sealed directory attributes: AES-256-GCM, AD = b"BXDO attrs" + container id + the
              directory's sealed name in its container (empty for the root)
    ENTRIES, each a 56-byte head then its sealed parts
      0   8   object id
      8   2   flags: 1 file, 2 directory (exactly one), 4 deleted, 8 old version
      10  2   sealed name length N
      12  4   sealed attributes length A (0: none)
      16  8   mtime, ns since the epoch (signed; the client sets it, checked against the attributes)
      24  8   size in 4 KiB blocks (the store maintains it)
      32  8   attribute hash: keyed BLAKE2b-64 of name + attributes without times
      40  8   newer version: object id, 0 for none (store-maintained)
      48  8   older version: object id, 0 for none (store-maintained)
      56  N   sealed name: AES-SIV, context = this directory's object id (deterministic: the
              store finds an entry by the sealed bytes the client sends)
      .   A   sealed attributes: AES-256-GCM, AD = b"BXDO entry" + directory id + sealed name
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from boxbox import magic
from boxbox.crypto import seal as sealing
from boxbox.crypto.keys import Keys
from boxbox.errors import FormatError, IntegrityError
from boxbox.objects.attributes import MAX_ATTRIBUTES_SIZE, Attributes

MAGIC = magic.DIRECTORY_OBJECT
VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct("<4sB3xQQII")
ENTRY = struct.Struct("<QHHIqQ8sQQ")
assert HEADER.size == 32 and ENTRY.size == 56

FILE, DIR, DELETED, OLD = 1, 2, 4, 8
KNOWN_FLAGS = FILE | DIR | DELETED | OLD
MAX_SEALED_ATTRIBUTES = MAX_ATTRIBUTES_SIZE + sealing.OVERHEAD
DIR_ATTRS_AAD = b"BXDO attrs"
ENTRY_ATTRS_AAD = b"BXDO entry"


@dataclass(slots=True)
class Entry:
    """One directory entry; every field is clear bytes the store may read and edit."""

    object_id: int
    flags: int
    sealed_name: bytes
    mtime_ns: int = 0
    size_blocks: int = 0
    attr_hash: bytes = bytes(sealing.ATTRIBUTE_HASH_SIZE)
    sealed_attributes: bytes = b""
    newer: int = 0
    older: int = 0

    def pack(self) -> bytes:
        return ENTRY.pack(self.object_id, self.flags, len(self.sealed_name), len(self.sealed_attributes),
                          self.mtime_ns, self.size_blocks, self.attr_hash, self.newer,
                          self.older) + self.sealed_name + self.sealed_attributes


@dataclass(slots=True)
class Directory:
    """A directory object as the store holds it (see the layout above)."""

    object_id: int
    container_id: int
    sealed_attributes: bytes = b""
    entries: list[Entry] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> Directory:
        """Length, magic, version, then each entry's declared sizes; FormatError on any fault."""
        if len(data) < HEADER.size:
            raise FormatError(f"directory object is {len(data)} bytes, shorter than the {HEADER.size}-byte header")
        mg, version, object_id, container_id, count, alen = HEADER.unpack_from(data)
        if mg != MAGIC:
            raise FormatError(f"not a directory object: magic {mg!r}, expected {MAGIC!r}")
        if version not in SUPPORTED_VERSIONS:
            raise FormatError(f"directory object version {version} is not supported (this boxbox reads {VERSION})")
        if data[5:8] != b"\0\0\0":
            raise FormatError("directory object: reserved header bytes are not zero")
        _check_attrs_len(alen, "directory attributes")
        if HEADER.size + alen + count * ENTRY.size > len(data):
            raise FormatError(f"directory object declares {count} entries and {alen} attribute bytes, "
                              f"more than its {len(data)} bytes hold")
        pos = HEADER.size + alen
        sealed_attrs = bytes(data[HEADER.size:pos])
        entries = []
        unpack = ENTRY.unpack_from
        for i in range(count):
            if pos + ENTRY.size > len(data):
                raise FormatError(f"directory entry {i} at offset {pos} runs past the end ({len(data)} bytes)")
            eid, flags, nlen, elen, mtime, blocks, ahash, newer, older = unpack(data, pos)
            pos += ENTRY.size
            if flags & ~KNOWN_FLAGS or (flags & (FILE | DIR)) not in (FILE, DIR):
                raise FormatError(f"directory entry {i}: invalid flags {flags:#x}")
            if not sealing.SIV_SIZE < nlen <= sealing.MAX_SEALED_NAME:
                raise FormatError(f"directory entry {i}: sealed name is {nlen} bytes, expected "
                                  f"{sealing.SIV_SIZE + 1} to {sealing.MAX_SEALED_NAME}")
            _check_attrs_len(elen, f"directory entry {i} attributes")
            if pos + nlen + elen > len(data):
                raise FormatError(f"directory entry {i} needs {nlen + elen} bytes at offset {pos}, "
                                  f"{len(data) - pos} left")
            entries.append(Entry(eid, flags, bytes(data[pos:pos + nlen]), mtime, blocks, ahash,
                                 bytes(data[pos + nlen:pos + nlen + elen]), newer, older))
            pos += nlen + elen
        if pos != len(data):
            raise FormatError(f"directory object has {len(data) - pos} bytes after its last entry")
        return cls(object_id, container_id, sealed_attrs, entries)

    def serialize(self) -> bytes:
        head = HEADER.pack(MAGIC, VERSION, self.object_id, self.container_id, len(self.entries),
                           len(self.sealed_attributes))
        return b"".join([head, self.sealed_attributes, *(e.pack() for e in self.entries)])

    def find(self, sealed_name: bytes, exclude: int = OLD | DELETED) -> Entry | None:
        """The entry with this sealed name and none of the `exclude` flags (the current one)."""
        return next((e for e in self.entries if e.sealed_name == sealed_name and not e.flags & exclude), None)

    def entry(self, object_id: int) -> Entry | None:
        return next((e for e in self.entries if e.object_id == object_id), None)


def _check_attrs_len(n: int, what: str) -> None:
    if n and not sealing.OVERHEAD <= n <= MAX_SEALED_ATTRIBUTES:
        raise FormatError(f"{what}: sealed length {n}, expected 0 or {sealing.OVERHEAD} to {MAX_SEALED_ATTRIBUTES}")


# Client side: sealing and opening the parts the store cannot read.

def _entry_aad(directory_id: int, sealed_name: bytes) -> bytes:
    return ENTRY_ATTRS_AAD + directory_id.to_bytes(8, "little") + sealed_name


def _dir_attrs_aad(keys: Keys, container_id: int, name: bytes) -> bytes:
    sealed_name = sealing.seal_entry_name(keys, container_id, name) if name else b""
    return DIR_ATTRS_AAD + container_id.to_bytes(8, "little") + sealed_name


def seal_directory_attributes(keys: Keys, container_id: int, name: bytes, attributes: Attributes) -> bytes:
    """Sealed attributes of directory `name` in `container_id` (b"" for the root); re-seal after a move."""
    return sealing.seal_attributes(keys, attributes.pack(), _dir_attrs_aad(keys, container_id, name))


def open_directory_attributes(keys: Keys, directory: Directory, name: bytes, expected_id: int | None = None,
                              label: str = "directory") -> Attributes | None:
    """Attributes of the directory the client asked for as `expected_id`, reached by `name`."""
    if expected_id is not None and directory.object_id != expected_id:
        raise IntegrityError(f"{label} {expected_id:#x}: the store sent directory {directory.object_id:#x}")
    if not directory.sealed_attributes:
        return None
    aad = _dir_attrs_aad(keys, directory.container_id, name)
    plain = sealing.open_attributes(keys, directory.sealed_attributes, aad, f"{label} attributes")
    try:
        return Attributes.unpack(plain)
    except FormatError as e:
        raise IntegrityError(f"{label}: {e}") from e


def entry_attribute_hash(keys: Keys, name: bytes, attributes: Attributes) -> bytes:
    """What the client compares to notice attribute changes without opening the entry."""
    return sealing.attribute_hash(keys, attributes.hash_material(name))


def make_entry(keys: Keys, directory_id: int, name: bytes, object_id: int, flags: int,
               attributes: Attributes | None, size_blocks: int = 0) -> Entry:
    """A new entry for `name` in directory `directory_id`, with its parts sealed."""
    sealed_name = sealing.seal_entry_name(keys, directory_id, name)
    if attributes is None:
        return Entry(object_id, flags, sealed_name, 0, size_blocks)
    sealed_attrs = sealing.seal_attributes(keys, attributes.pack(), _entry_aad(directory_id, sealed_name))
    return Entry(object_id, flags, sealed_name, attributes.mtime_ns, size_blocks,
                 entry_attribute_hash(keys, name, attributes), sealed_attrs)


def open_entry(keys: Keys, directory_id: int, entry: Entry, label: str = "directory entry"
               ) -> tuple[bytes, Attributes | None]:
    """(name, attributes) of an entry, checked against its clear mtime and attribute hash."""
    what = f"{label} {entry.object_id:#x}"
    name = sealing.open_entry_name(keys, directory_id, entry.sealed_name, f"{what} name")
    if not entry.sealed_attributes:
        return name, None
    plain = sealing.open_attributes(keys, entry.sealed_attributes, _entry_aad(directory_id, entry.sealed_name),
                                    f"{what} attributes")
    try:
        attributes = Attributes.unpack(plain)
    except FormatError as e:
        raise IntegrityError(f"{what}: {e}") from e
    if attributes.mtime_ns != entry.mtime_ns:
        raise IntegrityError(f"{what}: clear mtime does not match the sealed attributes")
    if entry_attribute_hash(keys, name, attributes) != entry.attr_hash:
        raise IntegrityError(f"{what}: attribute hash does not match the sealed attributes")
    return name, attributes
