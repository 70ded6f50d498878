"""The account info file: limits, usage by kind, last object id, store marker, enabled, name, retention.

Byte layout (little-endian; version 1 ends after the name, version 2 appends 16 bytes, version 3
8 more):

    offset  size  field
    0       4     magic b"BXAI"
    4       2     version (1)
    6       2     flags (bit 0: enabled; bit 1: a writing session has it open, still set = it died)
    8       4     account number
    12      4     block size the counts are in (4096)
    16      8     soft limit, blocks
    24      8     hard limit, blocks
    32      8     blocks used, all objects
    40      8     blocks in current files
    48      8     blocks in old versions
    56      8     blocks in deleted files
    64      8     blocks in directories
    72      8     number of current files
    80      8     number of old versions
    88      8     number of deleted files
    96      8     number of directories
    104     8     last object id handed out
    112     8     client store marker
    120     2     name length n (UTF-8)
    122     n     name
    122+n   8     change count: bumped by every session that changed the account, so
                  housekeeping can skip an unchanged account with one read (version 2)
    130+n   4     keep_versions_days: old versions are kept at least this long and trimmed
                  by age beyond it; 0 = no retention by age (version 2)
    134+n   4     keep_min_versions: newest old versions per file never trimmed by age (version 2)
    138+n   8     last backup: Unix time at which the last writing session ended with Finished,
                  0 = never; kept here (not in server memory) so every server process of a
                  shared store reports the same value to /metrics (version 3)

Older versions are read with zeros for the fields they lack; every write is version 3.
Written with the object store's atomic put, so a reader sees the old or the new record.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from boxbox import magic
from boxbox.errors import FormatError

MAGIC = magic.ACCOUNT_INFO
VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
HEADER = struct.Struct("<4sHHII13QH")
TRAILER = struct.Struct("<QII")
TRAILER_V3 = struct.Struct("<q")
assert HEADER.size == 122 and TRAILER.size == 16 and TRAILER_V3.size == 8
BLOCK_SIZE = 4096
MAX_NAME = 1024
FLAG_ENABLED = 0x1
#: Set while a writing session has the account open, cleared when it closes; found set by the
#: next writer (or housekeeping), it means a writer died mid-batch: see `housekeep.recover`.
FLAG_WRITER = 0x2


class AccountInfo(NamedTuple):
    account: int
    enabled: bool
    soft_limit: int
    hard_limit: int
    blocks_used: int = 0
    blocks_current: int = 0
    blocks_old: int = 0
    blocks_deleted: int = 0
    blocks_directories: int = 0
    count_current: int = 0
    count_old: int = 0
    count_deleted: int = 0
    count_directories: int = 0
    last_object_id: int = 0
    client_store_marker: int = 0
    name: str = ""
    change_count: int = 0
    keep_versions_days: int = 0
    keep_min_versions: int = 0
    writer_open: bool = False
    last_backup: int = 0

    def encode(self) -> bytes:
        name = self.name.encode("utf-8")
        if len(name) > MAX_NAME:
            raise FormatError(f"account name of {len(name)} bytes is longer than {MAX_NAME}")
        flags = (FLAG_ENABLED if self.enabled else 0) | (FLAG_WRITER if self.writer_open else 0)
        return HEADER.pack(MAGIC, VERSION, flags, self.account, BLOCK_SIZE,
                           self.soft_limit, self.hard_limit, self.blocks_used, self.blocks_current,
                           self.blocks_old, self.blocks_deleted, self.blocks_directories, self.count_current,
                           self.count_old, self.count_deleted, self.count_directories, self.last_object_id,
                           self.client_store_marker, len(name)) + name + TRAILER.pack(
                               self.change_count, self.keep_versions_days, self.keep_min_versions) + TRAILER_V3.pack(
                                   self.last_backup)

    @classmethod
    def decode(cls, data: bytes, where: str) -> "AccountInfo":
        """Parse an info file; `where` names it in errors."""
        if len(data) < HEADER.size:
            raise FormatError(f"{where}: account info of {len(data)} bytes, expected at least {HEADER.size}")
        fields = HEADER.unpack_from(data)
        if fields[0] != MAGIC:
            raise FormatError(f"{where}: magic {fields[0]!r}, expected {MAGIC!r}")
        if fields[1] not in SUPPORTED_VERSIONS:
            raise FormatError(f"{where}: account info version {fields[1]}, expected one of {SUPPORTED_VERSIONS}")
        if fields[4] != BLOCK_SIZE:
            raise FormatError(f"{where}: block size {fields[4]}, expected {BLOCK_SIZE}")
        name_len = fields[-1]
        expected = (HEADER.size + name_len + (TRAILER.size if fields[1] >= 2 else 0)
                    + (TRAILER_V3.size if fields[1] >= 3 else 0))
        if len(data) != expected:
            raise FormatError(f"{where}: expected {expected} bytes, got {len(data)}")
        end = HEADER.size + name_len
        try:
            name = data[HEADER.size:end].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{where}: account name is not UTF-8") from None
        trailer = TRAILER.unpack_from(data, end) if fields[1] >= 2 else (0, 0, 0)
        last_backup = TRAILER_V3.unpack_from(data, end + TRAILER.size)[0] if fields[1] >= 3 else 0
        return cls(fields[3], bool(fields[2] & FLAG_ENABLED), *fields[5:-1], name, *trailer,
                   bool(fields[2] & FLAG_WRITER), last_backup)


def blocks_for_bytes(n: int) -> int:
    """Bytes rounded up to whole 4 KiB blocks (how limits are expressed to users)."""
    return -(-n // BLOCK_SIZE)
