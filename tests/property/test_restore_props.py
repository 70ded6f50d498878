"""Properties of the restore side: name escaping, the name check, version choice, decoding wire chunks."""

from __future__ import annotations

import io
import random
from typing import Iterator

import pytest
from hypothesis import example, given, settings, strategies as st

from boxbox.crypto.keys import Keys
from boxbox.errors import IntegrityError
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.directory import DELETED, DIR, FILE, OLD
from boxbox.objects.file import decode_file, encode_file
from boxbox.restore.remote import Listing, RemoteEntry, select
from boxbox.restore.names import check_name, parse_name, show_name


@given(st.binary(min_size=1, max_size=64))
@example(b"a\\x41")
@example(b"\\")
@example("caf\u00e9".encode())
def test_shown_names_read_back_exactly(name: bytes) -> None:
    shown = show_name(name)
    assert shown.isprintable()
    assert parse_name(shown) == name


@given(st.binary(max_size=40))
@example(b".")
@example(b"..")
@example(b"...")
@example(b"a/b")
def test_check_name_accepts_exactly_single_components(name: bytes) -> None:
    safe = bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name
    try:
        check_name(name, "test")
    except IntegrityError:
        assert not safe
    else:
        assert safe


_entry = st.builds(
    lambda oid, name, is_dir, deleted, old, mtime: RemoteEntry(
        oid, (DIR if is_dir else FILE) | (DELETED if deleted else 0) | (OLD if old and not is_dir else 0), name,
        None if is_dir else Attributes(FileType.REGULAR, 0o644, 0, 0, mtime), mtime, 1, 0, 0),
    st.integers(2, 1000), st.sampled_from([b"a", b"b", b"c"]), st.booleans(), st.booleans(), st.booleans(),
    st.integers(0, 100))


@given(st.lists(_entry, max_size=12), st.one_of(st.none(), st.integers(-1, 101)), st.booleans(),
       st.one_of(st.none(), st.integers(0, 100)))
def test_select_gives_one_version_per_name(entries: list[RemoteEntry], at: int | None, deleted: bool,
                                           dir_mtime: int | None) -> None:
    attrs = None if dir_mtime is None else Attributes(FileType.DIRECTORY, 0o755, 0, 0, dir_mtime)
    listing = Listing(1, 0, attrs, entries)
    chosen = select(listing, at_ns=at, deleted=deleted)
    keys = [(e.name, e.is_dir) for e in chosen]
    assert len(keys) == len(set(keys))
    for e in chosen:
        assert e in entries
        if at is None:
            assert deleted or not (e.deleted or e.old)
        elif e.is_file:
            assert e.mtime_ns <= at  # never a version from after the moment
            same = [v for v in entries if (v.name, v.is_dir) == (e.name, e.is_dir) and v.mtime_ns <= at]
            assert e.mtime_ns == max(v.mtime_ns for v in same)  # and the newest one before it


_KEYS = Keys.from_master(bytes(range(256)) * 4)


class _Chunked:
    """A download as the wire delivers it: `chunks()` of arbitrary sizes (as `InStream`), not seekable."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.data, self.cuts = data, cuts

    def seekable(self) -> bool:
        return False

    def chunks(self) -> Iterator[bytes]:
        pos = 0
        for cut in self.cuts:
            if pos < len(self.data):
                yield self.data[pos:pos + cut]
                pos += cut
        if pos < len(self.data):
            yield self.data[pos:]


@settings(max_examples=40)
@given(st.integers(0, 300_000), st.sampled_from([4096, 8192]), st.lists(st.integers(1, 70_000), max_size=40),
       st.integers(0, 2**32))
@example(20_000, 4096, [1] * 40, 0)  # records cut into 1-byte pieces: every read spans chunks
@example(300_000, 8192, [262_144], 1)  # one 256 KiB frame, then the rest: a record spans the frame edge
def test_decode_from_wire_chunks_of_any_size(size: int, block: int, cuts: list[int], seed: int) -> None:
    """Restore decodes straight from the wire's frames: any cutting of the object decodes the same bytes."""
    data = random.Random(seed).randbytes(size // 2) + b"text " * (size // 10)
    obj = io.BytesIO()
    encode_file(_KEYS, io.BytesIO(data), obj, container_id=3, name=b"n", block_size=block,
                attributes=Attributes(FileType.REGULAR, 0o644, 0, 0, 1))
    sink = io.BytesIO()
    got = decode_file(_KEYS, _Chunked(obj.getvalue(), cuts), sink, container_id=3, name=b"n")  # type: ignore[arg-type]
    assert sink.getvalue() == data and got.size == len(data)
    with pytest.raises(IntegrityError, match="data after the footer"):
        decode_file(_KEYS, _Chunked(obj.getvalue() + b"x", cuts), io.BytesIO(), container_id=3,  # type: ignore[arg-type]
                    name=b"n")
