"""The serialized delta and the patch that applies it, both streamed in bounded memory.

Layout (little-endian), written and parsed as a stream of pieces:

    HEADER  4s magic "BXDL" | B version | 3x reserved, zero                  (8 bytes)
    then records, each a tag byte and its payload:
      COPY  0x01  I first block | I count      old blocks first .. first+count-1, count >= 1
      LIT   0x02  I length, then length bytes  new data, 1 <= length <= MAX_LITERAL
      END   0x00  Q literal bytes | Q blocks   totals of the records before; must come last

Consecutive copies (k, k+1, ...) are coalesced into one COPY record, so an unchanged file
costs 9 bytes whatever its size. END lets the reader tell a finished delta from a cut one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from boxbox import magic
from boxbox.errors import FormatError, ProgrammingError

MAGIC = magic.DELTA
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
HEADER = struct.Struct("<4sB3s")
assert HEADER.size == 8
TAG_END = 0x00
TAG_COPY = 0x01
TAG_LIT = 0x02
COPY = struct.Struct("<BII")
assert COPY.size == 9
LIT = struct.Struct("<BI")
assert LIT.size == 5
END = struct.Struct("<BQQ")
assert END.size == 17
#: largest literal record accepted (the finder yields at most 1 MiB)
MAX_LITERAL = 16 * 1024 * 1024
#: encoder output is gathered into pieces of about this size
PIECE = 64 * 1024
MAX_BLOCK_INDEX = 0xFFFFFFFF

Op = int | bytes


def encode_delta(ops: Iterable[Op]) -> Iterator[bytes]:
    """Serialize finder output as it comes; big literals pass through without a copy."""
    out = bytearray(HEADER.pack(MAGIC, VERSION, b"\0\0\0"))
    pack_copy = COPY.pack
    pack_lit = LIT.pack
    first = -1  # pending run of copies
    run = 0
    lit_total = 0
    blocks_total = 0
    for op in ops:
        if type(op) is int:
            if run and op == first + run and op <= MAX_BLOCK_INDEX:
                run += 1
                continue
            if not 0 <= op <= MAX_BLOCK_INDEX:
                raise ProgrammingError(f"block index {op} outside 0..{MAX_BLOCK_INDEX}")
            if run:
                out += pack_copy(TAG_COPY, first, run)
                blocks_total += run
            first, run = op, 1
            continue
        if not isinstance(op, (bytes, bytearray, memoryview)):
            raise ProgrammingError(f"delta op must be int or bytes, got {type(op).__name__}")
        if run:
            out += pack_copy(TAG_COPY, first, run)
            blocks_total += run
            run = 0
        n = len(op)
        lit_total += n
        start = 0
        while start < n:
            piece = n - start if n - start <= MAX_LITERAL else MAX_LITERAL
            out += pack_lit(TAG_LIT, piece)
            if piece >= 4096:
                yield bytes(out)
                out.clear()
                yield bytes(op[start:start + piece]) if start or piece != n or type(op) is not bytes else op
            else:
                out += op[start:start + piece]
            start += piece
        if len(out) >= PIECE:
            yield bytes(out)
            out.clear()
    if run:
        out += pack_copy(TAG_COPY, first, run)
        blocks_total += run
    out += END.pack(TAG_END, lit_total, blocks_total)
    yield bytes(out)


def decode_delta(chunks: Iterable[bytes], *, block_count: int | None = None) -> Iterator[Op]:
    """Parse a serialized delta arriving in pieces; malformed or cut input raises FormatError.

    With `block_count` (blocks in the old version), a copy of a block past it is malformed
    too, caught before any of the copy is yielded.
    """
    limit = MAX_BLOCK_INDEX if block_count is None else block_count - 1
    buf = bytearray()
    at = 0  # parse position in buf
    it = iter(chunks)

    def more() -> bool:
        nonlocal at
        for chunk in it:
            try:
                view = memoryview(chunk)
            except TypeError:
                raise FormatError(f"delta: expected bytes, got {type(chunk).__name__}") from None
            if view.nbytes:
                if at:
                    del buf[:at]
                    at = 0
                buf.extend(view.cast("B") if view.ndim != 1 or view.itemsize != 1 else view)
                return True
        return False

    while len(buf) < HEADER.size:
        if not more():
            raise FormatError(f"delta: expected a {HEADER.size}-byte header, got {len(buf)} bytes")
    mag, version, reserved = HEADER.unpack_from(buf, 0)
    if mag != MAGIC:
        raise FormatError(f"delta: bad magic {bytes(mag)!r}, expected {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"delta: version {version} not supported, expected one of {sorted(SUPPORTED_VERSIONS)}")
    if reserved != b"\0\0\0":
        raise FormatError("delta: reserved header bytes are not zero")
    at = HEADER.size
    lit_total = 0
    blocks_total = 0
    while True:
        while len(buf) - at < 1:
            if not more():
                raise FormatError("delta: cut short before its END record")
        tag = buf[at]
        if tag == TAG_COPY:
            while len(buf) - at < COPY.size:
                if not more():
                    raise FormatError("delta: cut short inside a COPY record")
            _, first, n = COPY.unpack_from(buf, at)
            at += COPY.size
            if n == 0 or first + n - 1 > limit:
                raise FormatError(f"delta: COPY of {n} blocks from block {first}, "
                                  f"expected blocks 0..{limit}")
            blocks_total += n
            yield from range(first, first + n)
        elif tag == TAG_LIT:
            while len(buf) - at < LIT.size:
                if not more():
                    raise FormatError("delta: cut short inside a LIT record header")
            _, n = LIT.unpack_from(buf, at)
            if not 0 < n <= MAX_LITERAL:
                raise FormatError(f"delta: literal of {n} bytes, expected 1..{MAX_LITERAL}")
            at += LIT.size
            while len(buf) - at < n:
                if not more():
                    raise FormatError(f"delta: literal cut short: expected {n} bytes, got {len(buf) - at}")
            lit_total += n
            data = bytes(buf[at:at + n])
            at += n
            yield data
        elif tag == TAG_END:
            while len(buf) - at < END.size:
                if not more():
                    raise FormatError("delta: cut short inside the END record")
            _, lits, blocks = END.unpack_from(buf, at)
            at += END.size
            if (lits, blocks) != (lit_total, blocks_total):
                raise FormatError(f"delta: END says {lits} literal bytes and {blocks} blocks, "
                                  f"records hold {lit_total} and {blocks_total}")
            if len(buf) > at or more():
                raise FormatError("delta: data after the END record")
            return
        else:
            raise FormatError(f"delta: unknown record tag {tag:#04x} at byte {at}")


def apply(ops: Iterable[Op], read_old_block: Callable[[int], bytes], out: BinaryIO) -> int:
    """Write the new file: old block k for each int, the bytes themselves for each literal.

    Returns the bytes written. Only one old block and one literal are held at a time.
    """
    written = 0
    write = out.write
    for op in ops:
        if type(op) is int:
            data = read_old_block(op)
        elif isinstance(op, (bytes, bytearray, memoryview)):
            data = op
        else:
            raise ProgrammingError(f"delta op must be int or bytes, got {type(op).__name__}")
        write(data)
        written += len(data)
    return written
