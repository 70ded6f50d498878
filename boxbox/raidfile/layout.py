"""On-disc layout of a RAID file: stripe header, block records, geometry and XOR parity.

Every stripe file (and the one file of a non-RAID set) is laid out as:

    offset 0    header, HEADER below (35 bytes)
    offset 35   records, one per block the file holds: the block's bytes, then the block's
                CRC32 (4 bytes, little-endian). Every block is block_size bytes except the
                last block of the clear file, which holds what is left; so record j starts
                at 35 + j * (block_size + 4).

    role 0, stripe 1: clear blocks 0, 2, 4, ...
    role 1, stripe 2: clear blocks 1, 3, 5, ...
    role 2, parity:   row j = stripe-1 block j XOR stripe-2 block j, the stripe-2 block
                      zero-padded (a lone last block is XORed with zeros), so parity block j
                      is exactly as long as stripe-1 block j
    role 3, whole:    every clear block (a non-RAID set)

    header: "BXRF" | version u8 | role u8 | log2(block_size) u8 | write id 16 bytes |
            clear length u64 | CRC32 of the 31 bytes before it u32           (little-endian)

The write id is 16 random bytes shared by the stripes of one write: a reader uses only
stripes that agree on it, which is what makes an overwrite of three files atomic (see
`boxbox.raidfile.writer`). A block's CRC is `zlib.crc32(block, seed)` with
seed = crc32(write id + role) + record index, so a block from another place, another
stripe or another write fails its check as surely as a flipped bit.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from typing import NamedTuple

from boxbox import magic
from boxbox.errors import FormatError

MAGIC = magic.RAID_HEADER
VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct("<4sBBB16sQI")
assert HEADER.size == 35
CRC = struct.Struct("<I")
RECORD_OVERHEAD = CRC.size

STRIPE1, STRIPE2, PARITY, WHOLE = 0, 1, 2, 3
RAID_ROLES = (STRIPE1, STRIPE2, PARITY)
ROLE_NAMES = {STRIPE1: "stripe 1", STRIPE2: "stripe 2", PARITY: "parity", WHOLE: "whole file"}
MIN_BLOCK_SHIFT, MAX_BLOCK_SHIFT = 4, 24  # 16 bytes .. 16 MiB
FINAL_SUFFIX = ".rf"  # a committed stripe
TEMP_SUFFIX = ".rfw"  # a stripe being written; its lock says whether its writer is alive


class Header(NamedTuple):
    role: int
    block_shift: int
    write_id: bytes
    length: int

    @property
    def block_size(self) -> int:
        return 1 << self.block_shift


def pack_header(h: Header) -> bytes:
    head = HEADER.pack(MAGIC, VERSION, h.role, h.block_shift, h.write_id, h.length, 0)[:-4]
    return head + CRC.pack(zlib.crc32(head))


def parse_header(data: bytes) -> Header:
    """Decode a stripe header in the fixed order length, magic, version, checksum, fields."""
    if len(data) < HEADER.size:
        raise FormatError(f"stripe header: expected {HEADER.size} bytes, got {len(data)}")
    magic_, version, role, shift, write_id, length, crc = HEADER.unpack_from(data)
    if magic_ != MAGIC:
        raise FormatError(f"stripe header: expected magic {MAGIC!r}, got {magic_!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"stripe header: unsupported version {version} (supported: {SUPPORTED_VERSIONS})")
    if zlib.crc32(data[: HEADER.size - 4]) != crc:
        raise FormatError("stripe header: checksum mismatch")
    if role not in ROLE_NAMES:
        raise FormatError(f"stripe header: expected role 0-3, got {role}")
    if not MIN_BLOCK_SHIFT <= shift <= MAX_BLOCK_SHIFT:
        raise FormatError(f"stripe header: block size 2**{shift} outside 2**{MIN_BLOCK_SHIFT}..2**{MAX_BLOCK_SHIFT}")
    return Header(role, shift, write_id, length)


def crc_seed(write_id: bytes, role: int) -> int:
    """Base of the per-record CRC seeds of one stripe (add the record index, mod 2**32)."""
    return zlib.crc32(write_id + bytes((role,)))


class Geometry:
    """Where the blocks of a clear file of `length` bytes live, for block size `block_size`."""

    __slots__ = ("length", "block_size", "blocks", "rows")

    def __init__(self, length: int, block_size: int) -> None:
        self.length = length
        self.block_size = block_size
        self.blocks = -(-length // block_size)
        self.rows = (self.blocks + 1) // 2  # records in stripe 1 and parity

    def records(self, role: int) -> int:
        if role == WHOLE:
            return self.blocks
        return self.blocks // 2 if role == STRIPE2 else self.rows

    def data_bytes(self, role: int) -> int:
        """Clear (or parity) bytes the stripe holds, without header and CRCs."""
        if role == WHOLE:
            return self.length
        k = self.records(role)
        if k == 0:
            return 0
        last = (2 * (k - 1) + (role == STRIPE2)) * self.block_size  # clear offset of its last block
        return (k - 1) * self.block_size + min(self.block_size, self.length - last)

    def file_size(self, role: int) -> int:
        return HEADER.size + self.data_bytes(role) + RECORD_OVERHEAD * self.records(role)

    def record_offset(self, index: int) -> int:
        return HEADER.size + index * (self.block_size + RECORD_OVERHEAD)

    def usage_blocks(self, raid: bool, unit: int) -> int:
        """Blocks of `unit` bytes the stripe files take (RAID: stripes + parity)."""
        roles = RAID_ROLES if raid else (WHOLE,)
        return sum(-(-self.file_size(r) // unit) for r in roles)


def xor_bytes_reference(a: bytes, b: bytes) -> bytes:
    """Plain byte-by-byte XOR that `xor_bytes` must agree with."""
    return bytes(x ^ y for x, y in itertools.zip_longest(a, b, fillvalue=0))


def stripe_reference(data: bytes, block_size: int, write_id: bytes, raid: bool = True) -> list[bytes]:
    """Plain, block-at-a-time version of the files RaidWriter produces, for tests to compare against."""
    blocks = [data[i : i + block_size] for i in range(0, len(data), block_size)]
    shift = block_size.bit_length() - 1
    if raid:
        s1, s2 = blocks[0::2], blocks[1::2]
        parity = [xor_bytes_reference(a, s2[j] if j < len(s2) else b"") for j, a in enumerate(s1)]
        contents = {STRIPE1: s1, STRIPE2: s2, PARITY: parity}
    else:
        contents = {WHOLE: blocks}
    files = []
    for role, records in contents.items():
        seed = crc_seed(write_id, role)
        body = b"".join(r + CRC.pack(zlib.crc32(r, (seed + j) & 0xFFFFFFFF)) for j, r in enumerate(records))
        files.append(pack_header(Header(role, shift, write_id, len(data))) + body)
    return files
