"""The store's keyless view of file objects: validate uploads, resolve references, count space.

Nothing here takes a key. The store reads the clear header, the place (container id and the
opaque sealed name), the kind and length of every block record, and the end record; it
copies sealed records between objects byte for byte, and it writes references. It cannot
read a name, an attribute or a byte of file data, and anything it writes that the client did
not seal fails the client's checks (see docs/FORMATS.md for the format and threat model).
"""

from __future__ import annotations

import io
from array import array
from typing import BinaryIO, Callable, NamedTuple

from boxbox.crypto.seal import OVERHEAD
from boxbox.errors import FormatError
from boxbox.objects.file import (
    COPY_CHUNK, END, FOOTER, HEADER, INDEX_MAGIC as FOOTER_MAGIC, MAX_BLOCKS, MAX_INDEX, MAX_RECORD, PLACE, R_END,
    R_RAW, R_REF, R_ZLIB, RECORD, REF, Sink, is_seekable, parse_end, parse_header, read_exact, read_place,
)


class BlockRecord(NamedTuple):
    """Where block k of an object is stored: a sealed record in it, or a reference elsewhere."""

    kind: int
    offset: int
    length: int
    ref_object: int
    ref_block: int


class FileLayout(NamedTuple):
    """The keyless view of a file object: everything the store may know, nothing it may not."""

    version: int
    cipher_id: int
    hash_id: int
    uid: bytes
    mtime_ns: int
    container_id: int
    block_count: int
    rounded_size: int
    prefix: bytes
    tail: bytes
    kinds: bytes
    offsets: array
    lengths: array
    refs: dict[int, tuple[int, int]]
    total_size: int

    def block(self, k: int) -> BlockRecord:
        if not 0 <= k < self.block_count:
            raise FormatError(f"block {k} does not exist (the object has {self.block_count} blocks)")
        ref_object, ref_block = self.refs.get(k, (0, 0))
        return BlockRecord(self.kinds[k], self.offsets[k], self.lengths[k], ref_object, ref_block)

    @property
    def sealed_name(self) -> bytes:
        n = PLACE.unpack_from(self.prefix, HEADER.size)[1]
        return self.prefix[HEADER.size + PLACE.size:HEADER.size + PLACE.size + n]

    @property
    def stored_data_size(self) -> int:
        """Bytes of sealed block data held in this object itself (references excluded)."""
        return sum(length for kind, length in zip(self.kinds, self.lengths) if kind != R_REF)

    def index_blob(self) -> bytes:
        """What a client needs to open and place this object's index: prefix + end record payload."""
        return self.prefix + self.tail[RECORD.size:-FOOTER.size]


def skip(stream: BinaryIO, n: int, seekable: bool, what: str) -> None:
    """Pass over n bytes: seek when possible (a truncation then shows at the next read)."""
    if seekable:
        stream.seek(n, io.SEEK_CUR)
        return
    while n:
        chunk = stream.read(min(n, COPY_CHUNK))
        if not chunk:
            raise FormatError(f"{what}: truncated, {n} bytes missing")
        n -= len(chunk)


def read_file_layout(stream: BinaryIO) -> FileLayout:
    """Parse a whole file object without keys (FormatError on any fault); memory ~20 B per block.

    A seekable stream is skipped through; any other is read to the end. The stream holds
    exactly this one object; block offsets count from its first byte.
    """
    seekable = is_seekable(stream)
    header_bytes = read_exact(stream, HEADER.size, "file object header")
    header = parse_header(header_bytes)
    place, container, _, _ = read_place(stream)
    prefix = header_bytes + place
    pos = len(prefix)
    kinds = bytearray()
    offsets = array("Q")
    lengths = array("I")
    refs: dict[int, tuple[int, int]] = {}
    while True:
        k = len(kinds)
        kind, length = RECORD.unpack(read_exact(stream, RECORD.size, f"block record {k}"))
        if kind == R_END:
            break
        if k >= MAX_BLOCKS:
            raise FormatError(f"file object has more than {MAX_BLOCKS} blocks")
        if kind == R_REF:
            if length != REF.size:
                raise FormatError(f"block {k}: reference record is {length} bytes, expected {REF.size}")
            refs[k] = REF.unpack(read_exact(stream, REF.size, f"block record {k}"))
        elif kind in (R_RAW, R_ZLIB):
            if not OVERHEAD < length <= MAX_RECORD:
                raise FormatError(f"block {k}: record length {length}, expected {OVERHEAD + 1} to {MAX_RECORD}")
            skip(stream, length, seekable, f"block {k}")
        else:
            raise FormatError(f"block {k}: unknown record kind {kind}")
        kinds.append(kind)
        offsets.append(pos)
        lengths.append(length)
        pos += RECORD.size + length
    count = len(kinds)
    rsize, tail = read_tail(stream, length, count)
    return FileLayout(header.version, header.cipher_id, header.hash_id, header.uid, header.mtime_ns, container,
                      count, rsize, prefix, tail, bytes(kinds), offsets, lengths, refs, pos + len(tail))


def read_tail(stream: BinaryIO, length: int, block_count: int) -> tuple[int, bytes]:
    """Read and check what follows the R_END record header: the end record of `length` bytes,
    the footer, then nothing; returns (rounded size, the whole tail as stored)."""
    if not END.size + OVERHEAD <= length <= END.size + MAX_INDEX:
        raise FormatError(f"end record is {length} bytes, expected {END.size + OVERHEAD} to {END.size + MAX_INDEX}")
    payload = read_exact(stream, length, "file object index")
    count, rsize, _ = parse_end(payload)
    if count != block_count:
        raise FormatError(f"end record lists {count} blocks, the object has {block_count}")
    footer = read_exact(stream, FOOTER.size, "file object footer")
    ilen, mg = FOOTER.unpack(footer)
    if mg != FOOTER_MAGIC or ilen != length - END.size:
        raise FormatError(f"footer (magic {mg!r}, index length {ilen}) does not match the end record")
    if stream.read(1):
        raise FormatError("data after the file object footer")
    return rsize, RECORD.pack(R_END, length) + payload + footer


def replace_place(prefix: bytes, place: bytes) -> bytes:
    """Keyless: a layout's prefix with its place replaced by a client-made one (after a move)."""
    parse_header(prefix)
    stream = io.BytesIO(place)
    read_place(stream)
    if stream.read(1):
        raise FormatError(f"place has {len(place) - stream.tell() + 1} bytes of trailing data")
    return prefix[:HEADER.size] + place


def read_block_record(stream: BinaryIO, layout: FileLayout, k: int) -> bytes:
    """The whole sealed record of block k, read from a seekable stream of the object alone."""
    rec = layout.block(k)
    if rec.kind == R_REF:
        raise FormatError(f"block {k} is a reference to block {rec.ref_block} of object {rec.ref_object:#x}")
    stream.seek(rec.offset)
    data = read_exact(stream, RECORD.size + rec.length, f"block {k}")
    if RECORD.unpack_from(data) != (rec.kind, rec.length):
        raise FormatError(f"block {k}: the record at offset {rec.offset} changed since the layout was read")
    return data


class FileObjectWriter:
    """Keyless: writes a file object from client-sealed pieces, checking the structure as it goes."""

    def __init__(self, sink: Sink, prefix: bytes) -> None:
        stream = io.BytesIO(prefix)
        parse_header(read_exact(stream, HEADER.size, "file object header"))
        read_place(stream)
        if stream.tell() != len(prefix):
            raise FormatError(f"prefix has {len(prefix) - stream.tell()} bytes after the place")
        self.sink = sink
        self.count = 0
        self.size = len(prefix)
        sink.write(prefix)

    def copy_record(self, record: bytes) -> None:
        """Append a sealed block record exactly as `read_block_record` returned it."""
        if len(record) < RECORD.size:
            raise FormatError(f"block record is {len(record)} bytes, shorter than its head")
        kind, length = RECORD.unpack_from(record)
        if kind not in (R_RAW, R_ZLIB) or length != len(record) - RECORD.size or not OVERHEAD < length <= MAX_RECORD:
            raise FormatError(f"not a sealed block record: kind {kind}, length {length}, {len(record)} bytes")
        self._count()
        self.sink.write(record)
        self.size += len(record)

    def add_reference(self, object_id: int, block: int) -> None:
        """Append "block `block` of object `object_id`" (a reverse patch, or an unresolved diff)."""
        self._count()
        self.sink.write(RECORD.pack(R_REF, REF.size) + REF.pack(object_id, block))
        self.size += RECORD.size + REF.size

    def _count(self) -> None:
        if self.count >= MAX_BLOCKS:
            raise FormatError(f"file object would have more than {MAX_BLOCKS} blocks")
        self.count += 1

    def finish(self, tail: bytes) -> int:
        """Append the client's end record, index and footer (`FileLayout.tail`); return the object size."""
        if len(tail) < RECORD.size + END.size + FOOTER.size:
            raise FormatError(f"tail is {len(tail)} bytes, too short")
        kind, length = RECORD.unpack_from(tail)
        count, _ = END.unpack_from(tail, RECORD.size)
        if kind != R_END or length != len(tail) - RECORD.size - FOOTER.size:
            raise FormatError(f"tail is not an end record + footer (kind {kind}, length {length})")
        if count != self.count:
            raise FormatError(f"the index lists {count} blocks, {self.count} were written")
        self.sink.write(tail)
        self.size += len(tail)
        return self.size


def resolve_references(layout: FileLayout, source: BinaryIO, sink: Sink,
                       fetch: Callable[[int, int], bytes]) -> int:
    """Write the object with every reference replaced by `fetch(object_id, block)` -> sealed record.

    Turns a diff upload into a complete object, or a reverse patch back into a whole file,
    without keys; `fetch` is usually `read_block_record` on the referenced object.
    """
    writer = FileObjectWriter(sink, layout.prefix)
    for k in range(layout.block_count):
        if layout.kinds[k] == R_REF:
            writer.copy_record(fetch(*layout.refs[k]))
        else:
            writer.copy_record(read_block_record(source, layout, k))
    return writer.finish(layout.tail)


def write_reverse_patch(old: FileLayout, old_source: BinaryIO, old_id: int, diff: FileLayout, new_id: int,
                        sink: Sink) -> int:
    """Rewrite the old version as a patch: each block the new version took from it becomes a reference.

    `diff` is the layout of the client's diff upload against `old_id` (its references say
    which old blocks it reuses); `new_id` is the complete object built from it. The old
    object's index stays valid because the referenced records are byte-identical.
    """
    reused: dict[int, int] = {}
    for j, (obj, blk) in sorted(diff.refs.items()):
        if obj == old_id:
            reused.setdefault(blk, j)
    writer = FileObjectWriter(sink, old.prefix)
    for k in range(old.block_count):
        if k in reused:
            writer.add_reference(new_id, reused[k])
        elif old.kinds[k] == R_REF:
            writer.add_reference(*old.refs[k])
        else:
            writer.copy_record(read_block_record(old_source, old, k))
    return writer.finish(old.tail)
