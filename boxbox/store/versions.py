"""Versions without keys: diff uploads made whole, old versions kept as reverse patches, chains read back.

A version chain is a run of file objects, oldest first, each a reverse patch whose REF
records point only at the next newer object, ending in one complete object:

    v1 (patch) -> v2 (patch) -> ... -> v_n (whole)

Directory entries mirror it: `entry.newer` is the object this one's references point at
(0 for a whole object), `entry.older` the patch that points at this one (0 for none). The
objects' own REF records are authoritative; the links are what housekeeping and `check`
navigate by, and `check --fix` rebuilds them from the objects.

Everything here copies sealed records byte for byte (`boxbox.objects.layout`): the store
never needs a key, and the client's end-to-end checks still cover every byte it receives.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING, BinaryIO, Iterator

from boxbox.crypto.seal import OVERHEAD
from boxbox.errors import FormatError, IntegrityError, NotFound
from boxbox.objects.file import (
    HEADER, MAX_BLOCKS, MAX_RECORD, R_END, R_RAW, R_REF, R_ZLIB, RECORD, REF, Sink, parse_header, read_exact,
    read_place,
)
from boxbox.objects.layout import FileLayout, FileObjectWriter, read_block_record, read_file_layout, read_tail

if TYPE_CHECKING:
    from boxbox.store.account import Account

#: Writes into a new object are gathered into pieces this big (one per record was ~2x slower).
FLUSH_AT = 256 << 10
#: Readers kept open while a chain is read: blocks mostly come from the newest object or a few
#: others, so a small LRU serves a chain of 100 without 300 open descriptors.
OPEN_READERS = 4
#: References followed for one block before the chain is declared a loop (chains are <= ~1000).
MAX_HOPS = 100_000


class _Gather:
    """Buffers small writes into FLUSH_AT pieces for the object's put stream."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._buf = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._sink.write(self._buf)
            self._buf = bytearray()


def combine_diff(upload: BinaryIO, base: FileLayout, base_source: BinaryIO, base_id: int, sink: Sink) -> FileLayout:
    """Stream a diff upload into `sink` as a complete object; returns the layout of the upload itself.

    Each REF record must name block k < base.block_count of `base_id`; it is replaced by a
    byte copy of that sealed record. Memory: one record at a time plus ~20 bytes a block.
    The upload is checked in the same order and with the same limits as `read_file_layout`.
    """
    out = _Gather(sink)
    header_bytes = read_exact(upload, HEADER.size, "file object header")
    header = parse_header(header_bytes)
    place, container, _, _ = read_place(upload)
    prefix = header_bytes + place
    writer = FileObjectWriter(out, prefix)
    pos = len(prefix)
    kinds = bytearray()
    offsets = array("Q")
    lengths = array("I")
    refs: dict[int, tuple[int, int]] = {}
    while True:
        k = len(kinds)
        kind, length = RECORD.unpack(read_exact(upload, RECORD.size, f"block record {k}"))
        if kind == R_END:
            break
        if k >= MAX_BLOCKS:
            raise FormatError(f"file object has more than {MAX_BLOCKS} blocks")
        if kind == R_REF:
            if length != REF.size:
                raise FormatError(f"block {k}: reference record is {length} bytes, expected {REF.size}")
            obj, blk = REF.unpack(read_exact(upload, REF.size, f"block record {k}"))
            if obj != base_id:
                raise FormatError(f"block {k} refers to object {obj:#x}; this diff is against {base_id:#x}")
            if not 0 <= blk < base.block_count:
                raise FormatError(f"block {k} refers to block {blk} of object {base_id:#x}, "
                                  f"which has {base.block_count} blocks")
            writer.copy_record(read_block_record(base_source, base, blk))
            refs[k] = (obj, blk)
        elif kind in (R_RAW, R_ZLIB):
            if not OVERHEAD < length <= MAX_RECORD:
                raise FormatError(f"block {k}: record length {length}, expected {OVERHEAD + 1} to {MAX_RECORD}")
            writer.copy_record(RECORD.pack(kind, length) + read_exact(upload, length, f"block {k}"))
        else:
            raise FormatError(f"block {k}: unknown record kind {kind}")
        kinds.append(kind)
        offsets.append(pos)
        lengths.append(length)
        pos += RECORD.size + length
    count = len(kinds)
    rsize, tail = read_tail(upload, length, count)
    writer.finish(tail)
    out.flush()
    return FileLayout(header.version, header.cipher_id, header.hash_id, header.uid, header.mtime_ns, container,
                      count, rsize, prefix, tail, bytes(kinds), offsets, lengths, refs, pos + len(tail))


def reused_blocks(diff: FileLayout, base_id: int) -> int:
    """How many distinct blocks of `base_id` the diff took (0: the versions share nothing)."""
    return len({blk for obj, blk in diff.refs.values() if obj == base_id})


def merge_past(older: FileLayout, older_source: BinaryIO, middle_id: int, middle: FileLayout,
               middle_source: BinaryIO, sink: Sink) -> set[int]:
    """Rewrite patch `older` so it no longer needs `middle_id` (which is about to be deleted).

    A reference to a block the middle version stores becomes a copy of that record; a
    reference to a block the middle version itself refers onwards becomes that reference.
    The index is unchanged: the clear content of every block stays the same. Returns the
    objects the rewritten patch refers to — empty when every shared block was the middle
    version's own, and the result is a whole object.
    """
    out = _Gather(sink)
    writer = FileObjectWriter(out, older.prefix)
    targets: set[int] = set()
    for k in range(older.block_count):
        if older.kinds[k] != R_REF:
            writer.copy_record(read_block_record(older_source, older, k))
            continue
        obj, blk = older.refs[k]
        if obj != middle_id:
            writer.add_reference(obj, blk)
            targets.add(obj)
            continue
        rec = middle.block(blk)
        if rec.kind == R_REF:
            writer.add_reference(rec.ref_object, rec.ref_block)
            targets.add(rec.ref_object)
        else:
            writer.copy_record(read_block_record(middle_source, middle, blk))
    writer.finish(older.tail)
    out.flush()
    return targets


def ref_targets(layout: FileLayout) -> set[int]:
    """The objects a file object refers to (empty for a whole object)."""
    return {obj for obj, _ in layout.refs.values()}


class ChainReader:
    """Reads any version as a complete file object, following references down the chain.

    Memory: the block layout of each object the chain touches (~20 bytes a block) and one
    record at a time; at most OPEN_READERS objects are open at once.
    """

    def __init__(self, account: "Account") -> None:
        self._account = account
        self._layouts: dict[int, FileLayout] = {}
        self._readers: OrderedDict[int, BinaryIO] = OrderedDict()

    def _reader(self, object_id: int) -> BinaryIO:
        f = self._readers.get(object_id)
        if f is not None:
            self._readers.move_to_end(object_id)
            return f
        f = self._account.open_object(object_id)
        self._readers[object_id] = f
        while len(self._readers) > OPEN_READERS:
            _, old = self._readers.popitem(last=False)
            old.close()
        return f

    def layout(self, object_id: int) -> FileLayout:
        layout = self._layouts.get(object_id)
        if layout is None:
            f = self._reader(object_id)
            f.seek(0)
            try:
                layout = read_file_layout(f)
            except FormatError as e:
                raise IntegrityError(f"object {object_id:#x} in a version chain: {e.args[0]}") from None
            self._layouts[object_id] = layout
        return layout

    def record(self, object_id: int, block: int) -> bytes:
        """The sealed record of block `block` of `object_id`, wherever down the chain it is stored."""
        for _ in range(MAX_HOPS):
            layout = self.layout(object_id)
            try:
                rec = layout.block(block)
            except FormatError as e:
                raise IntegrityError(f"object {object_id:#x}: {e.args[0]}") from None
            if rec.kind != R_REF:
                return read_block_record(self._reader(object_id), layout, block)
            object_id, block = rec.ref_object, rec.ref_block
        raise IntegrityError(f"object {object_id:#x}: references loop (more than {MAX_HOPS} hops)")

    def stream(self, object_id: int) -> Iterator[bytes]:
        """The complete object, in pieces of about FLUSH_AT bytes; closes its readers at the end."""
        try:
            layout = self.layout(object_id)
            buf = bytearray(layout.prefix)
            for k in range(layout.block_count):
                if layout.kinds[k] == R_REF:
                    buf += self.record(*layout.refs[k])
                else:
                    buf += read_block_record(self._reader(object_id), layout, k)
                if len(buf) >= FLUSH_AT:
                    yield bytes(buf)
                    buf.clear()
            buf += layout.tail
            yield bytes(buf)
        finally:
            self.close()

    def close(self) -> None:
        for f in self._readers.values():
            f.close()
        self._readers.clear()


def open_version(account: "Account", object_id: int) -> Iterator[bytes]:
    """A version as a stream of a complete object; NotFound if the object does not exist."""
    if not account.exists(object_id):
        raise NotFound(f"object {object_id:#x}")
    return ChainReader(account).stream(object_id)
