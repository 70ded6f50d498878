"""Housekeeping: quotas, deletion order, retention, empty deleted directories, and never beside a writer."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from boxbox.errors import InUse, LimitExceeded
from boxbox.objects.directory import DELETED, DIR, FILE, OLD, Directory, Entry
from boxbox.store import housekeep as hk
from boxbox.store.account import ROOT_DIRECTORY_ID, Store, object_key
from boxbox.store.check import check_account
from boxbox.store.housekeep import DAY, housekeep

from tests.serverutil import download, make_store, upload, upload_diff
from tests.test_store_support import file_object, make_keys, sealed_dir_name, session_client

A = 0x5E
KEYS = make_keys()


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path, (A, 100_000, 200_000))


def listing(store: Store, dir_id: int = ROOT_DIRECTORY_ID) -> dict[int, int]:
    acct = store.open(A, write=False)
    return {e.object_id: e.flags for e in Directory.parse(acct.read_object(dir_id)).entries}


def assert_counts_match_recount(store: Store) -> None:
    report = check_account(store, A)
    assert report.errors == 0, [str(p) for p in report.problems]
    info = store.read_info(A)._asdict()
    assert report.counts == {k: info[k] for k in report.counts}


def versions(c: Any, name: bytes, n: int, size: int = 20_000) -> list[int]:
    """n whole, unrelated versions of `name` (each ~size bytes), oldest first."""
    return [upload(c, KEYS, 1, name, os.urandom(size)) for _ in range(n)]


def test_soft_limit_trims_in_box_backup_order(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    x = versions(c, b"x", 5)  # most versions: its oldest go first
    y = versions(c, b"y", 2)
    z = versions(c, b"z", 1)
    c.delete_file(1, sealed_dir_name(KEYS, 1, b"z"))
    usage = c.usage()
    c.finish()
    t.join(5)
    per_file = store.open(A, write=False)
    sizes = {e.object_id: e.size_blocks for e in Directory.parse(per_file.read_object(1)).entries}
    # room for everything but three of the oldest of x
    need = sizes[x[0]] + sizes[x[1]] + sizes[x[2]]
    store.update_info(A, soft_limit=usage.blocks_used - need + 1)
    result = housekeep(store, A)
    assert result.removed_old == 3 and result.removed_deleted == 0
    assert set(listing(store)) == {x[3], x[4], *y, *z}
    assert store.read_info(A).blocks_used <= store.read_info(A).soft_limit
    assert_counts_match_recount(store)
    # then the next ones in order: x[3] and y[0] (one newer version each), then the deleted z (oldest upload)
    store.update_info(A, soft_limit=store.read_info(A).blocks_used - sizes[x[3]] - sizes[y[0]] + 1)
    assert housekeep(store, A).removed_old == 2
    assert set(listing(store)) == {x[4], y[1], *z}
    store.update_info(A, soft_limit=0)
    result = housekeep(store, A)
    assert (result.removed_old, result.removed_deleted) == (0, 1)
    assert set(listing(store)) == {x[4], y[1]}  # current versions are never removed
    assert_counts_match_recount(store)


def test_hard_limit_refuses_and_housekeeping_makes_room(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    versions(c, b"big", 6, 60_000)
    used = c.usage().blocks_used
    c.finish()
    t.join(5)
    store.update_info(A, soft_limit=used // 2, hard_limit=used + 5)
    c, t = session_client(store, A)
    c.login()
    with pytest.raises(LimitExceeded, match="hard limit"):
        upload(c, KEYS, 1, b"more", os.urandom(60_000))
    c.finish()
    t.join(5)
    housekeep(store, A)
    assert store.read_info(A).blocks_used <= used // 2
    c, t = session_client(store, A)
    c.login()
    upload(c, KEYS, 1, b"more", os.urandom(60_000))
    c.finish()
    t.join(5)
    assert_counts_match_recount(store)


def test_usage_counts_corrected(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    versions(c, b"f", 2)
    c.finish()
    t.join(5)
    right = store.read_info(A)
    store.update_info(A)  # nothing
    with store.info_lock(A):
        store.write_info(right._replace(blocks_used=1, blocks_old=999, count_current=7))
    result = housekeep(store, A, force=True)
    assert result.usage_corrected
    assert store.read_info(A) == right


def test_retention_keeps_recent_versions_and_trims_by_age(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    v = versions(c, b"r", 6)
    used = c.usage().blocks_used
    c.finish()
    t.join(5)
    store.update_info(A, keep_versions_days=10, keep_min_versions=2, soft_limit=1, hard_limit=used * 2)
    now = time.time()
    assert housekeep(store, A, now=now).removed_old == 0  # over the soft limit, but all retained
    assert housekeep(store, A, now=now + DAY).skipped == "unchanged since the last pass"
    # 11 days later: trimmed by age, except the newest two old versions
    result = housekeep(store, A, now=now + 11 * DAY)
    assert result.removed_old == 3 and set(listing(store)) == {v[3], v[4], v[5]}
    # the hard limit wins over retention
    store.update_info(A, soft_limit=0, hard_limit=store.read_info(A).blocks_used - 1)
    assert housekeep(store, A, now=now + 11 * DAY).removed_old == 2
    assert set(listing(store)) == {v[5]}
    assert_counts_match_recount(store)


def test_retention_trims_by_age_under_the_soft_limit(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    v = versions(c, b"s", 3)
    c.finish()
    t.join(5)
    store.update_info(A, keep_versions_days=1)
    now = time.time()
    assert housekeep(store, A, now=now).removed_old == 0
    assert housekeep(store, A, now=now + 2 * DAY).removed_old == 2  # far under the soft limit
    assert set(listing(store)) == {v[2]}


def test_removes_empty_deleted_directories_and_chains_stay_readable(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    gone = c.create_directory(1, sealed_dir_name(KEYS, 1, b"gone"))
    inner = c.create_directory(gone, sealed_dir_name(KEYS, gone, b"inner"))
    upload(c, KEYS, inner, b"f", b"x" * 5000)
    kept = c.create_directory(1, sealed_dir_name(KEYS, 1, b"kept"))
    data = os.urandom(50_000)
    ids = [upload(c, KEYS, kept, b"v", data)]
    for i in range(4):
        data = data[:10_000 * i] + os.urandom(2000) + data[10_000 * i + 2000:]
        ids.append(upload_diff(c, KEYS, kept, b"v", ids[-1], data))
    c.delete_directory(gone)
    c.finish()
    t.join(5)
    store.update_info(A, soft_limit=0)
    result = housekeep(store, A)
    assert result.removed_directories == 2 and result.removed_deleted == 1 and result.removed_old == 4
    assert listing(store) == {kept: DIR}
    assert list(listing(store, kept)) == [ids[-1]]
    c, t = session_client(store, A)
    c.login(read_only=True)
    assert download(c, KEYS, kept, ids[-1], b"v") == data
    c.finish()
    t.join(5)
    assert store.read_info(A).count_directories == 2
    assert_counts_match_recount(store)


def test_never_beside_a_writing_client(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    upload(c, KEYS, 1, b"w", b"data")
    assert housekeep(store, A, force=True).skipped == "a client is writing to it"
    c.finish()
    t.join(5)
    assert not housekeep(store, A, force=True).skipped


def test_yields_to_a_client_that_logs_in(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    scanning = threading.Event()

    def slow_scan(self: Any) -> bool:  # a long pass: it only ends when someone asks for the account
        scanning.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.interrupted():
                return False
            time.sleep(0.01)
        return True

    monkeypatch.setattr(hk._Pass, "scan", slow_scan)
    results: list[hk.Result] = []
    worker = threading.Thread(target=lambda: results.append(housekeep(store, A, force=True)))
    worker.start()
    assert scanning.wait(10)  # housekeeping holds both locks now
    started = time.monotonic()
    acct = store.open(A, write=True)  # waits for housekeeping to let go
    assert time.monotonic() - started < 5
    worker.join(10)
    assert results[0].yielded
    acct.close()


def test_housekeeping_and_writers_never_overlap(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many writing sessions and housekeeping passes at once; the two never hold the account together."""
    active = {"hk": 0, "writer": 0}
    overlaps: list[str] = []
    real_run = hk._run
    real_open = Store.open

    def run(*args: Any) -> hk.Result:
        active["hk"] += 1
        if active["writer"]:
            overlaps.append("housekeeping started beside a writer")
        try:
            time.sleep(0.005)
            return real_run(*args)
        finally:
            if active["writer"]:
                overlaps.append("a writer got in during housekeeping")
            active["hk"] -= 1

    def open_(self: Store, account: int, write: bool) -> Any:
        acct = real_open(self, account, write)
        if write:
            if active["hk"]:
                overlaps.append("writer opened during housekeeping")
            active["writer"] += 1
            real_close = acct.close

            def close() -> None:
                active["writer"] -= 1
                real_close()

            acct.close = close  # type: ignore[method-assign]
        return acct

    monkeypatch.setattr(hk, "_run", run)
    monkeypatch.setattr(Store, "open", open_)
    stop = threading.Event()

    def keep_housekeeping() -> None:
        while not stop.is_set():
            housekeep(store, A, force=True)

    worker = threading.Thread(target=keep_housekeeping)
    worker.start()
    try:
        for i in range(15):
            for attempt in range(50):
                try:
                    c, t = session_client(store, A)
                    c.login()
                    break
                except InUse:
                    c.close()
                    t.join(5)
                    time.sleep(0.01)
            upload(c, KEYS, 1, b"n%d" % i, os.urandom(3000))
            c.finish()
            t.join(5)
    finally:
        stop.set()
        worker.join(10)
    assert overlaps == []
    assert store.read_info(A).count_current == 15
    assert_counts_match_recount(store)


def test_deleted_and_old_flags_counted_by_kind(store: Store) -> None:
    c, t = session_client(store, A)
    c.login()
    versions(c, b"k", 3)
    c.delete_file(1, sealed_dir_name(KEYS, 1, b"k"))
    c.finish()
    t.join(5)
    flags = sorted(listing(store).values())
    assert flags == [FILE | DELETED, FILE | OLD | DELETED, FILE | OLD | DELETED]
    housekeep(store, A, force=True)
    info = store.read_info(A)
    assert (info.count_current, info.count_old, info.count_deleted) == (0, 0, 3)


def test_a_dead_writer_is_settled_by_the_next_one(store: Store) -> None:
    """Killed between writing objects, their directory and the info file: nothing reused, nothing miscounted."""
    c, t = session_client(store, A)
    c.login()
    upload(c, KEYS, 1, b"kept", os.urandom(20_000))
    c.finish()
    t.join(5)
    dying = store.open(A, write=True)
    assert store.read_info(A).writer_open
    last = dying.info.last_object_id
    listed_id, orphan_id = last + 1, last + 2
    dying.put_object(orphan_id, b"an object whose reply never left")  # committed, listed nowhere
    root = Directory.parse(dying.read_object(1))
    kwargs, obj = file_object(KEYS, 1, b"late", os.urandom(10_000))
    blocks = dying.put_object(listed_id, obj)
    root.entries.append(Entry(listed_id, FILE, kwargs["name"], 0, blocks))
    dying.replace_object(1, root.serialize())  # the directory made it to disc, the info file did not
    dying._lock.release()  # the process dies: the kernel drops its lock, nothing else happens
    info = store.read_info(A)
    assert info.writer_open and info.last_object_id == last
    survivor = store.open(A, write=True)  # the next writer settles it first
    assert survivor.info.last_object_id >= listed_id  # never handed out again
    assert not survivor.exists(orphan_id) and survivor.exists(listed_id)
    assert survivor.allocate_id() > listed_id
    survivor.close()
    assert not store.read_info(A).writer_open
    assert_counts_match_recount(store)


def test_a_writer_dead_before_its_patch_leaves_links_put_right(store: Store) -> None:
    """Killed after the directory linked a diff's base to the new version, before the patch was written."""
    c, t = session_client(store, A)
    c.login()
    data = os.urandom(60_000)
    base = upload(c, KEYS, 1, b"p", data)
    whole = c.get_object(base).read()
    new = upload_diff(c, KEYS, 1, b"p", base, data + b"tail")
    c.finish()
    t.join(5)
    # The state that kill -9 leaves: directory with the links on disc, base still whole, the
    # info file from before the batch (its last object id below the new version's).
    put = store.backend(A).put(object_key(A, base))
    put.write(whole)
    put.commit()
    with store.info_lock(A):
        store.write_info(store.read_info(A)._replace(writer_open=True, last_object_id=base))
    store.open(A, write=True).close()
    entries = {e.object_id: e for e in Directory.parse(store.open(A, write=False).read_object(1)).entries}
    assert (entries[base].newer, entries[new].older) == (0, 0)
    assert store.read_info(A).last_object_id >= new
    assert_counts_match_recount(store)


class Killed(BaseException):
    """Stands for kill -9 at one point of a housekeeping pass."""


@pytest.mark.parametrize("where", ["replace_object", "delete_objects"])
def test_a_killed_pass_is_finished_by_the_next_writer(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                       where: str) -> None:
    """Killed after merging patches but before the directories (replace_object), or after the
    directories but before deleting the objects (delete_objects)."""
    from boxbox.store.account import Account

    c, t = session_client(store, A)
    c.login()
    data = os.urandom(40_000)
    history, ids = [data], [upload(c, KEYS, 1, b"k", data)]
    for i in range(5):
        data = data[:i * 7000] + os.urandom(500) + data[i * 7000 + 500:]
        history.append(data)
        ids.append(upload_diff(c, KEYS, 1, b"k", ids[-1], data))
    c.finish()
    t.join(5)
    store.update_info(A, soft_limit=1)
    real = getattr(Account, where)

    def dies(self: Any, *args: Any) -> Any:
        raise Killed()

    monkeypatch.setattr(Account, where, dies)
    with pytest.raises(Killed):
        housekeep(store, A)
    monkeypatch.setattr(Account, where, real)
    assert store.read_info(A).writer_open
    store.open(A, write=True).close()  # the next writer settles what the pass left
    assert_counts_match_recount(store)
    c, t = session_client(store, A)
    c.login(read_only=True)
    for e in Directory.parse(c.list_directory(1)).entries:
        assert download(c, KEYS, 1, e.object_id, b"k") == history[ids.index(e.object_id)]
    c.finish()
    t.join(5)
    assert not store.backend(A).exists(f"{A:08x}/journal")
