"""The store's group commit: new objects' fsyncs are owed until one barrier per batch, before any reply."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path
import pytest

from boxbox.objects.directory import Directory
from boxbox.store.account import ROOT_DIRECTORY_ID, Store, object_key
from boxbox.store.backend import ROOT
from boxbox.store.check import check_account
from boxbox.store.session import Session, change_dir_attributes
from boxbox.wire import messages as m

from tests.test_store_support import file_object, make_keys, raid_store, session_client

A = 0x1A


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return raid_store(tmp_path, A, 10_000, 20_000, "alice")


def test_no_reply_leaves_while_a_new_object_is_owed_its_fsyncs(store: Store) -> None:
    from boxbox.store.session import Session
    from boxbox.wire.client import Client
    from boxbox.wire.commands import Dispatcher
    from boxbox.wire.transport import Connection

    session = Session(store, A)
    owed_at_flush: list[int] = []

    class CheckingConnection(Connection):
        def flush(self) -> None:
            if session.account is not None and session.account._owed:
                owed_at_flush.append(len(session.account._owed))
            super().flush()

    a, b = socket.socketpair()
    server = threading.Thread(target=lambda: Dispatcher(CheckingConnection(b), session).run(), daemon=True)
    server.start()
    client = Client(Connection(a))
    client.hello()
    client.login()
    keys = make_keys()
    kwargs, obj = file_object(keys, 1, b"first", os.urandom(300_000))
    first = client.store_file(1, source=io.BytesIO(obj), **kwargs)
    pendings = []
    for i in range(80):  # more than one batch, with downloads (stream replies) mid-batch
        kw, ob = file_object(keys, 1, b"f%d" % i, b"data %d" % i * 50)
        pendings.append(client.submit(m.StoreFile(1, kw["mtime"], kw["attributes_hash"], 0, kw["name"],
                                                  kw["attributes"]), upload=[ob]))
        if i % 10 == 0:
            pendings.append(client.submit(m.CreateDirectory(1, 0, b"\0" * 16 + b"d%d" % i, b"")))
            pendings.append(client.submit(m.GetObject(first), download=True))
    for p in pendings:
        value = p.result()
        if p.download:
            assert value[1].read() == obj
    client.finish()
    server.join(5)
    session.close()
    assert owed_at_flush == []


def test_a_batch_fsyncs_each_directory_once_not_once_per_object(store: Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from boxbox.raidfile import writer

    synced_dirs: list[str] = []
    real = writer.fsync_dir
    monkeypatch.setattr(writer, "fsync_dir", lambda p: (synced_dirs.append(str(p)), real(p))[1])
    keys = make_keys()
    client, t = session_client(store, A)
    client.login()
    synced_dirs.clear()
    pendings = []
    for i in range(40):
        kw, ob = file_object(keys, 1, b"f%d" % i, b"file %d " % i * 20)
        pendings.append(client.submit(m.StoreFile(1, kw["mtime"], kw["attributes_hash"], 0, kw["name"],
                                                  kw["attributes"]), upload=[ob]))
    assert len({p.result().object_id for p in pendings}) == 40
    client.finish()
    t.join(5)
    # 40 objects in one shard directory: one barrier (3 directories), then the root directory and the
    # info file (3 each), per batch; per-object commits made 120
    assert len(synced_dirs) < 40


def _owed_stripes(store: Store, tmp_path: Path, object_id: int) -> list[Path]:
    return [tmp_path / f"d{i}" / f"{ROOT}/{object_key(A, object_id)}.rf" for i in range(3)]


@pytest.mark.parametrize("loss", ["emptied", "gone", "one stripe left"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "standalone"])
def test_power_loss_before_the_barrier_costs_only_unlisted_objects(store: Store, tmp_path: Path, loss: str,
                                                                   packed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a power cut can leave of objects whose fsyncs were still owed: empty or missing stripes, no
    directory listing them. The next writer's recovery removes them; check finds nothing else wrong.
    `packed`: the barrier had renamed their pack (one RAID file for the three) but not fsynced it."""
    from boxbox.store import raidstore

    if not packed:
        monkeypatch.setattr(raidstore, "SMALL", 0)
    keys = make_keys()
    client, t = session_client(store, A)
    client.login()
    kw, ob = file_object(keys, 1, b"kept", b"kept data " * 500)
    kept = client.store_file(1, source=io.BytesIO(ob), **kw)  # answered: durable and listed
    client.finish()
    t.join(5)

    acct = store.open(A, write=True)  # a session that dies before its barrier
    lost = []
    for i in range(3):
        new_id = acct.allocate_id()
        with acct.new_object(new_id, durable=False) as w:
            w.write(os.urandom(20_000))
        lost.append(new_id)
    writers = [put.writer for put in acct._owed if put.writer is not None]  # type: ignore[attr-defined]
    if packed:
        assert writers == []
        shard = tmp_path / "d0" / ROOT / object_key(A, lost[0]).rpartition("/")[0]
        earlier = set(shard.glob("pack~*.rf"))  # (the first session's)
        writers = acct.backend._write_packs([acct.key(i) for i in lost])  # type: ignore[attr-defined]
        packs = [tmp_path / f"d{i}" / p.relative_to(tmp_path / "d0") for p in set(shard.glob("pack~*.rf")) - earlier
                 for i in range(3)]
        assert len(packs) == 3 and not any(p.exists() for i in lost for p in _owed_stripes(store, tmp_path, i))
    for stripes in [packs] if packed else [_owed_stripes(store, tmp_path, i) for i in lost]:  # after the cut
        assert all(p.exists() for p in stripes)
        for j, p in enumerate(stripes):
            if loss == "emptied":
                os.truncate(p, 0)
            elif loss == "gone" or j:
                p.unlink()
    for w in writers:  # the process is gone: its descriptors and locks with it
        w._close()
    acct._owed.clear()
    acct._lock.release()  # type: ignore[union-attr]  # died: the writer flag stays set

    reopened = store.open(A, write=True)  # recovery runs first
    assert not any(reopened.exists(i) for i in lost)
    reopened.close()
    report = check_account(store, A)
    assert report.errors == 0, report
    names = Directory.parse(store.open(A, write=False).read_object(ROOT_DIRECTORY_ID)).entries
    assert [e.object_id for e in names] == [kept]


def test_objects_are_readable_before_their_barrier(store: Store) -> None:
    """Durability is owed, visibility is not: the session can read back (diff against) an object it just wrote."""
    acct = store.open(A, write=True)
    new_id = acct.allocate_id()
    with acct.new_object(new_id, durable=False) as w:
        w.write(b"x" * 10_000)
    assert acct.read_object(new_id) == b"x" * 10_000
    acct.sync_objects()
    assert acct._owed == []
    acct.close()



def test_the_dispatcher_waits_for_more_requests_only_with_unsaved_changes() -> None:
    from boxbox.wire.commands import NONE, Dispatcher
    from boxbox.wire.transport import Connection

    class Dirty:
        access = NONE
        dirty = True

        def unsaved(self) -> bool:
            return self.dirty

    a, b = socket.socketpair()
    session = Dirty()
    d = Dispatcher(Connection(b), session)
    assert not d._more_soon()  # nothing came within COMMIT_DELAY: sync now
    a.sendall(b"x")
    assert d._more_soon()  # the next request is on its way: one sync for both
    session.dirty = False
    assert not d._more_soon()  # nothing to save: replies go at once
    a.close()
    b.close()


@pytest.mark.parametrize("disc_back_at_close", [True, False], ids=["settled-at-close", "left-to-recovery"])
def test_a_failed_barrier_fails_the_session_and_its_objects_are_removed(
        store: Store, monkeypatch: pytest.MonkeyPatch, disc_back_at_close: bool) -> None:
    from boxbox.errors import StorageError

    acct = store.open(A, write=True)
    new_id = acct.allocate_id()
    with acct.new_object(new_id, durable=False) as w:
        w.write(b"y" * 5000)

    def eio(*args: object) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", eio)
        with pytest.raises(StorageError):
            acct.sync_objects()
        with pytest.raises(StorageError):  # and every later barrier: nothing may list the object now
            acct.sync_objects()
        if not disc_back_at_close:
            from boxbox.store import housekeep

            mp.setattr(housekeep, "recover", eio)  # the clean-up at close fails too
            acct.close()
    if disc_back_at_close:
        acct.close()  # settles the failed barrier before letting go: `check` is clean at once
        assert not store.read_info(A).writer_open and not acct.exists(new_id)
        assert check_account(store, A).errors == 0
    else:
        assert store.read_info(A).writer_open  # so the next writer settles what the session left
    reopened = store.open(A, write=True)
    assert not reopened.exists(new_id)
    reopened.close()
    assert check_account(store, A).errors == 0


# ------------------------------------------------------------ rewrites of existing objects, one group commit

def _make_directories(store: Store, n: int) -> list[int]:
    client, t = session_client(store, A)
    client.login()
    pendings = [client.submit(m.CreateDirectory(ROOT_DIRECTORY_ID, 0, b"\0" * 16 + b"dir%d" % i, b""))
                for i in range(n)]
    ids = [p.result().object_id for p in pendings]
    client.finish()
    t.join(5)
    return ids


def _session_changing(store: Store, ids: list[int], tag: int) -> Session:
    """A writing session with every directory of `ids` changed (new attributes), not yet synced."""
    session = Session(store, A)
    session.account = store.open(A, write=True)
    for i in ids:
        change_dir_attributes(session, m.ChangeDirAttributes(i, 0, bytes([tag]) * 40), None)
    return session


def _object_paths(tmp_path: Path, object_id: int) -> list[Path]:
    return [tmp_path / f"d{i}" / f"{ROOT}/{object_key(A, object_id)}.rf" for i in range(3)]


def test_a_sync_rewriting_n_directories_fsyncs_their_stripes_together_and_each_directory_once(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 24
    ids = _make_directories(store, n)
    session = _session_changing(store, ids, 7)
    fsyncs: list[int] = []
    real = os.fsync
    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
        session.sync()
    session.close()
    # 3 stripe temps per directory (on the pool, together), the few shard directories they live in
    # once each, then the info file (3 temps, 3 directories). A durable commit per directory made
    # n x (3 + 3) + 6 = 150.
    assert 3 * n <= len(fsyncs) <= 3 * n + 18, len(fsyncs)
    reader = store.open(A, write=False)
    for i in ids:
        assert Directory.parse(reader.read_object(i)).sealed_attributes == bytes([7]) * 40
    reader.close()
    assert check_account(store, A).errors == 0


class _PowerCut(BaseException):
    pass


@pytest.mark.parametrize("lost", ["none", "all", "stripe 1 kept", "parity lost"])
@pytest.mark.parametrize("cut_after", [0, 1, 5, 9])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "standalone"])
def test_power_cut_during_the_rewrites_leaves_each_directory_old_or_new(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut_after: int, lost: str,
        packed: bool) -> None:
    """The disc as a power cut leaves it after `cut_after` objects of the group were renamed: every temp
    was fsynced (so all of them survive), but no directory was, so each rename may be lost, stripe by
    stripe (`lost`). The next writer's recovery settles it: each directory is its old or new version,
    check finds nothing wrong (but a stale stripe to rebuild), and the root's listing is intact.
    `packed`: the old versions are pack members (a new directory's first version), so each rewrite makes
    a new standalone RAID file; else they are RAID files of their own, rewritten in place."""
    import shutil

    from boxbox.raidfile import writer
    from boxbox.store import raidstore

    if not packed:
        monkeypatch.setattr(raidstore, "SMALL", 0)
    ids = _make_directories(store, 10)
    assert all(p.exists() != packed for i in ids for p in _object_paths(tmp_path, i))
    reader = store.open(A, write=False)
    old = {i: reader.read_object(i) for i in ids}
    reader.close()
    discs = [tmp_path / f"d{i}" for i in range(3)]
    before = {p: p.read_bytes() for i in ids for p in _object_paths(tmp_path, i) if p.exists()}

    session = _session_changing(store, ids, 9)
    image = tmp_path / "image"
    renamed: list[list[tuple[str, str]]] = []
    real_rename, real_commit_all, real_fsync = writer.RaidWriter._rename, writer.commit_all, os.fsync
    written: set[tuple[int, int]] = set()  # inodes of the group's temps, and those fsynced since
    synced: set[tuple[int, int]] = set()

    def inode(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def commit_all(writers: list[writer.RaidWriter]) -> None:
        written.update(inode(os.fstat(t.fd)) for w in writers for t in w._targets)
        real_commit_all(writers)

    def fsync(fd: int) -> None:
        synced.add(inode(os.fstat(fd)))
        real_fsync(fd)

    def rename(w: writer.RaidWriter, fsynced: bool) -> None:
        if len(renamed) == cut_after and not image.exists():  # the power goes here
            for d in discs:
                shutil.copytree(d, image / d.name)
                for here, _, names in os.walk(d):  # what was never fsynced did not reach the disc
                    for name in names:
                        if inode(os.stat(os.path.join(here, name))) in written - synced:
                            os.truncate(image / d.name / os.path.relpath(os.path.join(here, name), d), 0)
            raise _PowerCut
        renamed.append([(t.temp, t.final) for t in w._targets])
        real_rename(w, fsynced)

    monkeypatch.setattr(writer.RaidWriter, "_rename", rename)
    monkeypatch.setattr(writer, "commit_all", commit_all)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(_PowerCut):
        session.sync()
    monkeypatch.undo()
    session.account._drop_staged()  # the process is gone: its descriptors and locks with it
    session.account._lock.release()  # type: ignore[union-attr]
    session.account = None

    for d in discs:  # the disc after the cut
        shutil.rmtree(d)
        shutil.copytree(image / d.name, d)
    for stripes in renamed:  # renames not on disc (their directories were never fsynced)
        for k, (temp, final) in enumerate(stripes):
            if lost == "all" or (lost == "stripe 1 kept" and k > 0) or (lost == "parity lost" and k == 2):
                os.replace(final, temp)
                if Path(final) in before:  # (a new name, over a pack member, had no stripe before)
                    Path(final).write_bytes(before[Path(final)])
    assert store.read_info(A).writer_open

    acct = store.open(A, write=True)  # recovery runs first
    acct.close()
    report = check_account(store, A)
    if lost == "stripe 1 kept" and renamed and not packed:
        # a lone renamed stripe 1 is a stale stripe of the old version (the same as a kill between a
        # single commit's 1st and 2nd renames): redundancy to rebuild, nothing lost. (Over a pack
        # member it is the only stripe of its name: recovery completes the write from the temps.)
        assert report.errors and all(p.kind == "stripes" for p in report.problems), report
        check_account(store, A, fix=True)
        report = check_account(store, A)
    assert report.errors == 0, report
    reader = store.open(A, write=False)
    news = 0
    for i in ids:
        data = reader.read_object(i)
        attrs = Directory.parse(data).sealed_attributes
        assert data == old[i] or attrs == bytes([9]) * 40, i
        news += attrs == bytes([9]) * 40
    root = Directory.parse(reader.read_object(ROOT_DIRECTORY_ID))
    reader.close()
    assert sorted(e.object_id for e in root.entries) == sorted(ids)
    if lost == "none":
        assert news == cut_after
    elif lost == "all":
        assert news == 0


# ------------------------------------------------------------ the barrier and the rewrites in one round of fsyncs

def _store_pipelined(client, keys, names: list[bytes]) -> list:  # type: ignore[no-untyped-def]
    """StoreFile requests for `names` in the root, all sent before any reply is read (one batch)."""
    pendings = []
    for name in names:
        kw, ob = file_object(keys, ROOT_DIRECTORY_ID, name, name * 300)
        pendings.append(client.submit(m.StoreFile(ROOT_DIRECTORY_ID, kw["mtime"], kw["attributes_hash"], 0,
                                                  kw["name"], kw["attributes"]), upload=[ob]))
    return pendings


def test_no_directory_is_renamed_before_the_new_objects_it_lists_are_durable(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync's one round: the new objects' stripes, the directories they were renamed in and the
    rewritten directories' temps are all fsynced before the first rename of a rewrite."""
    from boxbox.raidfile import writer

    synced: set[tuple[int, int]] = set()
    must: set[tuple[int, int]] = set()  # what the group's first rename needs on disc
    renames: list[bool] = []
    real_fsync, real_rename, real_together = os.fsync, writer.RaidWriter._rename, writer.sync_and_commit

    def inode(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def fsync(fd: int) -> None:
        synced.add(inode(os.fstat(fd)))
        real_fsync(fd)

    def together(owed: list[writer.RaidWriter], writers: list[writer.RaidWriter]) -> None:
        if owed and writers:
            must.update(inode(os.fstat(t.fd)) for w in (*owed, *writers) for t in w._targets)
            must.update(inode(os.stat(d)) for w in owed for d in w.directories())
        real_together(owed, writers)

    def rename(w: writer.RaidWriter, fsynced: bool) -> None:
        if fsynced and must:
            renames.append(must <= synced)
        real_rename(w, fsynced)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(writer, "sync_and_commit", together)
    monkeypatch.setattr(writer.RaidWriter, "_rename", rename)
    client, t = session_client(store, A)
    client.login()
    ids = [p.result().object_id for p in _store_pipelined(client, make_keys(), [b"a%d" % i for i in range(20)])]
    client.finish()
    t.join(5)
    assert renames and all(renames)  # the root directory was rewritten, and only after the round
    names = Directory.parse(store.open(A, write=False).read_object(ROOT_DIRECTORY_ID)).entries
    assert sorted(e.object_id for e in names) == sorted(ids)


def test_a_failed_flush_fails_the_stores_it_covers_never_answering_success(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fsync error in the round that covers new objects and their directory: no StoreFile of the
    batch is answered with success (the connection is dropped), and what the batch left is removed."""
    from boxbox.errors import ProtocolError
    from boxbox.raidfile import writer

    real_together = writer.sync_and_commit
    failed: list[int] = []

    def together(owed: list[writer.RaidWriter], writers: list[writer.RaidWriter]) -> None:
        def eio(fd: int) -> None:
            failed.append(fd)
            raise OSError(5, "Input/output error")

        with monkeypatch.context() as mp:
            mp.setattr(os, "fsync", eio)
            real_together(owed, writers)

    monkeypatch.setattr(writer, "sync_and_commit", together)
    client, t = session_client(store, A)
    client.login()
    pendings = _store_pipelined(client, make_keys(), [b"b%d" % i for i in range(10)])
    for p in pendings:
        with pytest.raises(ProtocolError):
            p.result()
    t.join(5)
    assert failed
    assert not store.read_info(A).writer_open  # the session settled what the failed batch left
    assert check_account(store, A).errors == 0
    assert Directory.parse(store.open(A, write=False).read_object(ROOT_DIRECTORY_ID)).entries == []
