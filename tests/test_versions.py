"""Versions: diff uploads combined on the server, reverse patches, reading any version of a chain."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from boxbox.errors import FormatError, NotFound, UsageError
from boxbox.objects.directory import FILE, OLD, Directory
from boxbox.objects.layout import read_file_layout
from boxbox.store.account import Store
from boxbox.store.housekeep import housekeep

from tests.serverutil import diff_object, download, make_store, upload, upload_diff
from tests.test_store_support import file_object, make_keys, session_client

A = 0x3C
KEYS = make_keys()


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path, (A, 100_000, 200_000))


def _recount_of(store: Store, account: int) -> dict[str, int]:
    """Usage counted from scratch (what `check` counts), to compare with the info file."""
    from boxbox.store.check import check_account

    report = check_account(store, account, fix=False)
    assert report.errors == 0, [str(p) for p in report.problems]
    return report.counts


def _recount(store: Store) -> dict[str, int]:
    return _recount_of(store, A)


def test_diff_upload_makes_whole_new_object_and_patch_of_old(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    old_data = os.urandom(200_000)
    new_data = old_data[:50_000] + b"changed" + old_data[60_000:]
    v1 = upload(c, KEYS, 1, b"f", old_data)
    u1 = c.usage()
    diff = diff_object(c, KEYS, 1, b"f", v1, new_data)
    assert len(diff) < len(old_data) // 4
    v2 = upload_diff(c, KEYS, 1, b"f", v1, new_data)
    # the new object is complete: no references
    assert read_file_layout(io.BytesIO(c.get_object(v2).read())).refs == {}
    # the old one is now a small reverse patch against it
    patch = read_file_layout(io.BytesIO(c.get_object(v1).read()))
    assert patch.refs and {obj for obj, _ in patch.refs.values()} == {v2}
    entries = {e.object_id: e for e in Directory.parse(c.list_directory(1)).entries}
    assert (entries[v1].flags, entries[v1].newer, entries[v1].older) == (FILE | OLD, v2, 0)
    assert (entries[v2].flags, entries[v2].newer, entries[v2].older) == (FILE, 0, v1)
    assert entries[v1].size_blocks < entries[v2].size_blocks // 3
    assert download(c, KEYS, 1, v1, b"f") == old_data
    assert download(c, KEYS, 1, v2, b"f") == new_data
    u2 = c.usage()
    # space: the patch saved what the new version shares with it
    assert u2.blocks_old == entries[v1].size_blocks
    assert u2.blocks_used - u1.blocks_used < entries[v2].size_blocks + entries[v1].size_blocks // 2 + 8
    c.finish()
    t.join(5)
    assert _recount(store)["blocks_used"] == store.read_info(A).blocks_used


def test_completely_different_version_leaves_old_whole(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    v1 = upload(c, KEYS, 1, b"g", os.urandom(50_000))
    v2 = upload_diff(c, KEYS, 1, b"g", v1, os.urandom(50_000))
    assert read_file_layout(io.BytesIO(c.get_object(v1).read())).refs == {}
    entries = {e.object_id: e for e in Directory.parse(c.list_directory(1)).entries}
    assert entries[v1].newer == entries[v2].older == 0
    c.finish()
    t.join(5)


def test_diff_refused_against_patch_missing_or_foreign_base(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    data = os.urandom(100_000)
    v1 = upload(c, KEYS, 1, b"h", data)
    diff_against_v1 = diff_object(c, KEYS, 1, b"h", v1, data + b"x")
    v2 = upload_diff(c, KEYS, 1, b"h", v1, data + b"more")
    kwargs, _ = file_object(KEYS, 1, b"h", b"")
    with pytest.raises(NotFound, match="stored as a patch") as e:
        c.store_file(1, source=io.BytesIO(diff_against_v1), diff_from=v1, **kwargs)
    assert "whole file" in (e.value.hint or "")
    with pytest.raises(NotFound, match="not a file in directory"):
        c.store_file(1, source=io.BytesIO(diff_against_v1), diff_from=0x999, **kwargs)
    # a diff whose references name another object than its diff base
    with pytest.raises(FormatError, match="this diff is against"):
        c.store_file(1, source=io.BytesIO(diff_against_v1), diff_from=v2, **kwargs)
    with pytest.raises(UsageError, match="names no diff base"):
        c.store_file(1, source=io.BytesIO(diff_against_v1), **kwargs)
    # the object of a listed base vanished
    store.backend(A).delete(f"{A:08x}/o/0/00/{v2:016x}")
    with pytest.raises(NotFound, match="no longer exists"):
        c.store_file(1, source=io.BytesIO(diff_against_v1), diff_from=v2, **kwargs)
    u = c.usage()
    c.finish()
    t.join(5)
    assert u.blocks_used == store.read_info(A).blocks_used


def test_chain_of_100_versions_reads_every_version(store: Store) -> None:
    rng = random.Random(7)
    c, t = session_client(store, A)
    c.login()
    data = bytearray(rng.randbytes(64_000))
    versions = [bytes(data)]
    ids = [upload(c, KEYS, 1, b"log", bytes(data))]
    for i in range(99):
        pos = rng.randrange(len(data))
        data[pos:pos + 100] = rng.randbytes(100)
        if i % 10 == 0:
            data += rng.randbytes(3000)
        versions.append(bytes(data))
        ids.append(upload_diff(c, KEYS, 1, b"log", ids[-1], bytes(data)))
    for k in (0, 1, 50, 98, 99):
        assert download(c, KEYS, 1, ids[k], b"log") == versions[k]
    # every old version is a patch against the next one
    entries = {e.object_id: e for e in Directory.parse(c.list_directory(1)).entries}
    assert all(entries[ids[k]].newer == ids[k + 1] for k in range(99))
    assert all(entries[ids[k]].size_blocks < entries[ids[-1]].size_blocks // 3 for k in range(99))
    c.finish()
    t.join(5)


def test_housekeeping_merges_middle_versions(store: Store) -> None:
    rng = random.Random(3)
    c, t = session_client(store, A)
    c.login()
    data = bytearray(rng.randbytes(40_000))
    versions = [bytes(data)]
    ids = [upload(c, KEYS, 1, b"m", bytes(data))]
    for _ in range(9):
        pos = rng.randrange(len(data))
        data[pos:pos + 5000] = rng.randbytes(5000)
        versions.append(bytes(data))
        ids.append(upload_diff(c, KEYS, 1, b"m", ids[-1], bytes(data)))
    c.finish()
    t.join(5)
    doomed = [ids[k] for k in (1, 2, 4, 5, 7)]
    p = _remove_versions(store, doomed)
    assert p.merged >= 3
    c, t = session_client(store, A)
    c.login(read_only=True)
    left = {e.object_id for e in Directory.parse(c.list_directory(1)).entries}
    assert left == set(ids) - set(doomed)
    for k, obj in enumerate(ids):
        if obj in left:
            assert download(c, KEYS, 1, obj, b"m") == versions[k]
    c.finish()
    t.join(5)
    counts = _recount(store)
    assert counts == {k: v for k, v in store.read_info(A)._asdict().items() if k in counts}


def _remove_versions(store: Store, doomed: list[int]):  # type: ignore[no-untyped-def]
    return _remove_versions_of(store, A, doomed)


def _remove_versions_of(store: Store, account: int, doomed: list[int]):  # type: ignore[no-untyped-def]
    """Remove exactly these versions through housekeeping's own machinery (as a soft-limit pass would)."""
    from boxbox.store import housekeep as hk
    from boxbox.store.account import Account

    with store.housekeeping_lock(account), store.write_lock(account):
        info = store.read_info(account)
        p = hk._Pass(store, Account(store, store.backend(account), info, None), 0, None)
        assert p.scan()
        for obj in doomed:
            p.remove(obj)
        p.flush()
        counts = p.recount()
        store.write_info(store.read_info(account)._replace(**counts))
    return p.result


def test_housekeeping_unchanged_account_is_skipped(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    upload(c, KEYS, 1, b"x", b"data")
    c.finish()
    t.join(5)
    first = housekeep(store, A)
    assert not first.skipped and first.directories == 1
    assert housekeep(store, A).skipped == "unchanged since the last pass"
    c, t = session_client(store, A)
    c.login()
    upload(c, KEYS, 1, b"y", b"more")
    c.finish()
    t.join(5)
    assert not housekeep(store, A).skipped


def test_reading_an_old_version_streams_in_bounded_memory(store: Store) -> None:
    """A 24 MiB old version is served through its chain with memory far below its size."""
    import tracemalloc

    from boxbox.store.versions import open_version

    rng = random.Random(11)
    store.update_info(A, soft_limit=1 << 30, hard_limit=1 << 31)
    c, t = session_client(store, A)
    c.login()
    data = rng.randbytes(24 << 20)
    v1 = upload(c, KEYS, 1, b"big", data)
    v2 = upload_diff(c, KEYS, 1, b"big", v1, data[:1000] + b"x" + data[1001:])
    c.finish()
    t.join(5)
    acct = store.open(A, write=False)
    tracemalloc.start()
    total = 0
    for piece in open_version(acct, v1):
        total += len(piece)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total > len(data)
    # ~4.2 MiB at 8 MiB, ~5.8 MiB at 32 MiB here: raidfile's read buffers, not the file
    assert peak < len(data) // 3, f"peak {peak} bytes while streaming {total}"
    assert v2 != v1


def test_merging_out_a_version_whose_shared_blocks_were_its_own_leaves_the_older_whole(store: Store) -> None:
    """v0 shares only blocks that v1 stores itself; v1 shares others with v2. Removing v1 makes
    v0 whole, so its version link to v2 must go too (check derives links from references)."""
    a, b, c, d = (os.urandom(64 * 1024) for _ in range(4))
    versions = [a + b, a + c, d + c]
    cl, t = session_client(store, A)
    cl.login()
    ids = [upload(cl, KEYS, 1, b"f", versions[0])]
    for data in versions[1:]:
        ids.append(upload_diff(cl, KEYS, 1, b"f", ids[-1], data))
    assert {obj for obj, _ in read_file_layout(io.BytesIO(cl.get_object(ids[0]).read())).refs.values()} == {ids[1]}
    assert {obj for obj, _ in read_file_layout(io.BytesIO(cl.get_object(ids[1]).read())).refs.values()} == {ids[2]}
    cl.finish()
    t.join(5)
    _remove_versions_of(store, A, [ids[1]])
    _recount(store)  # asserts check finds no problem, links included
    cl, t = session_client(store, A)
    cl.login(read_only=True)
    assert read_file_layout(io.BytesIO(cl.get_object(ids[0]).read())).refs == {}
    for obj, data in ((ids[0], versions[0]), (ids[2], versions[2])):
        assert download(cl, KEYS, 1, obj, b"f") == data
    cl.finish()
    t.join(5)
