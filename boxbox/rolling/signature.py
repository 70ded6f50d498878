"""Block signatures: per block its size, weak rolling checksum and strong digest.

A signature describes the stored version of a file without its data; the client diffs
the new version against it. It may hold blocks of several sizes (a version rebuilt from
earlier diffs) and, optionally, the candidate filter of `anchors` (18 bytes per block)
that makes searching all-new data ~8x faster. Without anchors every search falls back to
the rolling checksum alone.

Serialized layout (little-endian), parsed in this order by `Signature.parse`:

    HEADER  4s magic "BXSG" | B version | B hash id | B flags | B strong size
            | I block count | I run count                                  (16 bytes)
    RUNS    run count x (I block size, I blocks of that size)   block sizes, run-length coded
    BLOCKS  block count x (I weak, 16s strong)                  20 bytes per block
    ANCHORS block count x anchors.RECORD (18 bytes)             only when flags & HAS_ANCHORS
                                                                (version 1: 80-byte records, not read)
"""

from __future__ import annotations

import struct
import zlib
from array import array
from itertools import compress, count, repeat
from typing import BinaryIO, NamedTuple

from boxbox import magic
from boxbox.errors import FormatError, ProgrammingError
from boxbox.rolling import anchors as anchors_mod
from boxbox.rolling.checksum import (HASH_IDS, HASHES, STRONG_SIZE, strong_function, strong_many, uniform_byte,
                                     uniform_digest, weak_checksum)

MAGIC = magic.SIGNATURE
VERSION = 2
SUPPORTED_VERSIONS = frozenset({2})
HEADER = struct.Struct("<4sBBBBII")
assert HEADER.size == 16
RUN = struct.Struct("<II")
assert RUN.size == 8
BLOCK = struct.Struct(f"<I{STRONG_SIZE}s")
assert BLOCK.size == 20

HAS_ANCHORS = 0x01
KNOWN_FLAGS = HAS_ANCHORS
#: largest block a signature may describe; bounds the finder's lookahead buffer
MAX_BLOCK_SIZE = 16 * 1024 * 1024
#: signature_of reads about this much per call
READ_CHUNK = 1 << 20


class BlockSig(NamedTuple):
    size: int
    weak: int
    strong: bytes


class Signature:
    """The block list of one file version (sizes may be mixed), with its hash and optional anchors."""

    __slots__ = ("hash_name", "blocks", "anchors", "_index")

    def __init__(self, hash_name: str, blocks: list[BlockSig], anchors: bytes | None = None) -> None:
        if hash_name not in HASH_IDS:
            raise FormatError(f"unknown strong hash {hash_name!r}, expected one of {sorted(HASH_IDS)}")
        for i, b in enumerate(blocks):
            if not 0 < b.size <= MAX_BLOCK_SIZE:
                raise FormatError(f"block {i}: size {b.size} outside 1..{MAX_BLOCK_SIZE}")
            if not 0 <= b.weak <= 0xFFFFFFFF:
                raise FormatError(f"block {i}: weak checksum {b.weak} is not an unsigned 32-bit value")
            if len(b.strong) != STRONG_SIZE:
                raise FormatError(f"block {i}: strong checksum of {len(b.strong)} bytes, expected {STRONG_SIZE}")
        if anchors is not None and len(anchors) != len(blocks) * anchors_mod.RECORD_SIZE:
            raise FormatError(f"anchors: expected {len(blocks) * anchors_mod.RECORD_SIZE} bytes "
                              f"for {len(blocks)} blocks, got {len(anchors)}")
        self.hash_name = hash_name
        self.blocks = blocks if isinstance(blocks, list) else list(blocks)
        self.anchors = bytes(anchors) if anchors is not None else None
        self._index: object = None  # the finder's lookup tables, built on first use

    def __repr__(self) -> str:
        return (f"Signature({self.hash_name!r}, {len(self.blocks)} blocks, "
                f"{self.total_size} bytes{', anchors' if self.anchors is not None else ''})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (self.hash_name, self.blocks, self.anchors) == (other.hash_name, other.blocks, other.anchors)

    __hash__ = None  # type: ignore[assignment]

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blocks)

    def block_anchors(self, k: int) -> bytes | None:
        """Block k's 80-byte candidate-filter record, to keep beside its size and checksums."""
        if self.anchors is None:
            return None
        return self.anchors[k * anchors_mod.RECORD_SIZE:(k + 1) * anchors_mod.RECORD_SIZE]

    def without_anchors(self) -> Signature:
        """The same blocks without the candidate filter (what a size/weak/strong index holds)."""
        return Signature(self.hash_name, self.blocks)

    def serialize(self) -> bytes:
        """The compact binary form (20 bytes per block, +80 with anchors, plus size runs)."""
        runs: list[list[int]] = []
        for b in self.blocks:
            if runs and runs[-1][0] == b.size:
                runs[-1][1] += 1
            else:
                runs.append([b.size, 1])
        flags = HAS_ANCHORS if self.anchors is not None else 0
        parts = [HEADER.pack(MAGIC, VERSION, HASH_IDS[self.hash_name], flags, STRONG_SIZE,
                             len(self.blocks), len(runs))]
        parts.extend(RUN.pack(size, count) for size, count in runs)
        pack = BLOCK.pack
        parts.extend(pack(b.weak, b.strong) for b in self.blocks)
        if self.anchors is not None:
            parts.append(self.anchors)
        return b"".join(parts)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Signature:
        """Parse `serialize()` output; anything malformed raises FormatError naming the step."""
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        if len(data) < HEADER.size:
            raise FormatError(f"signature: expected at least {HEADER.size} header bytes, got {len(data)}")
        mag, version, hash_id, flags, strong_size, count, nruns = HEADER.unpack_from(data, 0)
        if mag != MAGIC:
            raise FormatError(f"signature: bad magic {bytes(mag)!r}, expected {MAGIC!r}")
        if version not in SUPPORTED_VERSIONS:
            raise FormatError(f"signature: version {version} not supported, expected one of {sorted(SUPPORTED_VERSIONS)}")
        if hash_id not in HASHES:
            raise FormatError(f"signature: unknown hash id {hash_id}, expected one of {sorted(HASHES)}")
        if flags & ~KNOWN_FLAGS:
            raise FormatError(f"signature: unknown flags {flags:#x}")
        if strong_size != STRONG_SIZE:
            raise FormatError(f"signature: strong checksum size {strong_size}, expected {STRONG_SIZE}")
        if nruns > count:
            raise FormatError(f"signature: {nruns} size runs for {count} blocks")
        per_block = BLOCK.size + (anchors_mod.RECORD_SIZE if flags & HAS_ANCHORS else 0)
        expected = HEADER.size + nruns * RUN.size + count * per_block
        if len(data) != expected:
            raise FormatError(f"signature: {count} blocks in {nruns} runs need {expected} bytes, got {len(data)}")
        sizes: list[int] = []
        offset = HEADER.size
        for size, n in RUN.iter_unpack(data[offset:offset + nruns * RUN.size]):
            if not 0 < size <= MAX_BLOCK_SIZE:
                raise FormatError(f"signature: block size {size} outside 1..{MAX_BLOCK_SIZE}")
            if n == 0 or len(sizes) + n > count:
                raise FormatError(f"signature: size runs do not add up to {count} blocks")
            sizes.extend([size] * n)
        if len(sizes) != count:
            raise FormatError(f"signature: size runs cover {len(sizes)} blocks, expected {count}")
        offset += nruns * RUN.size
        blocks = [BlockSig(size, weak, strong) for size, (weak, strong)
                  in zip(sizes, BLOCK.iter_unpack(data[offset:offset + count * BLOCK.size]))]
        offset += count * BLOCK.size
        anchors = bytes(data[offset:]) if flags & HAS_ANCHORS else None
        return cls(HASHES[hash_id], blocks, anchors)


def block_sig(block: bytes | bytearray | memoryview, hash_name: str) -> BlockSig:
    """The signature entry of one block."""
    return BlockSig(len(block), weak_checksum(block), strong_function(hash_name)(block))


def block_anchors(block: bytes | bytearray | memoryview, hash_name: str) -> bytes:
    """The 80-byte candidate-filter record of one block (as `Signature.block_anchors` gives)."""
    return anchors_mod.record_of(block, strong_function(hash_name)(block))


def signature_of_blocks(blocks: list[bytes], hash_name: str, *, anchors: bool = True) -> Signature:
    """Signature of a file given as its blocks, which may have any sizes."""
    sigs = [block_sig(b, hash_name) for b in blocks]
    recs = b"".join(block_anchors(b, hash_name) for b in blocks) if anchors else None
    return Signature(hash_name, sigs, recs)


def signature_of(stream: BinaryIO, block_size: int, hash_name: str, *, anchors: bool = True) -> Signature:
    """Signature of everything `stream` yields, cut into `block_size` blocks (the last may be short).

    Reads ~1 MiB at a time, so memory is the signature itself (20 + 80 bytes per block).
    """
    if not 0 < block_size <= MAX_BLOCK_SIZE:
        raise ProgrammingError(f"block size {block_size} outside 1..{MAX_BLOCK_SIZE}")
    strong_all = strong_many(hash_name)
    make = tuple.__new__  # BlockSig from a tuple at C speed (its own __new__ is Python: 0.7 us a block)
    ts = array("H")
    ws = array("Q")
    blocks: list[BlockSig] = []
    chunk = max(block_size, READ_CHUNK - READ_CHUNK % block_size)
    buf = bytearray(chunk)
    blank_ts = array("H", [anchors_mod.NO_ANCHOR] * anchors_mod.SLOTS)
    blank_ws = array("Q", [0] * anchors_mod.SLOTS)
    with memoryview(buf) as view:
        while True:
            got = _read_full(stream, view)
            if not got:
                break
            first = len(blocks)
            part = view[:got]
            views = [part[start:start + block_size] for start in range(0, got, block_size)]
            blocks.extend(map(make, repeat(BlockSig), zip(map(len, views), map(zlib.adler32, views),
                                                          strong_all(views))))
            for v in views:
                v.release()
            del views
            if anchors:
                anchors_mod.picks(part, block_size, [], set(), ts, ws)
                # blocks of one repeated byte: no selective anchor, found by run search instead.
                # Cheap test first, for all blocks at once: first, middle and last byte equal
                nfull = got // block_size
                heads = part[0:nfull * block_size:block_size].tobytes()
                ends = part[block_size - 1::block_size].tobytes()
                half = block_size // 2
                runs = [first + i for i in compress(count(), map(int.__eq__, heads, ends))
                        if part[i * block_size + half] == heads[i]]
                if nfull < len(blocks) - first:
                    runs.append(len(blocks) - 1)  # the short last block: the exact test only
                for k in runs:
                    b = blocks[k]
                    c = uniform_byte(b.size, b.weak)
                    if c is not None and b.strong == uniform_digest(hash_name, c, b.size):
                        ts[8 * k:8 * k + 8] = blank_ts
                        ws[8 * k:8 * k + 8] = blank_ws
            part.release()
            if got < chunk:
                break
    return Signature(hash_name, blocks, anchors_mod.to_bytes(ts, ws) if anchors else None)


def _read_full(stream: BinaryIO, view: memoryview) -> int:
    """Fill `view` from `stream` unless it ends first; the number of bytes read."""
    got = 0
    while got < len(view):
        readinto = getattr(stream, "readinto", None)
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = stream.read(len(view) - got)
            n = len(data)
            view[got:got + n] = data
        if not n:
            break
        got += n
    return got
