"""Properties of the object formats: round trips, tamper detection, malformed input, fast == plain."""

from __future__ import annotations

import dataclasses
import io
import random
import zlib

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from boxbox.crypto.keys import Keys
from boxbox.errors import FormatError, IntegrityError
from boxbox.objects import directory as do
from boxbox.objects import file as fo
from boxbox.objects import layout as lo
from boxbox.objects.attributes import Attributes, FileType

KEYS = Keys.from_master(bytes(range(256)) * 4)

u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-2**63, 2**63 - 1)
names = st.one_of(
    st.binary(min_size=1, max_size=255),
    st.text(min_size=1, max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.just(b"\xff" * 255),
)
attributes = st.builds(
    Attributes, st.sampled_from(list(FileType)), st.integers(0, 0o7777), u32, u32, i64, i64,
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.integers(0, 2**64 - 1), st.binary(max_size=300),
    st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=200)), max_size=4).map(tuple),
    st.one_of(st.just(0), st.integers(1, 2**128 - 1)),  # link id: none, or (device << 64) | inode
)


def make_data(kind: str, size: int, seed: int) -> bytes:
    """Big test data from a small Hypothesis draw (generating MiBs byte by byte would crawl)."""
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    words = [rng.randbytes(rng.randint(1, 8)).hex().encode() for _ in range(200)]
    text = b" ".join(rng.choice(words) for _ in range(size // 4 + 1))[:size]
    if kind == "text":
        return text
    return rng.randbytes(size // 2) + text[: size - size // 2]


files = st.tuples(st.sampled_from(["random", "zeros", "text", "mixed"]),
                  st.one_of(st.integers(0, 70_000), st.integers(1 << 20, 5 << 20)), st.integers(0, 2**32))


class Stream(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        return self._b.readinto(buf)


def encode(data: bytes, name: bytes = b"f", attrs: Attributes | None = None, block_size: int | None = 4096,
           **kw) -> bytes:
    out = io.BytesIO()
    fo.encode_file(KEYS, io.BytesIO(data), out, container_id=9, name=name,
                   attributes=attrs or Attributes(FileType.REGULAR, 0o644, 0, 0, 1), size=len(data),
                   block_size=block_size, **kw)
    return out.getvalue()


def decode(obj: bytes, seekable: bool) -> tuple[bytes, fo.DecodedFile]:
    sink = io.BytesIO()
    got = fo.decode_file(KEYS, io.BytesIO(obj) if seekable else io.BufferedReader(Stream(obj)), sink,
                         label="object 0x7")
    return sink.getvalue(), got


@settings(max_examples=25)
@given(files, names, attributes, st.sampled_from(["aes-256-gcm", "chacha20-poly1305"]),
       st.sampled_from(["sha256", "blake2b"]), st.booleans())
@example(("mixed", 3 << 20, 1), b"x", Attributes(FileType.REGULAR, 0, 0, 0, 0), "aes-256-gcm", "sha256", False)
@example(("random", 0, 1), b"\xff" * 255, Attributes(FileType.REGULAR, 0, 0, 0, 0), "aes-256-gcm", "sha256", True)
def test_file_roundtrip(spec, name, attrs, cipher, hash_name, rolling_layout):
    data = make_data(*spec)
    obj = encode(data, name, attrs, None if rolling_layout else 4096, cipher=cipher, hash_name=hash_name)
    for seekable in (True, False):  # the index-first and the verify-at-end paths agree
        out, got = decode(obj, seekable)
        assert out == data
        assert (got.name, got.attributes, got.size, got.container_id) == (name, attrs, len(data), 9)


SMALL = encode(make_data("mixed", 20_000, 5), block_size=2048)


@given(st.integers(0, len(SMALL) * 8 - 1), st.booleans())
def test_any_bit_flip_is_integrity_error(bit, seekable):
    bad = bytearray(SMALL)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError, match="object 0x7"):
        decode(bytes(bad), seekable)


@given(st.integers(0, len(SMALL) - 1), st.booleans())
def test_any_truncation_is_integrity_error(cut, seekable):
    with pytest.raises(IntegrityError, match="object 0x7"):
        decode(SMALL[:cut], seekable)


def _records(obj: bytes) -> tuple[fo.FileLayout, list[bytes]]:
    layout = lo.read_file_layout(io.BytesIO(obj))
    return layout, [lo.read_block_record(io.BytesIO(obj), layout, k) for k in range(layout.block_count)]


def _assemble(layout, records) -> bytes:
    out = io.BytesIO()
    w = lo.FileObjectWriter(out, layout.prefix)
    for r in records:
        w.copy_record(r)
    w.finish(layout.tail)
    return out.getvalue()


OTHER = encode(make_data("mixed", 20_000, 6), block_size=2048)


@given(st.data(), st.booleans())
def test_any_block_swap_or_substitution_is_integrity_error(data, seekable):
    layout, recs = _records(SMALL)
    _, others = _records(OTHER)
    i = data.draw(st.integers(0, len(recs) - 1))
    if data.draw(st.booleans()):
        j = data.draw(st.integers(0, len(recs) - 1).filter(lambda j: j != i))
        recs[i], recs[j] = recs[j], recs[i]
    else:
        recs[i] = others[data.draw(st.integers(0, len(others) - 1))]
    with pytest.raises(IntegrityError, match="object 0x7"):
        decode(_assemble(layout, recs), seekable)


#: an older version of SMALL's file: same name, directory and size, one byte changed; its blocks
#: are genuine seals of the same positions, most with the same clear content
OLDER = encode(make_data("mixed", 20_000, 5)[:-1] + b"\x00", block_size=2048)


def _raw_assemble(layout, records) -> bytes:
    """Like _assemble, without the writer's block count check: a store may write anything."""
    return layout.prefix + b"".join(records) + layout.tail


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["this", "older", "other"]), st.integers(0, 20)), max_size=14),
       st.booleans())
@example([("this", k) for k in range(9)] + [("older", 9)], False)  # the last block replayed from yesterday
@example([("older", 0)] + [("this", k) for k in range(1, 10)], True)  # the same clear content, an older seal
@example([("this", k) for k in (0, 1, 2, 4, 3, 5, 6, 7, 8, 9)], True)  # two blocks reordered
@example([("this", k) for k in range(9)], True)  # the last block dropped
@example([("this", k) for k in range(10)] + [("this", 9)], False)  # one block appended twice
def test_any_other_sequence_of_genuine_blocks_is_integrity_error(picks, seekable):
    """The store holds only genuine seals; whatever sequence of them it serves under this object's
    prefix and index - swapped, reordered, dropped, duplicated, from another file, or replayed
    from an older version of the same file at the same position - fails unless it is the
    original sequence byte for byte (the index names each position's seal by its tag)."""
    layout, recs = _records(SMALL)
    pools = {"this": recs, "older": _records(OLDER)[1], "other": _records(OTHER)[1]}
    assert len(recs) == len(pools["older"]) == 10
    served = [pools[src][k % len(pools[src])] for src, k in picks]
    assume(served != recs)
    with pytest.raises(IntegrityError, match="object 0x7"):
        decode(_raw_assemble(layout, served), seekable)


def test_index_names_each_records_tag_and_an_older_index_does_not_fit():
    """Every entry's tag is its record's AEAD tag; the older version's index (same place, same
    block count) under this object's blocks fails: it is bound to the older object's uid."""
    layout, recs = _records(SMALL)
    index = fo.open_index(KEYS, layout.index_blob())
    assert [e.tag for e in index.entries] == [r[-16:] for r in recs]
    assert [e.stored_size for e in index.entries] == [len(r) - fo.RECORD.size for r in recs]
    older = lo.read_file_layout(io.BytesIO(OLDER))
    for seekable in (True, False):
        with pytest.raises(IntegrityError, match="index"):
            decode(layout.prefix + b"".join(recs) + older.tail, seekable)


@given(st.binary(max_size=400), st.booleans())
@example(fo.MAGIC + bytes(28), True)
def test_random_bytes_are_format_errors_for_the_store_and_integrity_errors_for_the_client(data, seekable):
    for stream in (io.BytesIO(data), io.BufferedReader(Stream(data))):
        with pytest.raises(FormatError):
            lo.read_file_layout(stream)
    with pytest.raises(IntegrityError):
        decode(data, seekable)
    with pytest.raises(IntegrityError):
        fo.open_index(KEYS, data)


@given(st.integers(0, len(SMALL) - 1), st.binary(min_size=1, max_size=8))
def test_mutated_objects_never_raise_anything_but_format_error_in_the_store_view(pos, junk):
    bad = SMALL[:pos] + junk + SMALL[pos + len(junk):]
    try:
        fast = lo.read_file_layout(io.BytesIO(bad))
    except FormatError:
        fast = None
    try:  # the plain path (no seeking) reads every byte and must agree
        plain = lo.read_file_layout(io.BufferedReader(Stream(bad)))
    except FormatError:
        plain = None
    if fast is not None and plain is not None:
        assert fast._replace(offsets=None, lengths=None) == plain._replace(offsets=None, lengths=None)
        assert list(fast.offsets) == list(plain.offsets) and list(fast.lengths) == list(plain.lengths)
    else:  # skipping past the end by seeking must fail just like reading does
        assert fast is None and plain is None


@settings(max_examples=40)
@given(st.binary(max_size=3 * fo.PROBE_MID), st.integers(0, 2**32), st.sampled_from(["random", "text", "zeros"]))
@example(b"", 1, "random")
def test_probe_agrees_with_plain_compress(head, seed, kind):
    """Plain version: compress everything with zlib, keep it when smaller. The probe may only
    skip compression where its samples did not shrink, and what it keeps must inflate back."""
    data = head + make_data(kind, seed % (3 * fo.PROBE_MID), seed)
    assume(data)
    enc = fo.FileEncoder(KEYS, io.BytesIO(), container_id=1, name=b"f",
                         attributes=Attributes(FileType.REGULAR, 0, 0, 0, 0))
    plain = zlib.compress(data, 1)
    plain = plain if len(plain) < len(data) else None
    fast = enc._compress(data)
    if fast is not None:
        assert zlib.decompress(fast) == data and len(fast) < len(data)
        assert plain is None or len(fast) <= len(plain) * 1.02 + 64  # the sync flush costs a few bytes
    elif plain is not None:
        assert len(data) > fo.PROBE
        mid = len(data) // 2
        samples = [data[:fo.PROBE]] + ([data[mid:mid + fo.PROBE]] if len(data) >= fo.PROBE_MID else [])
        for sample in samples:
            assert len(zlib.compress(sample, 1)) >= fo.PROBE * fo.PROBE_KEEP - 8


@given(attributes)
@example(Attributes(FileType.REGULAR, 0o644, 0, 0, 0, link_id=1))
@example(Attributes(FileType.REGULAR, 0o644, 0, 0, 0, link_id=(2**64 - 1) << 64))
def test_attributes_roundtrip(attrs):
    """Every record reads back as written; the version says whether a link identity is there."""
    record = attrs.pack()
    assert Attributes.unpack(record) == attrs
    assert record[4] == (2 if attrs.link_id else 1)
    # a link id is hashed like every other attribute, and only it separates these two
    assert (attrs.hash_material(b"n") == attrs._replace(link_id=0).hash_material(b"n")) == (attrs.link_id == 0)


@given(st.binary(max_size=300))
def test_attributes_malformed_only_format_error(data):
    try:
        Attributes.unpack(data)
    except FormatError:
        pass


entries = st.lists(st.tuples(names, st.integers(1, 2**64 - 1), st.sampled_from([do.FILE, do.DIR]),
                             st.integers(0, 15).map(lambda f: f & (do.DELETED | do.OLD)),
                             st.one_of(st.none(), attributes), st.integers(0, 2**64 - 1)), max_size=8)


def build_directory(items) -> do.Directory:
    d = do.Directory(0x31, 0x30, do.seal_directory_attributes(KEYS, 0x30, b"home",
                                                              Attributes(FileType.DIRECTORY, 0o755, 0, 0, 3)))
    for name, oid, kind, extra, attrs, blocks in items:
        d.entries.append(do.make_entry(KEYS, 0x31, name, oid, kind | extra, attrs, blocks))
    return d


def open_all(d: do.Directory):
    return (do.open_directory_attributes(KEYS, d, b"home"),
            [do.open_entry(KEYS, d.object_id, e) for e in d.entries])


@settings(max_examples=30)
@given(entries)
def test_directory_roundtrip(items):
    d = build_directory(items)
    back = do.Directory.parse(d.serialize())
    assert back == d
    _, opened = open_all(back)
    assert opened == [(name, attrs) for name, _, _, _, attrs, _ in items]


#: clear fields the store maintains: a change there is not detectable from the object alone
STORE_FIELDS = {"object_id", "flags", "size_blocks", "newer", "older"}


@settings(max_examples=60)
@given(entries.filter(bool), st.data())
def test_directory_bit_flip_changes_only_store_fields_or_is_detected(items, data):
    d = build_directory(items)
    raw = d.serialize()
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    bad = bytearray(raw)
    bad[bit // 8] ^= 1 << (bit % 8)
    try:
        back = do.Directory.parse(bytes(bad))
        opened = open_all(back)
    except (FormatError, IntegrityError):
        return
    assert opened == open_all(d)
    assert (back.object_id, back.container_id, back.sealed_attributes) == (d.object_id, d.container_id,
                                                                           d.sealed_attributes)
    for before, after in zip(d.entries, back.entries):
        changed = {f.name for f in dataclasses.fields(before) if getattr(before, f.name) != getattr(after, f.name)}
        if not before.sealed_attributes:  # an entry without attributes has nothing to check these against
            changed -= {"mtime_ns", "attr_hash"}
        assert changed <= STORE_FIELDS


@given(st.binary(max_size=400))
@example(do.HEADER.pack(do.MAGIC, 1, 1, 0, 0x7FFFFFFF, 0))
def test_directory_malformed_only_format_error(data):
    try:
        do.Directory.parse(data)
    except FormatError:
        pass


@settings(max_examples=20)
@given(files, st.sampled_from([1024, 4096, 65536]), st.sampled_from(["sha256", "blake2b"]))
@example(("random", 512, 3), 1024, "sha256")
@example(("random", 8, 3), 4096, "sha256")
@example(("zeros", 3 << 20, 3), 4096, "blake2b")
@example(("text", (1 << 20) + 1024, 3), 1024, "sha256")
def test_index_signature_equals_rollings_own_signature(spec, block_size, hash_name):
    """The encoder computes weak, strong and anchors inline; rolling.signature_of is the plain version."""
    from boxbox.rolling.signature import signature_of

    data = make_data(*spec)
    obj = encode(data, block_size=block_size, hash_name=hash_name)
    index = fo.open_index(KEYS, lo.read_file_layout(io.BytesIO(obj)).index_blob())
    assert index.signature() == signature_of(io.BytesIO(data), block_size, hash_name)
