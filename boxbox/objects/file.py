"""File objects: one streamed format for whole files, diff uploads and reverse patches.

Byte layout (little-endian). The store reads every clear part without keys.

    FIXED HEADER, 32 bytes, clear; bound into the index's associated data
      0   4   magic b"BXFO"
      4   1   version (2: the index names each block's seal tag; version 1 is not read)
      5   1   object kind (1 = file data)
      6   1   cipher id (1 = AES-256-GCM, 2 = ChaCha20-Poly1305)
      7   1   strong hash id (1 = sha256, 2 = blake2b; truncated to 16 bytes)
      8   16  object uid: random, chosen by the client; ties index and place to this object
      24  8   mtime, ns since the epoch (signed)
    PLACE, clear head then sealed parts; replaceable as a unit when the object is moved
      32  8   container (directory) object id
      40  2   sealed name length N
      42  4   sealed attributes length A
      46  N   sealed name: AES-SIV, the same bytes as the directory entry's (context: container id)
      .   A   sealed attributes: AES-256-GCM, AD = b"BXFO place" + uid + container id + sealed name
    BLOCK RECORDS, one per block, in file order; record head 5 bytes: kind u8, length u32
      kind 1 RAW   length bytes: sealed block, AD = magic + version + kind
      kind 2 ZLIB  the same, the sealed data is a zlib stream
      kind 3 REF   length 12: u64 object id, u32 block number - "block k of object X", resolved
                   by the store by copying that object's record here (diff uploads, reverse patches)
    END RECORD, kind 0, length 12 + L
      +0  4   block count
      +4  8   clear size rounded up to 4 KiB (the exact size is sealed in the index)
      +12 L   sealed index: AD = fixed header + block count + rounded size
    FOOTER, 8 bytes: u32 L, magic b"BXFI" - a seekable reader finds the index from the end

    The index plaintext is declared in boxbox/objects/index.py.

Blocks are sealed independently of the object (their AD names only the format and kind) so the
store can copy them between objects without keys (diff references, reverse patches). The
sealed index binds each position to one seal: its stored size and AEAD tag. A record that
opens and carries the tag the index names for its position is that seal, byte for byte, so
decode checks the tag and the AEAD and never hashes clear data (the SHA-256 of every block
was about a quarter of decode time). The index is bound to the header (uid) by its AD.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from typing import Any, BinaryIO, Iterable, Iterator, NamedTuple, Protocol

from boxbox import magic
from boxbox.crypto import seal as sealing
from boxbox.crypto.keys import Keys
from boxbox.errors import FormatError, IntegrityError, ProgrammingError
from boxbox.objects import index as index_mod
from boxbox.objects.attributes import MAX_ATTRIBUTES_SIZE, Attributes
from boxbox.objects.index import MAX_BLOCKS, Index, IndexBuilder, IndexEntry, Reference, parse_index, rounded
from boxbox.rolling.checksum import HASH_IDS, HASHES, strong_function, weak_checksum

MAGIC = magic.FILE_OBJECT
INDEX_MAGIC = magic.FILE_INDEX  # also the footer's magic
VERSION = 2
SUPPORTED_VERSIONS = (2,)
KIND_FILE = 1
HEADER = struct.Struct("<4sBBBB16sq")
PLACE = struct.Struct("<QHI")
RECORD = struct.Struct("<BI")
REF = struct.Struct("<QI")
END = struct.Struct("<IQ")
FOOTER = struct.Struct("<I4s")
assert (HEADER.size, PLACE.size, RECORD.size, REF.size, END.size, FOOTER.size) == (32, 14, 5, 12, 12, 8)

R_END, R_RAW, R_ZLIB, R_REF = 0, 1, 2, 3
UID_SIZE = 16
#: largest clear block (rolling's layout grows blocks to at most 512 KiB; allow headroom)
MAX_BLOCK_SIZE = 16 << 20
MAX_RECORD = MAX_BLOCK_SIZE + sealing.OVERHEAD
TAG = sealing.TAG_SIZE
MAX_INDEX = sealing.OVERHEAD + index_mod.MAX_SIZE
MAX_PLACE_ATTRS = MAX_ATTRIBUTES_SIZE + sealing.OVERHEAD
#: compressibility probe: the first PROBE bytes are compressed and flushed first, and the
#: same compressor goes on with the rest only if they shrank (so the probe costs nothing on
#: compressible data); blocks of PROBE_MID or more get a second chance from a middle sample.
#: zlib-1 runs at ~55 MB/s on incompressible data: 16 KiB blocks of it cost ~300 us each,
#: a 2 KiB probe ~37 us (measured here).
#: level 1: 97 MB/s on real data (ratio 0.45) against 47 MB/s for level 6 (PERFORMANCE.md)
ZLIB_LEVEL = 1
PROBE = 2048
PROBE_MID = 32768
PROBE_KEEP = 0.97
COPY_CHUNK = 1 << 20
#: decode reads a non-wire source in pieces of this size (wire streams come in 256 KiB frames)
READ_SIZE = 256 << 10
#: clear bytes decoded before they are written in one call: big enough that the per-write cost
#: vanishes, small enough to stay in the CPU caches
WRITE_BATCH = 256 << 10
PLACE_AAD = b"BXFO place"


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> Any: ...


class EncodedFile(NamedTuple):
    uid: bytes
    block_count: int
    size: int
    stored_size: int


class DecodedFile(NamedTuple):
    name: bytes
    container_id: int
    attributes: Attributes
    size: int
    block_count: int
    uid: bytes


def hash_id(hash_name: str) -> int:
    """Strong hash name -> header id."""
    try:
        return HASH_IDS[hash_name]
    except KeyError:
        raise ProgrammingError(f"unknown strong hash {hash_name!r}, expected one of {', '.join(HASH_IDS)}") from None


def _block_aad(kind: int) -> bytes:
    return MAGIC + bytes((VERSION, kind))


_BLOCK_AAD = {R_RAW: _block_aad(R_RAW), R_ZLIB: _block_aad(R_ZLIB)}


def read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    """Read exactly n bytes in bounded chunks, so a lying length cannot force a huge allocation."""
    parts = []
    got = 0
    while got < n:
        chunk = stream.read(min(n - got, COPY_CHUNK))
        if not chunk:
            raise FormatError(f"{what}: truncated, expected {n} bytes, got {got}")
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def is_seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class Header(NamedTuple):
    version: int
    kind: int
    cipher_id: int
    hash_id: int
    uid: bytes
    mtime_ns: int


def parse_header(data: bytes) -> Header:
    """Fixed header: length, magic, version, then the ids; FormatError on any fault."""
    if len(data) < HEADER.size:
        raise FormatError(f"file object header is {len(data)} bytes, expected {HEADER.size}")
    mg, version, kind, cid, hid, uid, mtime = HEADER.unpack_from(data)
    if mg != MAGIC:
        raise FormatError(f"not a file object: magic {mg!r}, expected {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"file object version {version} is not supported (this boxbox reads {VERSION})")
    if kind != KIND_FILE:
        raise FormatError(f"file object kind {kind}, expected {KIND_FILE}")
    if cid not in sealing.CIPHERS:
        raise FormatError(f"unknown cipher id {cid} in file object header")
    if hid not in HASHES:
        raise FormatError(f"unknown strong hash id {hid} in file object header")
    return Header(version, kind, cid, hid, uid, mtime)


def read_place(stream: BinaryIO) -> tuple[bytes, int, bytes, bytes]:
    """Read the place: (raw bytes, container id, sealed name, sealed attributes)."""
    head = read_exact(stream, PLACE.size, "file object place")
    container, nlen, alen = PLACE.unpack(head)
    if not sealing.SIV_SIZE < nlen <= sealing.MAX_SEALED_NAME:
        raise FormatError(f"file object sealed name is {nlen} bytes, expected {sealing.SIV_SIZE + 1} to "
                          f"{sealing.MAX_SEALED_NAME}")
    if not sealing.OVERHEAD <= alen <= MAX_PLACE_ATTRS:
        raise FormatError(f"file object sealed attributes are {alen} bytes, expected {sealing.OVERHEAD} to "
                          f"{MAX_PLACE_ATTRS}")
    body = read_exact(stream, nlen + alen, "file object place")
    return head + body, container, body[:nlen], body[nlen:]


def _place_aad(uid: bytes, container_id: int, sealed_name: bytes) -> bytes:
    return PLACE_AAD + uid + container_id.to_bytes(8, "little") + sealed_name


def seal_place(keys: Keys, uid: bytes, container_id: int, name: bytes, attributes: Attributes) -> bytes:
    """The place section for object `uid` filed as `name` in directory `container_id`.

    A client moving or renaming an object makes a new one of these; the store swaps it in
    with `replace_place` without keys.
    """
    sealed_name = sealing.seal_entry_name(keys, container_id, name)
    sealed_attrs = sealing.seal_attributes(keys, attributes.pack(), _place_aad(uid, container_id, sealed_name))
    return PLACE.pack(container_id, len(sealed_name), len(sealed_attrs)) + sealed_name + sealed_attrs


class FileEncoder:
    """Streams a file object into `sink` block by block.

    Memory: one block, a batch of up to 1 MiB for the anchors, and the index (124 bytes a block).
    """

    def __init__(self, keys: Keys, sink: Sink, *, container_id: int, name: bytes, attributes: Attributes,
                 cipher: str = sealing.DEFAULT_CIPHER, hash_name: str = "sha256", block_size: int | None = None
                 ) -> None:
        self._strong = strong_function(hash_name)
        self.keys, self.sink, self.hash_name = keys, sink, hash_name
        self.cipher_id = sealing.cipher_id(cipher)
        self.hash_id = hash_id(hash_name)
        self.uid = os.urandom(UID_SIZE)
        self.header = HEADER.pack(MAGIC, VERSION, KIND_FILE, self.cipher_id, self.hash_id, self.uid,
                                  attributes.mtime_ns)
        self._cipher = sealing.aead(keys, "data", self.cipher_id)
        self.index = IndexBuilder(self.hash_id, block_size)
        prefix = self.header + seal_place(keys, self.uid, container_id, name, attributes)
        sink.write(prefix)
        self.stored = len(prefix)

    def _compress(self, data: bytes | memoryview) -> bytes | None:
        """zlib stream when it is smaller; None when the probes say the data will not shrink."""
        n = len(data)
        if n <= PROBE:
            packed = zlib.compress(data, ZLIB_LEVEL)
            return packed if len(packed) < n else None
        z = zlib.compressobj(ZLIB_LEVEL)
        parts = [z.compress(data[:PROBE]), z.flush(zlib.Z_SYNC_FLUSH)]
        if len(parts[0]) + len(parts[1]) >= PROBE * PROBE_KEEP:
            mid = n // 2
            if n < PROBE_MID or len(zlib.compress(data[mid:mid + PROBE], ZLIB_LEVEL)) >= PROBE * PROBE_KEEP:
                return None
        parts += [z.compress(data[PROBE:]), z.flush()]
        packed = b"".join(parts)
        return packed if len(packed) < n else None

    def add_block(self, data: bytes | memoryview) -> IndexEntry:
        """Seal one block of clear data (the caller chooses block sizes; see rolling.layout)."""
        n = len(data)
        if not 0 < n <= MAX_BLOCK_SIZE:
            raise ProgrammingError(f"block of {n} bytes, expected 1 to {MAX_BLOCK_SIZE}")
        packed = self._compress(data)
        kind = R_RAW if packed is None else R_ZLIB
        sealed = sealing.seal(self._cipher, data if packed is None else packed, _BLOCK_AAD[kind])
        entry = IndexEntry(n, len(sealed), weak_checksum(data), self._strong(data), sealed[-TAG:])
        self.index.add_block(data, entry)
        self.sink.write(RECORD.pack(kind, len(sealed)))
        self.sink.write(sealed)
        self.stored += RECORD.size + len(sealed)
        return entry

    def add_reference(self, ref: Reference) -> None:
        """A block the store copies from block `ref.block` of object `ref.object_id`."""
        if not 0 < ref.entry.clear_size <= MAX_BLOCK_SIZE:
            raise ProgrammingError(f"reference to a block of {ref.entry.clear_size} bytes")
        if len(ref.anchors) != index_mod.ANCHOR_SIZE:
            raise ProgrammingError(f"anchor record of {len(ref.anchors)} bytes, expected {index_mod.ANCHOR_SIZE}")
        self.index.add_reference(ref)
        self.sink.write(RECORD.pack(R_REF, REF.size) + REF.pack(ref.object_id, ref.block))
        self.stored += RECORD.size + REF.size

    def finish(self) -> EncodedFile:
        """Seal and write the index, the end record and the footer."""
        count, size = len(self.index.entries), self.index.size
        end = END.pack(count, rounded(size))
        sealed = sealing.seal(sealing.aead(self.keys, "index", self.cipher_id), self.index.plaintext(),
                              self.header + end)
        tail = RECORD.pack(R_END, END.size + len(sealed)) + end + sealed + FOOTER.pack(len(sealed), INDEX_MAGIC)
        self.sink.write(tail)
        self.stored += len(tail)
        return EncodedFile(self.uid, count, size, self.stored)


def _readinto_full(source: BinaryIO, buf: memoryview) -> int:
    """Fill buf unless EOF comes first (pipes and sockets return short reads)."""
    got = 0
    while got < len(buf):
        n = source.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def encode_file(keys: Keys, source: BinaryIO, sink: Sink, *, container_id: int, name: bytes,
                attributes: Attributes, size: int | None = None, block_size: int | None = None,
                cipher: str = sealing.DEFAULT_CIPHER, hash_name: str = "sha256") -> EncodedFile:
    """Encode a whole file read from `source` (to EOF) with rolling's block layout."""
    if block_size is None:
        from boxbox.rolling.layout import block_size_for

        if size is None:
            try:
                size = os.fstat(source.fileno()).st_size
            except (AttributeError, OSError, io.UnsupportedOperation):
                size = 0
        block_size = block_size_for(size)
    enc = FileEncoder(keys, sink, container_id=container_id, name=name, attributes=attributes,
                      cipher=cipher, hash_name=hash_name, block_size=block_size)
    buf = memoryview(bytearray(block_size))
    while n := _readinto_full(source, buf):
        enc.add_block(buf[:n])
    return enc.finish()


def encode_blocks(keys: Keys, blocks: Iterable[bytes | memoryview | Reference], sink: Sink, *,
                  container_id: int, name: bytes, attributes: Attributes,
                  cipher: str = sealing.DEFAULT_CIPHER, hash_name: str = "sha256",
                  block_size: int | None = None) -> EncodedFile:
    """Encode a diff upload (or any block sequence): clear blocks and references in file order.

    `block_size`, the size most clear blocks have (delta_blocks' cut), only speeds up anchors.
    """
    enc = FileEncoder(keys, sink, container_id=container_id, name=name, attributes=attributes,
                      cipher=cipher, hash_name=hash_name, block_size=block_size)
    for block in blocks:
        if isinstance(block, Reference):
            enc.add_reference(block)
        else:
            enc.add_block(block)
    return enc.finish()


def parse_end(payload: bytes) -> tuple[int, int, bytes]:
    count, rsize = END.unpack_from(payload)
    if count > MAX_BLOCKS:
        raise FormatError(f"file object claims {count} blocks, limit {MAX_BLOCKS}")
    return count, rsize, payload[END.size:]


def open_index(keys: Keys, blob: bytes, label: str = "file object", *, container_id: int | None = None,
               name: bytes | None = None) -> Index:
    """Open an index blob (`FileLayout.index_blob()`: header, place, end record): what a client diffs against.

    Pass the directory and name the client asked for, so the store cannot hand over the
    index of another file (a diff against it would make a version that fails to restore).
    """
    stream = io.BytesIO(blob)
    try:
        opened = _open_prefix(keys, stream, label, container_id, name)
        payload = stream.read()
        if len(payload) < END.size + sealing.OVERHEAD:
            raise FormatError(f"index blob ends {len(payload)} bytes after the place, too short")
        count, rsize, sealed = parse_end(payload)
    except FormatError as e:
        raise IntegrityError(f"{label}: {e}") from e
    return _open_sealed_index(keys, opened.header, opened.header_bytes + payload[:END.size], sealed, count, rsize,
                              label)


def _open_sealed_index(keys: Keys, header: Header, aad: bytes, sealed: bytes, count: int, rsize: int,
                       label: str) -> Index:
    plain = sealing.unseal(sealing.aead(keys, "index", header.cipher_id), sealed, aad, f"{label} index")
    return parse_index(plain, header.hash_id, count, rsize, label)


def _inflate(data: bytes, limit: int, what: str) -> bytes:
    """Decompress at most `limit` bytes: a block can never expand beyond what the index says."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise IntegrityError(f"{what}: compressed data is corrupt ({e})") from None
    if len(out) > limit or not d.eof or d.unused_data:
        raise IntegrityError(f"{what}: compressed data does not decode to one block of at most {limit} bytes")
    return out


def _preread_index(keys: Keys, source: BinaryIO, header: Header, header_bytes: bytes, label: str
                   ) -> tuple[Index, bytes]:
    """On a seekable source, read the index from the end first so no block is written unchecked."""
    here = source.tell()
    end = source.seek(0, io.SEEK_END)
    if end - here < RECORD.size + END.size + sealing.OVERHEAD + FOOTER.size:
        raise FormatError(f"file object is {end} bytes, too short for its end record")
    source.seek(end - FOOTER.size)
    ilen, mg = FOOTER.unpack(read_exact(source, FOOTER.size, "file object footer"))
    if mg != INDEX_MAGIC or ilen > MAX_INDEX or ilen + END.size + RECORD.size + FOOTER.size > end - here:
        raise FormatError(f"file object footer is invalid (magic {mg!r}, index length {ilen})")
    source.seek(end - FOOTER.size - ilen - END.size)
    payload = read_exact(source, END.size + ilen, "file object index")
    source.seek(here)
    count, rsize, sealed = parse_end(payload)
    return _open_sealed_index(keys, header, header_bytes + payload[:END.size], sealed, count, rsize, label), payload


def decode_file(keys: Keys, source: BinaryIO, sink: Sink, *, label: str = "file object",
                container_id: int | None = None, name: bytes | None = None) -> DecodedFile:
    """Decode and verify a whole file object; anything wrong is an IntegrityError naming `label`.

    With a seekable source the index is read first and every block is checked before it is
    written. With a stream the checks on position and content complete at the end: the
    caller must discard what reached `sink` if this raises (restore writes to a temp file).
    `container_id` and `name`, when given, must be where the object claims to be filed.
    """
    try:
        return _decode(keys, source, sink, label, container_id, name)
    except FormatError as e:
        raise IntegrityError(f"{label}: {e}") from e


def _bad_record(source: BinaryIO, kind: int, length: int, k: int, label: str) -> None:
    """Raise for a record that is not a sealed block: a reference, or garbage."""
    if kind == R_REF and length == REF.size:
        obj, blk = REF.unpack(read_exact(source, REF.size, f"block record {k}"))
        raise IntegrityError(f"{label} block {k} still refers to block {blk} of object {obj:#x}; "
                             "the store must resolve references before serving an object")
    raise FormatError(f"record kind {kind} length {length} is invalid")


class _Opened(NamedTuple):
    header_bytes: bytes
    header: Header
    container_id: int
    name: bytes
    attributes: Attributes


def _open_prefix(keys: Keys, source: BinaryIO, label: str, want_container: int | None,
                 want_name: bytes | None) -> _Opened:
    """Read and open header and place; check the place against what the directory said."""
    header_bytes = read_exact(source, HEADER.size, "file object header")
    header = parse_header(header_bytes)
    _, container, sealed_name, sealed_attrs = read_place(source)
    attrs_plain = sealing.open_attributes(keys, sealed_attrs, _place_aad(header.uid, container, sealed_name),
                                          f"{label} attributes")
    name = sealing.open_entry_name(keys, container, sealed_name, f"{label} name")
    attributes = Attributes.unpack(attrs_plain)
    if want_container is not None and container != want_container:
        raise IntegrityError(f"{label} is filed in directory {container:#x}, expected {want_container:#x}")
    if want_name is not None and name != want_name:
        raise IntegrityError(f"{label} is stored under another name than the directory entry's")
    if attributes.mtime_ns != header.mtime_ns:
        raise IntegrityError(f"{label}: header mtime does not match the sealed attributes")
    return _Opened(header_bytes, header, container, name, attributes)


class _Records:
    """The bytes of an object taken from a stream of chunks, as views into them where possible.

    A record that lies inside one chunk comes back as a memoryview of it (no copy); one that
    spans chunks is joined once. Taking whole records from 256 KiB wire frames replaced two
    `InStream.read` calls a block, each slicing a copy (88 reads and 90 `len` calls a file on
    the 2,000-file benchmark tree; ~0.12 ms of CPU a file).
    """

    __slots__ = ("_chunks", "_view", "_pos", "_end")

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")
        self._pos = self._end = 0

    def take(self, n: int, what: str) -> bytes | memoryview:
        """Exactly n bytes (callers bound n first); FormatError naming `what` when the object ends."""
        pos = self._pos
        end = pos + n
        if end <= self._end:
            self._pos = end
            return self._view[pos:end]
        return self._gather(n, what)

    def read(self, n: int) -> bytes:
        """File-like: up to n bytes, fewer only at the end (for `read_exact` and `read_place`)."""
        return bytes(self.take(n, "")) if n <= self._end - self._pos else self._gather(n, None)

    def _gather(self, n: int, what: str | None) -> bytes:
        parts = [self._view[self._pos:self._end]]
        got = self._end - self._pos
        self._pos = self._end
        while got < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                if what is None:
                    break
                raise FormatError(f"{what}: truncated, expected {n} bytes, got {got}")
            view = memoryview(chunk)
            used = min(len(view), n - got)
            parts.append(view[:used])
            got += used
            self._view, self._pos, self._end = view, used, len(view)
        return b"".join(parts)

    def at_end(self) -> bool:
        while self._pos >= self._end:
            chunk = next(self._chunks, None)
            if chunk is None:
                return True
            self._view, self._pos, self._end = memoryview(chunk), 0, len(chunk)
        return False


def _records(source: BinaryIO) -> _Records:
    """Chunks straight from the wire (`InStream.chunks`, one frame each), else reads of READ_SIZE."""
    chunks = getattr(source, "chunks", None)
    return _Records(chunks() if chunks is not None else iter(functools.partial(source.read, READ_SIZE), b""))


def _decode(keys: Keys, source: BinaryIO, sink: Sink, label: str, want_container: int | None,
            want_name: bytes | None) -> DecodedFile:
    if is_seekable(source):  # index first, then the blocks, each checked before it is written
        header_bytes, header, container, name, attributes = _open_prefix(keys, source, label, want_container,
                                                                         want_name)
        index, end_payload = _preread_index(keys, source, header, header_bytes, label)
        records = _records(source)
        entries: list[IndexEntry] | None = index.entries
    else:
        records = _records(source)
        header_bytes, header, container, name, attributes = _open_prefix(keys, records,  # type: ignore[arg-type]
                                                                         label, want_container, want_name)
        index, end_payload, entries = None, b"", None
    from cryptography.exceptions import InvalidTag

    decrypt = sealing.aead(keys, "data", header.cipher_id).decrypt
    take, unpack_head, nonce, overhead = records.take, RECORD.unpack, sealing.NONCE_SIZE, sealing.OVERHEAD
    max_blocks = len(entries) if entries is not None else MAX_BLOCKS
    write = sink.write
    batch: list[bytes] = []  # clear blocks waiting to be written in one call
    seen: list[tuple[int, int, bytes]] = []  # a stream's blocks (clear size, stored size, tag), checked at the end
    remember = seen.append
    batch_bytes = size = k = 0
    clear_size = MAX_BLOCK_SIZE
    try:
        while True:  # per block: keep it lean, it runs up to 4096 times a file
            kind, length = unpack_head(take(RECORD.size, "record head"))
            if kind != R_RAW and kind != R_ZLIB:
                if kind == R_END:
                    break
                _bad_record(records, kind, length, k, label)  # type: ignore[arg-type]
            if not overhead < length <= MAX_RECORD:
                raise FormatError(f"record length {length} is invalid")
            if k >= max_blocks:
                raise IntegrityError(f"{label}: more blocks than the index lists")
            view = take(length, "record")  # (what a FormatError names: no string built per block)
            tag = bytes(view[length - TAG:])
            if entries is not None:  # the index names this position's seal: check before opening and writing
                clear_size, stored_size, _, _, want_tag = entries[k]
                if stored_size != length or tag != want_tag:
                    raise IntegrityError(f"{label} block {k} is not the block the index names (swapped, moved, "
                                         "replayed or from another object)")
            try:  # sealing.unseal inlined (its wrapper cost ~5 us a block); the view saves a copy
                clear = decrypt(view[:nonce], view[nonce:], _BLOCK_AAD[kind])
            except InvalidTag:
                raise IntegrityError(f"{label} block {k}: authentication failed (tampered, damaged or sealed with "
                                     "other keys)") from None
            if kind == R_ZLIB:
                clear = _inflate(clear, clear_size, f"{label} block {k}")
            if entries is None:
                remember((len(clear), length, tag))
            elif len(clear) != clear_size:
                raise IntegrityError(f"{label} block {k}: {len(clear)} clear bytes, the index says {clear_size}")
            batch.append(clear)
            batch_bytes += len(clear)
            k += 1
            if batch_bytes >= WRITE_BATCH:
                write(batch[0] if len(batch) == 1 else b"".join(batch))
                batch.clear()
                size += batch_bytes
                batch_bytes = 0
    except FormatError as e:
        raise FormatError(f"block {k}: {e}") from None
    if batch:
        write(batch[0] if len(batch) == 1 else b"".join(batch))
    size += batch_bytes
    if not END.size + sealing.OVERHEAD <= length <= END.size + MAX_INDEX:
        raise FormatError(f"end record is {length} bytes, expected {END.size + sealing.OVERHEAD} to "
                          f"{END.size + MAX_INDEX}")
    payload = bytes(take(length, "file object index"))
    ilen, mg = FOOTER.unpack(take(FOOTER.size, "file object footer"))
    if mg != INDEX_MAGIC or ilen != length - END.size:
        raise FormatError(f"footer (magic {mg!r}, index length {ilen}) does not match the end record")
    if not records.at_end():
        raise FormatError("data after the footer")
    if index is None:
        count, rsize, sealed = parse_end(payload)
        index = _open_sealed_index(keys, header, header_bytes + payload[:END.size], sealed, count, rsize, label)
        _check_seen(seen, index.entries, label)
    elif payload != end_payload:
        raise IntegrityError(f"{label}: the index changed while it was read")
    if k != len(index.entries) or size != index.size:
        raise IntegrityError(f"{label}: {k} blocks / {size} bytes read, the index lists "
                             f"{len(index.entries)} / {index.size}")
    return DecodedFile(name, container, attributes, size, k, header.uid)


def _check_seen(seen: list[tuple[int, int, bytes]], entries: list[IndexEntry], label: str) -> None:
    """A streamed object's blocks against its index, which came last: one list comparison, in C."""
    want = [(e.clear_size, e.stored_size, e.tag) for e in entries]
    if seen != want:
        bad = next((j for j, (a, b) in enumerate(zip(seen, want)) if a != b), min(len(seen), len(want)))
        raise IntegrityError(f"{label} block {bad} does not match the index (swapped, moved, dropped, added, "
                             "replayed or from another object)")
