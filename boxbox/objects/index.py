"""The block index of a file object: built while encoding, sealed at its end, opened to diff against.

Plaintext layout (little-endian; sealed with the index key inside a file object's end record):
    HEAD, 20 bytes
      0   4   magic b"BXFI"
      4   1   version (3; version 2 had 80-byte anchor records, still read; version 1 had no seal tags)
      5   1   strong hash id (rolling.checksum.HASHES; equals the object header's)
      6   2   flags: 1 = anchors section present
      8   4   block count (equals the end record's)
      12  8   exact clear size (the sum of the clear sizes)
    ENTRIES, 44 bytes per block
      0   4   clear size
      4   4   stored size (the length of the block's record in the object)
      8   4   weak rolling checksum (rolling.checksum.weak_checksum)
      12  16  strong checksum (rolling.checksum.strong_function(hash)): for diffs only
      28  16  seal tag: the last 16 bytes of the block's sealed record (its AEAD tag). Decode
              checks that the record at this position carries this tag and opens: that names
              one genuine seal, so the clear data need not be hashed again (docs/FORMATS.md)
    ANCHORS, when flags & 1: per block the 18-byte rolling.anchors.RECORD (u16 window position,
      15-byte window, u8 mask; version 2: 80-byte anchors.V2_RECORD, 8 u16 positions, 8 u64
      words), the candidate filter that makes a diff against all-new data ~8x faster.

A client diffing a new version downloads only this (`file.open_index`), turns it into a
rolling Signature, and refers to unchanged blocks by `Index.reference` (entry and tag
included: the store copies the sealed record byte for byte, so its tag stays valid).
"""

from __future__ import annotations

import functools
import struct
from array import array
from typing import Iterable, Iterator, NamedTuple

from boxbox import magic
from boxbox.crypto.seal import TAG_SIZE
from boxbox.errors import FormatError, IntegrityError, ProgrammingError
from boxbox.rolling import anchors
from boxbox.rolling.checksum import HASHES, STRONG_SIZE, uniform_byte, uniform_digest
from boxbox.rolling.signature import BlockSig, Signature

MAGIC = magic.FILE_INDEX
VERSION = 3
SUPPORTED_VERSIONS = (2, 3)
HEAD = struct.Struct("<4sBBHIQ")
ENTRY = struct.Struct(f"<III{STRONG_SIZE}s{TAG_SIZE}s")
ANCHOR_SLOTS = anchors.SLOTS
ANCHOR_SIZE = anchors.RECORD_SIZE
assert (HEAD.size, ENTRY.size, ANCHOR_SIZE) == (20, 44, 18)
NO_ANCHORS = anchors.EMPTY_RECORD
HAS_ANCHORS = 0x0001
#: at most 2^21 blocks: 1 TiB at 512 KiB per block; the index plaintext is then 248 MiB
MAX_BLOCKS = 1 << 21
MAX_SIZE = HEAD.size + MAX_BLOCKS * (ENTRY.size + ANCHOR_SIZE)
#: the store sees clear sizes rounded up to this (the exact size is sealed in the index)
ROUND = 4096
#: clear bytes of equal-sized blocks whose anchors are picked in one call (rolling's READ_CHUNK)
ANCHOR_BATCH = 1 << 20


def rounded(size: int) -> int:
    """Clear size as the store may see it: rounded up to 4 KiB."""
    return -(-size // ROUND) * ROUND


class IndexEntry(NamedTuple):
    """One block as the sealed index records it."""

    clear_size: int
    stored_size: int
    weak: int
    strong: bytes
    tag: bytes


_new_entry = functools.partial(tuple.__new__, IndexEntry)


class Reference(NamedTuple):
    """Block `block` of store object `object_id`, whose index entry the client already has."""

    object_id: int
    block: int
    entry: IndexEntry
    anchors: bytes = NO_ANCHORS


class Index(NamedTuple):
    """The opened block index of a file object: what a client needs to diff against it."""

    hash_id: int
    size: int
    entries: list[IndexEntry]
    anchors: bytes | None = None

    @property
    def hash_name(self) -> str:
        """A diff against this object must be encoded with this strong hash."""
        return HASHES[self.hash_id]

    def reference(self, object_id: int, k: int) -> Reference:
        """Block k of this object (stored as `object_id`) as a diff upload refers to it."""
        rec = NO_ANCHORS if self.anchors is None else self.anchors[k * ANCHOR_SIZE:(k + 1) * ANCHOR_SIZE]
        return Reference(object_id, k, self.entries[k], rec)

    def signature(self) -> Signature:
        """The rolling Signature of the object, for a delta against it."""
        return Signature(self.hash_name, [BlockSig(e.clear_size, e.weak, e.strong) for e in self.entries],
                         self.anchors)


class IndexBuilder:
    """Collects the index while blocks stream past; memory is 124 bytes a block (62 once sealed) plus one anchor batch.

    Anchors are picked by rolling.anchors exactly as its signature_of does for `block_size`:
    blocks of that size batched ~1 MiB at a time (`picks` is vectorized over a batch; one
    call per 16 KiB block cost 54 us, a third of the whole encode, measured), a shorter
    block closing its batch as a file's last block does. Blocks of other sizes (diff
    uploads) are picked one at a time.
    """

    def __init__(self, hash_id: int, block_size: int | None = None) -> None:
        self.hash_id = hash_id
        self.block_size = block_size
        self.hash_name = HASHES[hash_id]
        self.entries: list[IndexEntry] = []
        self.size = 0
        self.used: set[int] = set()  # anchor words taken so far: rarity across the file
        self.ts = array("H")
        self.ws = array("Q")
        self.batch = bytearray()
        self.batch_block = 0  # the block size `picks` cuts the batch at
        self.digests: list[bytes] = []
        self.uniform: list[int] = []

    def _append(self, entry: IndexEntry) -> None:
        if len(self.entries) >= MAX_BLOCKS:
            raise FormatError(f"file needs more than {MAX_BLOCKS} blocks; use larger blocks")
        self.entries.append(entry)
        self.size += entry.clear_size

    def add_block(self, data: bytes | memoryview, entry: IndexEntry) -> None:
        """A block sealed into this object; `data` is its clear content."""
        self._append(entry)
        n = entry.clear_size
        nominal = self.block_size
        if nominal is None or n > nominal:
            self._flush()
            self.batch_block = n  # one block on its own
        else:
            self.batch_block = nominal
        if data[0] == data[n - 1] == data[n // 2]:  # cheap test before the exact one
            c = uniform_byte(n, entry.weak)
            if c is not None and entry.strong == uniform_digest(self.hash_name, c, n):
                self.uniform.append(len(self.digests))  # one repeated byte: the finder searches runs
        self.batch += data
        self.digests.append(entry.strong)
        if n != nominal or len(self.batch) >= max(n, ANCHOR_BATCH - ANCHOR_BATCH % n):
            self._flush()  # a short block ends a batch, as the last block of a read chunk does

    def add_reference(self, ref: Reference) -> None:
        """A block copied from another object: its entry and anchors come from that object's index."""
        self._append(ref.entry)
        self._flush()
        ts, ws = anchors.unpack_record(ref.anchors)
        self.ts.extend(ts)
        self.ws.extend(ws)

    def _flush(self) -> None:
        if not self.digests:
            return
        first = len(self.ts) // ANCHOR_SLOTS
        with memoryview(self.batch) as view:
            anchors.picks(view, self.batch_block, self.digests, self.used, self.ts, self.ws)
        for i in self.uniform:
            k = (first + i) * ANCHOR_SLOTS
            self.ts[k:k + ANCHOR_SLOTS] = array("H", [anchors.NO_ANCHOR] * ANCHOR_SLOTS)
            self.ws[k:k + ANCHOR_SLOTS] = array("Q", [0] * ANCHOR_SLOTS)
        self.batch = bytearray()
        self.batch_block = 0
        self.digests = []
        self.uniform = []

    def plaintext(self) -> bytes:
        """The index as it gets sealed."""
        self._flush()
        return b"".join([HEAD.pack(MAGIC, VERSION, self.hash_id, HAS_ANCHORS, len(self.entries), self.size),
                         *(ENTRY.pack(*e) for e in self.entries), anchors.to_bytes(self.ts, self.ws)])


def parse_index(plain: bytes, hash_id: int, count: int, rounded_size: int, label: str) -> Index:
    """An opened (authentic) index, checked against the header's hash id and the end record."""
    if len(plain) < HEAD.size:
        raise IntegrityError(f"{label}: index is {len(plain)} bytes, shorter than its head")
    mg, version, hid, flags, icount, size = HEAD.unpack_from(plain)
    if version not in SUPPORTED_VERSIONS:
        raise IntegrityError(f"{label}: index version {version} is not supported (this boxbox reads {VERSION})")
    if (mg, hid, flags & ~HAS_ANCHORS, icount) != (MAGIC, hash_id, 0, count):
        raise IntegrityError(f"{label}: index head does not match the object header")
    entries_end = HEAD.size + count * ENTRY.size
    anchor_size = ANCHOR_SIZE if version == VERSION else anchors.V2_RECORD.size
    expected = entries_end + (count * anchor_size if flags & HAS_ANCHORS else 0)
    if len(plain) != expected:
        raise IntegrityError(f"{label}: index is {len(plain)} bytes, expected {expected} for {count} blocks")
    # tuple.__new__ in C, not IndexEntry._make's Python frame per entry (~1 us each under a profiler)
    entries = list(map(_new_entry, ENTRY.iter_unpack(memoryview(plain)[HEAD.size:entries_end])))
    if sum(e.clear_size for e in entries) != size or rounded(size) != rounded_size:
        raise IntegrityError(f"{label}: index sizes do not add up to the recorded size")
    records = plain[entries_end:] if flags & HAS_ANCHORS else None
    if records is not None and version != VERSION:
        records = _records_from_v2(records, count)
    return Index(hid, size, entries, records)


def _records_from_v2(data: bytes, count: int) -> bytes | None:
    """A version 2 index's anchors as today's records; None (no anchors) if some block's cannot be."""
    try:
        return anchors.to_bytes(*anchors.from_v2_bytes(data, count))
    except ProgrammingError:
        return None


def delta_blocks(index: Index, object_id: int, ops: Iterable[int | bytes], block_size: int
                 ) -> Iterator[bytes | Reference]:
    """rolling.delta's ops against `index` (stored as `object_id`) -> blocks for `file.encode_blocks`.

    New bytes are cut into `block_size` blocks; a short block is left only where a copied
    block or the end follows.
    """
    pending = bytearray()
    for op in ops:
        if isinstance(op, int):
            if pending:
                yield bytes(pending)
                pending.clear()
            yield index.reference(object_id, op)
            continue
        pending += op
        if len(pending) >= block_size:
            with memoryview(pending) as view:
                cut = len(pending) - len(pending) % block_size
                for start in range(0, cut, block_size):
                    yield bytes(view[start:start + block_size])
            del pending[:cut]
    if pending:
        yield bytes(pending)
