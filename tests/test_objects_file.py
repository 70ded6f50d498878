"""File objects: round trips, every tamper case of the issue, the keyless store view, references."""

from __future__ import annotations

import io
import os
import tracemalloc
import zlib

import pytest

from boxbox.crypto.keys import Keys
from boxbox.errors import FormatError, IntegrityError
from boxbox.objects import file as fo
from boxbox.objects import index as ix
from boxbox.objects import layout as lo
from boxbox.objects.attributes import Attributes, FileType

KEYS = Keys.from_master(bytes(range(256)) * 4)
OTHER_KEYS = Keys.from_master(bytes(1024))
ATTRS = Attributes(FileType.REGULAR, 0o640, 1000, 1000, 1_700_000_000_123_456_789, 1_700_000_001_000_000_000,
                   "alice", "staff", 0, b"", ((b"user.tag", b"blue"),))
NAME = b"report \xff.txt"
DIR_ID = 0x1234


class Stream(io.RawIOBase):
    """A non-seekable reader, like a socket stream."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        return self._b.readinto(buf)


def encode(data: bytes, *, block_size: int = 4096, name: bytes = NAME, container: int = DIR_ID,
           attrs: Attributes = ATTRS, keys: Keys = KEYS, **kw) -> bytes:
    out = io.BytesIO()
    fo.encode_file(keys, io.BytesIO(data), out, container_id=container, name=name, attributes=attrs,
                   block_size=block_size, **kw)
    return out.getvalue()


def decode(obj: bytes, *, seekable: bool = True, keys: Keys = KEYS, **kw) -> bytes:
    sink = io.BytesIO()
    source = io.BytesIO(obj) if seekable else io.BufferedReader(Stream(obj))
    fo.decode_file(keys, source, sink, label="object 0x42", **kw)
    return sink.getvalue()


def mixed(n: int) -> bytes:
    text = b"the quick brown fox jumps over the lazy dog %d\n"
    half = n // 2
    return os.urandom(half) + b"".join(text % i for i in range(n // 40 + 1))[: n - half]


DATA = mixed(50_000)
OBJ = encode(DATA)


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("hash_name", ["sha256", "blake2b"])
def test_roundtrip(seekable, cipher, hash_name):
    obj = encode(DATA, cipher=cipher, hash_name=hash_name)
    sink = io.BytesIO()
    source = io.BytesIO(obj) if seekable else io.BufferedReader(Stream(obj))
    got = fo.decode_file(KEYS, source, sink, container_id=DIR_ID, name=NAME)
    assert sink.getvalue() == DATA
    assert (got.name, got.container_id, got.attributes, got.size) == (NAME, DIR_ID, ATTRS, len(DATA))
    assert got.block_count == -(-len(DATA) // 4096)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 16, 4088, 4095, 4096, 4097, 8200])
def test_sizes_at_block_edges(size):
    data = os.urandom(size)
    assert decode(encode(data)) == data
    assert decode(encode(data), seekable=False) == data


@pytest.mark.parametrize("sizes", [[8], [8, 4096, 8], [1, 2, 3], [4096, 4096, 100, 4096], [5000, 8, 16]])
def test_blocks_of_any_size_in_a_diff_upload(sizes):
    blocks = [os.urandom(n) for n in sizes]
    for nominal in (None, 4096):
        out = io.BytesIO()
        fo.encode_blocks(KEYS, blocks, out, container_id=DIR_ID, name=NAME, attributes=ATTRS, block_size=nominal)
        assert decode(out.getvalue()) == b"".join(blocks)
        index = fo.open_index(KEYS, lo.read_file_layout(io.BytesIO(out.getvalue())).index_blob())
        assert index.signature().total_size == sum(sizes)


def test_encode_chooses_rolling_block_size_and_compresses_only_what_shrinks():
    from boxbox.rolling.layout import block_size_for

    data = mixed(400_000)
    out = io.BytesIO()
    fo.encode_file(KEYS, io.BytesIO(data), out, container_id=1, name=b"f", attributes=ATTRS, size=len(data))
    layout = lo.read_file_layout(io.BytesIO(out.getvalue()))
    assert layout.block_count == -(-len(data) // block_size_for(len(data)))
    half = layout.block_count // 2
    assert set(layout.kinds[:half - 1]) == {fo.R_RAW}  # random half: stored as is
    assert set(layout.kinds[half + 1:]) == {fo.R_ZLIB}  # text half: compressed
    assert out.getbuffer().nbytes < len(data) * 0.7
    assert layout.rounded_size == ix.rounded(len(data)) and layout.rounded_size % 4096 == 0


def test_probe_skips_incompressible_large_blocks_but_compresses_text():
    enc = fo.FileEncoder(KEYS, io.BytesIO(), container_id=1, name=b"f", attributes=ATTRS)
    assert enc._compress(os.urandom(256 * 1024)) is None
    assert enc._compress(os.urandom(16 * 1024)) is None
    assert zlib.decompress(enc._compress(b"abc" * 100_000)) == b"abc" * 100_000
    assert enc._compress(os.urandom(100)) is None  # small: compressed and found larger
    assert enc._compress(b"a" * 100) is not None
    # random start, text after: the middle sample rescues the block
    data = os.urandom(20_000) + b"text " * 20_000
    assert len(enc._compress(data)) < len(data) * 0.5


def test_wrong_keys_name_or_directory_is_integrity_error():
    with pytest.raises(IntegrityError, match="object 0x42"):
        decode(OBJ, keys=OTHER_KEYS)
    with pytest.raises(IntegrityError, match="object 0x42 is filed in directory 0x1234, expected 0x99"):
        decode(OBJ, container_id=0x99)
    with pytest.raises(IntegrityError, match="another name"):
        decode(OBJ, name=b"other.txt")


def _records(obj: bytes) -> tuple[fo.FileLayout, list[bytes]]:
    layout = lo.read_file_layout(io.BytesIO(obj))
    return layout, [lo.read_block_record(io.BytesIO(obj), layout, k) for k in range(layout.block_count)]


def _assemble(layout, records, tail=None, prefix=None) -> bytes:
    out = io.BytesIO()
    w = lo.FileObjectWriter(out, prefix or layout.prefix)
    for r in records:
        w.copy_record(r)
    w.finish(tail or layout.tail)
    return out.getvalue()


@pytest.mark.parametrize("seekable", [True, False])
def test_swapped_dropped_duplicated_blocks(seekable):
    layout, recs = _records(OBJ)
    assert _assemble(layout, recs) == OBJ
    swapped = recs[:]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    with pytest.raises(IntegrityError, match="object 0x42"):
        decode(_assemble(layout, swapped), seekable=seekable)
    with pytest.raises(FormatError):  # the writer itself refuses a wrong block count
        _assemble(layout, recs[:-1])
    dropped = recs[:3] + recs[4:] + [recs[0]]
    with pytest.raises(IntegrityError):
        decode(_assemble(layout, dropped), seekable=seekable)


@pytest.mark.parametrize("seekable", [True, False])
def test_block_from_another_file_and_index_from_another_object(seekable):
    other = encode(mixed(50_000))
    layout, recs = _records(OBJ)
    olayout, orecs = _records(other)
    substituted = recs[:]
    substituted[3] = orecs[3]
    with pytest.raises(IntegrityError, match="object 0x42"):
        decode(_assemble(layout, substituted), seekable=seekable)
    with pytest.raises(IntegrityError, match="index"):
        decode(_assemble(layout, recs, tail=olayout.tail), seekable=seekable)
    # the other object's whole body under this object's place: the place is bound to the uid
    with pytest.raises(IntegrityError):
        decode(olayout.prefix[:fo.HEADER.size] + layout.prefix[fo.HEADER.size:] + other[len(olayout.prefix):],
               seekable=seekable)


@pytest.mark.parametrize("seekable", [True, False])
def test_same_content_block_of_another_seal_is_detected(seekable):
    """The index names each position's seal (its tag), not just its content: a block with the
    same clear content from another object, or from an older version of this one, is refused."""
    other = encode(DATA)
    layout, recs = _records(OBJ)
    _, orecs = _records(other)
    assert orecs[0] != recs[0] and decode(other) == decode(OBJ) == DATA
    with pytest.raises(IntegrityError, match="block 0"):
        decode(_assemble(layout, [orecs[0], *recs[1:]]), seekable=seekable)


@pytest.mark.parametrize("seekable", [True, False])
def test_every_truncation_is_integrity_error(seekable):
    obj = encode(mixed(9000))
    for cut in range(len(obj)):
        with pytest.raises(IntegrityError):
            decode(obj[:cut], seekable=seekable)
    with pytest.raises(IntegrityError, match="after the footer"):
        decode(obj + b"x", seekable=False)


def test_every_bit_flip_of_a_small_object_is_integrity_error():
    obj = encode(mixed(6000), block_size=2048)
    for pos in range(len(obj)):
        for bit in (0, 7):
            bad = bytearray(obj)
            bad[pos] ^= 1 << bit
            with pytest.raises(IntegrityError):
                decode(bytes(bad), seekable=bool(pos & 1))


def test_moved_object_place_replacement():
    layout = lo.read_file_layout(io.BytesIO(OBJ))
    place = fo.seal_place(KEYS, layout.uid, 0x77, b"renamed", ATTRS)
    moved = lo.replace_place(layout.prefix, place) + OBJ[len(layout.prefix):]
    assert decode(moved, container_id=0x77, name=b"renamed") == DATA
    with pytest.raises(IntegrityError):  # an old place is bound to the old container
        decode(moved, container_id=DIR_ID)
    # the place of another object cannot be swapped in: it is bound to that object's uid
    other = lo.read_file_layout(io.BytesIO(encode(b"x" * 10)))
    with pytest.raises(IntegrityError):
        decode(lo.replace_place(layout.prefix, other.prefix[fo.HEADER.size:]) + OBJ[len(layout.prefix):])


def test_keyless_layout_sees_no_names_and_no_contents():
    secret = b"TOP SECRET CONTENT " * 3000
    obj = encode(secret, name=b"secret-name.doc")
    for stream in (io.BytesIO(obj), io.BufferedReader(Stream(obj))):
        layout = lo.read_file_layout(stream)
        assert (layout.container_id, layout.mtime_ns, layout.block_count) == (DIR_ID, ATTRS.mtime_ns, 14)
        assert layout.total_size == len(obj)
        assert layout.rounded_size == 57344 and layout.rounded_size != len(secret)
        seen = repr(layout).encode() + layout.prefix + layout.tail + layout.sealed_name
        for leak in (b"secret-name", b"TOP SECRET", b"alice", b"user.tag", b"blue"):
            assert leak not in seen and leak not in obj
        assert len(set(obj[len(layout.prefix):])) > 200  # sealed: looks random, not repetitive text
    assert layout.stored_data_size == sum(layout.lengths)


def test_index_blob_opens_to_signature():
    layout = lo.read_file_layout(io.BytesIO(OBJ))
    index = fo.open_index(KEYS, layout.index_blob(), "object 0x42")
    assert index.size == len(DATA) and len(index.entries) == layout.block_count
    assert [e.stored_size for e in index.entries] == list(layout.lengths)
    from boxbox.rolling.checksum import strong_checksum, weak_checksum

    sig = index.signature()
    assert sig.hash_name == "sha256"
    assert sig.blocks[1] == (4096, weak_checksum(DATA[4096:8192]), strong_checksum(DATA[4096:8192], "sha256"))
    from boxbox.rolling.signature import signature_of

    assert sig == signature_of(io.BytesIO(DATA), 4096, "sha256")  # anchors included, same as rolling's own
    with pytest.raises(IntegrityError, match="object 0x42"):
        fo.open_index(OTHER_KEYS, layout.index_blob(), "object 0x42")
    with pytest.raises(IntegrityError):
        fo.open_index(KEYS, layout.index_blob()[:-1])


def _diff_upload(old_obj: bytes, old_id: int, new: list[bytes | tuple[int]]) -> bytes:
    """A client diff upload: clear blocks, and (k,) meaning old block k."""
    index = fo.open_index(KEYS, lo.read_file_layout(io.BytesIO(old_obj)).index_blob())
    blocks = [index.reference(old_id, b[0]) if isinstance(b, tuple) else b for b in new]
    out = io.BytesIO()
    fo.encode_blocks(KEYS, blocks, out, container_id=DIR_ID, name=NAME, attributes=ATTRS)
    return out.getvalue()


def test_diff_upload_resolved_by_store_and_reverse_patch():
    old_id, new_id = 10, 11
    old_data = mixed(20_000)
    old = encode(old_data)
    old_blocks = [old_data[i:i + 4096] for i in range(0, len(old_data), 4096)]
    new_blocks = [(0,), b"inserted block", (1,), (3,), b"fresh tail"]
    new_data = b"".join(old_blocks[b[0]] if isinstance(b, tuple) else b for b in new_blocks)
    diff = _diff_upload(old, old_id, new_blocks)
    dlayout = lo.read_file_layout(io.BytesIO(diff))
    assert dlayout.refs == {0: (old_id, 0), 2: (old_id, 1), 3: (old_id, 3)}
    with pytest.raises(IntegrityError, match="refers to block 0 of object 0xa"):
        decode(diff)
    olayout = lo.read_file_layout(io.BytesIO(old))
    objects = {old_id: (old, olayout)}

    def fetch(object_id: int, block: int) -> bytes:
        data, layout = objects[object_id]
        return lo.read_block_record(io.BytesIO(data), layout, block)

    full = io.BytesIO()
    size = lo.resolve_references(dlayout, io.BytesIO(diff), full, fetch)
    assert size == len(full.getvalue())
    assert decode(full.getvalue()) == new_data
    objects[new_id] = (full.getvalue(), lo.read_file_layout(io.BytesIO(full.getvalue())))
    patch = io.BytesIO()
    lo.write_reverse_patch(olayout, io.BytesIO(old), old_id, dlayout, new_id, patch)
    player = lo.read_file_layout(io.BytesIO(patch.getvalue()))
    assert player.refs == {0: (new_id, 0), 1: (new_id, 2), 3: (new_id, 3)}
    assert len(patch.getvalue()) < len(old)
    rebuilt = io.BytesIO()
    lo.resolve_references(player, io.BytesIO(patch.getvalue()), rebuilt, fetch)
    assert decode(rebuilt.getvalue()) == old_data


def test_reference_to_wrong_block_is_caught_at_decode():
    old = encode(mixed(20_000))
    olayout = lo.read_file_layout(io.BytesIO(old))
    diff = _diff_upload(old, 1, [(0,), (1,)])
    dlayout = lo.read_file_layout(io.BytesIO(diff))
    out = io.BytesIO()
    lo.resolve_references(dlayout, io.BytesIO(diff), out,
                          lambda obj, blk: lo.read_block_record(io.BytesIO(old), olayout, blk + 1))
    with pytest.raises(IntegrityError, match="block 0"):
        decode(out.getvalue())


@pytest.mark.parametrize("data, message", [
    (b"", "truncated"),
    (b"XXXX" + bytes(60), "magic"),
    (fo.MAGIC + b"\x09" + bytes(59), "version 9"),
    (fo.MAGIC + b"\x02\x01\x07\x01" + bytes(56), "cipher id 7"),
    (fo.MAGIC + b"\x01\x01\x01\x01" + bytes(56), "version 1 is not supported"),
])
def test_malformed_headers_are_format_errors(data, message):
    with pytest.raises(FormatError, match=message):
        lo.read_file_layout(io.BytesIO(data))
    with pytest.raises(IntegrityError, match=message):
        decode(data)


def test_absurd_sizes_refused_before_allocation():
    layout = lo.read_file_layout(io.BytesIO(OBJ))
    huge_record = layout.prefix + fo.RECORD.pack(fo.R_RAW, 0xFFFFFFFF)
    with pytest.raises(FormatError, match="record length 4294967295"):
        lo.read_file_layout(io.BytesIO(huge_record))
    huge_end = layout.prefix + fo.RECORD.pack(fo.R_END, 0xFFFFFFFF)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="end record"):
            lo.read_file_layout(io.BytesIO(huge_end))
        with pytest.raises(IntegrityError):
            decode(huge_end, seekable=False)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    bad_ref = layout.prefix + fo.RECORD.pack(fo.R_REF, 99)
    with pytest.raises(FormatError, match="reference record is 99 bytes"):
        lo.read_file_layout(io.BytesIO(bad_ref))


def test_writer_refuses_malformed_pieces():
    layout, recs = _records(OBJ)
    with pytest.raises(FormatError):
        lo.FileObjectWriter(io.BytesIO(), layout.prefix + b"x")
    w = lo.FileObjectWriter(io.BytesIO(), layout.prefix)
    with pytest.raises(FormatError, match="not a sealed block record"):
        w.copy_record(recs[0][:-1])
    with pytest.raises(FormatError, match="not a sealed block record"):
        w.copy_record(fo.RECORD.pack(fo.R_REF, 12) + bytes(12))
    with pytest.raises(FormatError, match="tail"):
        w.finish(layout.tail[5:])
    with pytest.raises(FormatError, match="block 99 does not exist"):
        layout.block(99)
    with pytest.raises(FormatError, match="header is 4 bytes"):
        lo.replace_place(b"junk", b"")


def test_encode_memory_does_not_grow_with_file_size():
    """Streamed: peak traced memory for 8 MiB is about that for 1 MiB (one block + index)."""
    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, buf):
            n = min(len(buf), self.left)
            buf[:n] = os.urandom(n)
            self.left -= n
            return n

    class Null:
        def write(self, b):
            return len(b)

    peaks = []
    for size in (1 << 20, 8 << 20):
        tracemalloc.start()
        fo.encode_file(KEYS, Zeros(size), Null(), container_id=1, name=b"f", attributes=ATTRS, block_size=65536)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + (512 << 10), peaks


def test_rolling_delta_end_to_end_through_the_store():
    """Client: index -> signature -> delta -> diff upload; store: resolve; client: decode the new file."""
    from boxbox.rolling.delta import delta

    old_data = mixed(300_000)
    new_data = old_data[:1000] + b"INSERTED" + old_data[1000:150_000] + os.urandom(9000) + old_data[200_000:]
    old = encode(old_data, block_size=8192)
    olayout = lo.read_file_layout(io.BytesIO(old))
    index = fo.open_index(KEYS, olayout.index_blob())
    ops = delta(index.signature(), io.BytesIO(new_data))
    out = io.BytesIO()
    fo.encode_blocks(KEYS, ix.delta_blocks(index, 0x30, ops, 8192), out, container_id=DIR_ID, name=NAME,
                     attributes=ATTRS, hash_name=index.hash_name, block_size=8192)
    diff = out.getvalue()
    dlayout = lo.read_file_layout(io.BytesIO(diff))
    assert len(dlayout.refs) >= 20 and len(diff) < len(old) // 2
    full = io.BytesIO()
    lo.resolve_references(dlayout, io.BytesIO(diff), full,
                          lambda obj, blk: lo.read_block_record(io.BytesIO(old), olayout, blk))
    assert decode(full.getvalue(), name=NAME) == new_data
    new_index = fo.open_index(KEYS, lo.read_file_layout(io.BytesIO(full.getvalue())).index_blob())
    assert new_index.anchors is not None and len(new_index.anchors) == ix.ANCHOR_SIZE * len(new_index.entries)


def test_delta_blocks_cuts_literals():
    index = ix.Index(1, 10, [ix.IndexEntry(10, 40, 1, bytes(16), bytes(16))], None)
    out = list(ix.delta_blocks(index, 5, [b"a" * 5, b"b" * 10, 0, b"c" * 3], 4))
    assert out[:4] == [b"aaaa", b"abbb", b"bbbb", b"bbb"]
    assert out[4] == ix.Reference(5, 0, index.entries[0]) and out[5] == b"ccc"


def test_index_blob_is_bound_to_its_place():
    layout = lo.read_file_layout(io.BytesIO(OBJ))
    blob = layout.index_blob()
    assert fo.open_index(KEYS, blob, container_id=DIR_ID, name=NAME).size == len(DATA)
    with pytest.raises(IntegrityError, match="another name"):
        fo.open_index(KEYS, blob, "object 0x42", container_id=DIR_ID, name=b"other file")
    with pytest.raises(IntegrityError, match="expected 0x1"):
        fo.open_index(KEYS, blob, "object 0x42", container_id=0x1)
    other = lo.read_file_layout(io.BytesIO(encode(b"other", name=b"x")))
    with pytest.raises(IntegrityError):  # another object's end record under this place
        fo.open_index(KEYS, layout.prefix + other.index_blob()[len(other.prefix):])
    for cut in range(0, len(blob), 7):
        with pytest.raises(IntegrityError):
            fo.open_index(KEYS, blob[:cut])


def test_store_view_refuses_every_truncation():
    obj = encode(mixed(9000))
    for cut in range(len(obj)):
        for stream in (io.BytesIO(obj[:cut]), io.BufferedReader(Stream(obj[:cut]))):
            with pytest.raises(FormatError):
                lo.read_file_layout(stream)
    assert lo.read_file_layout(io.BytesIO(obj)).total_size == len(obj)
