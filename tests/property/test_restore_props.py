"""Properties of the restore side: name escaping, the name check, version choice."""

from __future__ import annotations

from hypothesis import example, given, strategies as st

from boxbox.errors import IntegrityError
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.directory import DELETED, DIR, FILE, OLD
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
