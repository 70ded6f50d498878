"""Store: account database, info file, accounts, limits, locks, and every command through a session."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from boxbox.errors import FormatError, InUse, LimitExceeded, NotFound, PermissionDenied, UsageError
from boxbox.objects.directory import DELETED, DIR, FILE, OLD, Directory, make_entry, open_entry
from boxbox.objects.file import decode_file, seal_place
from boxbox.objects.layout import read_file_layout
from boxbox.raidfile import DiscSet
from boxbox.store import accountdb
from boxbox.store.account import ROOT_DIRECTORY_ID, Store, object_key
from boxbox.store.accountdb import AccountDatabase
from boxbox.store.info import AccountInfo
from boxbox.wire import messages as m

from tests.test_store_support import attributes, file_object, make_keys, sealed_dir_name, session_client

A, B = 0x1A, 0x2B


def discset(root: Path) -> DiscSet:
    dirs = [root / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return DiscSet("0", dirs, 4096)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(AccountDatabase(tmp_path / "accounts.db"), {"0": discset(tmp_path)})
    s.create_account(A, 10_000, 20_000, "0", "alice")
    s.create_account(B, 10_000, 20_000, "0", "bob")
    return s


# ------------------------------------------------------------------ formats
def test_account_database_round_trip_and_malformed(tmp_path: Path) -> None:
    data = accountdb.encode({1: "0", 0xFFFFFFFF: "big"})
    assert accountdb.decode(data, "x") == {1: "0", 0xFFFFFFFF: "big"}
    for bad in (data[:5], b"XXXX" + data[4:], data[:-1], data + b"\0", data[:8] + b"\xff\xff\xff\x7f" + data[12:]):
        with pytest.raises(FormatError):
            accountdb.decode(bad, "x")


def test_info_round_trip_and_malformed() -> None:
    info = AccountInfo(7, False, 10, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "naïve")
    data = info.encode()
    assert AccountInfo.decode(data, "x") == info
    for bad in (data[:121], b"BXAD" + data[4:], data + b"x", data[:4] + b"\x09\x00" + data[6:]):
        with pytest.raises(FormatError):
            AccountInfo.decode(bad, "x")


def test_database_is_reread_when_replaced(tmp_path: Path) -> None:
    db1 = AccountDatabase(tmp_path / "a.db")
    db2 = AccountDatabase(tmp_path / "a.db")
    with db1.editing() as accounts:
        accounts[5] = "0"
    assert 5 not in db2
    db2.refresh()
    assert 5 in db2 and db2.discset_of(5) == "0"


# ------------------------------------------------------------------ accounts
def test_create_account_makes_root_and_counts_it(store: Store) -> None:
    info = store.read_info(A)
    assert (info.account, info.name, info.enabled, info.last_object_id) == (A, "alice", True, ROOT_DIRECTORY_ID)
    assert info.count_directories == 1 and info.blocks_used == info.blocks_directories > 0
    acct = store.open(A, write=False)
    root = Directory.parse(acct.read_object(ROOT_DIRECTORY_ID))
    assert (root.object_id, root.container_id, root.entries) == (ROOT_DIRECTORY_ID, 0, [])


def test_create_account_refusals(store: Store) -> None:
    with pytest.raises(UsageError, match="already exists"):
        store.create_account(A, 1, 2, "0")
    with pytest.raises(UsageError, match="above the hard limit"):
        store.create_account(0x99, 20, 10, "0")
    with pytest.raises(Exception, match="no disc set 'nope'"):
        store.create_account(0x99, 1, 2, "nope")
    assert 0x99 not in store.database


def test_update_info_and_limits(store: Store) -> None:
    store.update_info(A, soft_limit=5, hard_limit=6, name="new", enabled=False)
    info = store.read_info(A)
    assert (info.soft_limit, info.hard_limit, info.name, info.enabled) == (5, 6, "new", False)
    with pytest.raises(UsageError, match="above the hard limit"):
        store.update_info(A, soft_limit=7)


def test_one_writer_and_readers_beside_it(store: Store) -> None:
    w = store.open(A, write=True)
    with pytest.raises(InUse, match="in use by another client"):
        store.open(A, write=True)
    r = store.open(A, write=False)  # read-only is fine
    store.open(B, write=True).close()  # other accounts are unaffected
    w.close()
    store.open(A, write=True).close()  # released
    r.close()


def test_delete_account_removes_everything(store: Store, tmp_path: Path) -> None:
    w = store.open(A, write=True)
    with pytest.raises(InUse):
        store.delete_account(A)
    w.close()
    assert store.delete_account(A) >= 2  # root directory + info
    assert A not in store.database
    assert list(store.backend(B).list(f"{A:08x}")) == []
    assert store.read_info(B).name == "bob"


# ------------------------------------------------------------------ commands
@pytest.fixture()
def alice(store: Store) -> Any:
    client, thread = session_client(store, A)
    client.login()
    yield client
    client.close()
    thread.join(5)


def test_full_command_coverage(store: Store, alice: Any) -> None:
    keys = make_keys()
    usage0 = alice.usage()
    sub = alice.create_directory(ROOT_DIRECTORY_ID, sealed_dir_name(keys, 1, b"docs"))
    assert alice.create_directory(ROOT_DIRECTORY_ID, sealed_dir_name(keys, 1, b"docs")) == sub  # idempotent
    kwargs, obj = file_object(keys, sub, b"a.txt", b"hello world" * 1000)
    fid = alice.store_file(sub, source=io.BytesIO(obj), **kwargs)
    assert alice.get_file(sub, fid).read() == obj
    assert alice.get_object(fid).read() == obj
    index = read_file_layout(io.BytesIO(obj)).index_blob()
    assert alice.get_block_index(fid).read() == index
    by_name_id, stream = alice.get_block_index_by_name(sub, kwargs["name"])
    assert by_name_id == fid and stream.read() == index

    listing = Directory.parse(alice.list_directory(sub))
    [entry] = listing.entries
    assert (entry.object_id, entry.flags, entry.sealed_name) == (fid, FILE, kwargs["name"])
    assert entry.sealed_attributes == kwargs["attributes"] and entry.attr_hash == kwargs["attributes_hash"]
    assert Directory.parse(alice.list_directory(sub, attributes=False)).entries[0].sealed_attributes == b""
    assert Directory.parse(alice.list_directory(sub, flags_must_be_set=DIR)).entries == []

    # a second version makes the first OLD
    kwargs2, obj2 = file_object(keys, sub, b"a.txt", b"second version")
    kwargs2["name"] = kwargs["name"]
    fid2 = alice.store_file(sub, source=io.BytesIO(obj2), **kwargs2)
    flags = {e.object_id: e.flags for e in Directory.parse(alice.list_directory(sub)).entries}
    assert flags == {fid: FILE | OLD, fid2: FILE}
    u = alice.usage()
    assert u.blocks_old > 0 and u.blocks_current > 0 and u.blocks_used > usage0.blocks_used

    assert alice.delete_file(sub, kwargs["name"]) == fid2
    flags = {e.object_id: e.flags for e in Directory.parse(alice.list_directory(sub)).entries}
    assert flags == {fid: FILE | OLD | DELETED, fid2: FILE | DELETED}
    alice.undelete_file(sub, fid2)
    assert alice.usage().blocks_current > 0

    other = alice.create_directory(ROOT_DIRECTORY_ID, sealed_dir_name(keys, 1, b"other"))
    new_name = sealed_dir_name(keys, other, b"b.txt")
    uid = read_file_layout(io.BytesIO(obj2)).uid
    moved_entry = make_entry(keys, other, b"b.txt", fid2, FILE, attributes())
    alice.move_object(fid2, sub, other, new_name, entry_attributes=moved_entry.sealed_attributes,
                      attributes_hash=moved_entry.attr_hash, place=seal_place(keys, uid, other, b"b.txt", attributes()))
    names = alice.get_object_name(fid2, other)
    assert names.names == [sealed_dir_name(keys, 1, b"other"), new_name] and names.flags == FILE
    # the client can still open and verify everything at the new place
    out = io.BytesIO()
    decode_file(keys, alice.get_file(other, fid2), out, container_id=other, name=b"b.txt")
    assert out.getvalue() == b"second version"
    listed = Directory.parse(alice.list_directory(other)).entry(fid2)
    assert open_entry(keys, other, listed)[0] == b"b.txt"
    with pytest.raises(UsageError, match="names another directory"):
        alice.move_object(fid2, other, sub, sealed_dir_name(keys, sub, b"c"),
                          place=seal_place(keys, uid, other, b"b.txt", attributes()))

    alice.delete_directory(sub)
    root = {e.object_id: e.flags for e in Directory.parse(alice.list_directory(ROOT_DIRECTORY_ID)).entries}
    assert root[sub] == DIR | DELETED
    assert all(e.flags & DELETED for e in Directory.parse(alice.list_directory(sub)).entries)
    alice.undelete_directory(sub)
    assert not Directory.parse(alice.list_directory(ROOT_DIRECTORY_ID)).entry(sub).flags & DELETED

    alice.change_dir_attributes(sub, b"\x01" * 40)
    assert Directory.parse(alice.list_directory(sub)).sealed_attributes == b"\x01" * 40
    alice.set_client_store_marker(0x1234)
    alice.keep_alive().result()
    alice.finish()
    info = store.read_info(A)
    assert info.client_store_marker == 0x1234
    assert info.count_directories == 3


def test_errors_for_bad_requests(alice: Any) -> None:
    keys = make_keys()
    kwargs, obj = file_object(keys, 1, b"x", b"data")
    with pytest.raises(NotFound, match="diff base 0x5 is not a file"):
        alice.store_file(1, source=io.BytesIO(obj), diff_from=5, **kwargs)
    with pytest.raises(FormatError, match="container"):
        alice.store_file(1, source=io.BytesIO(file_object(keys, 7, b"x", b"data")[1]), **kwargs)
    with pytest.raises(FormatError):
        alice.store_file(1, source=[b"not a file object at all" * 10], **kwargs)
    with pytest.raises(UsageError, match="sealed name"):
        alice.create_directory(1, b"short")
    with pytest.raises(NotFound):
        alice.list_directory(0xDEAD)
    with pytest.raises(UsageError, match="root directory"):
        alice.delete_directory(ROOT_DIRECTORY_ID)
    with pytest.raises(NotFound):
        alice.get_object(0)
    with pytest.raises(UsageError, match="unknown move flags"):
        alice.move_object(1, 1, 1, bytes(32), flags=0x80)
    with pytest.raises(UsageError, match="already logged in"):
        alice.login()
    assert alice.usage().blocks_current == 0  # nothing stored by the refused uploads


def test_accounts_cannot_see_each_other(store: Store) -> None:
    keys = make_keys()
    bob, tb = session_client(store, B)
    bob.login()
    kwargs, obj = file_object(keys, 1, b"secret", b"bob's data")
    bob_file = bob.store_file(1, source=io.BytesIO(obj), **kwargs)
    bob_dir = bob.create_directory(1, sealed_dir_name(keys, 1, b"bobdir"))
    bob.finish()
    tb.join(5)
    alice, ta = session_client(store, A)
    alice.login()
    for call in (lambda: alice.get_object(bob_file), lambda: alice.get_file(1, bob_file),
                 lambda: alice.list_directory(bob_dir), lambda: alice.get_block_index(bob_file),
                 lambda: alice.delete_directory(bob_dir), lambda: alice.undelete_file(1, bob_file),
                 lambda: alice.move_object(bob_file, 1, 1, kwargs["name"]),
                 lambda: alice.get_object_name(bob_file, 1), lambda: alice.delete_file(1, kwargs["name"])):
        with pytest.raises(NotFound):
            call()
    alice.finish()
    ta.join(5)
    bob, tb = session_client(store, B)
    bob.login(read_only=True)
    assert bob.get_object(bob_file).read() == obj
    with pytest.raises(PermissionDenied, match="needs write access"):
        bob.delete_file(1, kwargs["name"])
    bob.finish()


def test_hard_limit_refuses_and_leaves_nothing(store: Store, tmp_path: Path) -> None:
    keys = make_keys()
    store.update_info(A, soft_limit=10, hard_limit=12)
    client, t = session_client(store, A)
    client.login()
    before = client.usage()
    kwargs, obj = file_object(keys, 1, b"big", os.urandom(200_000))
    with pytest.raises(LimitExceeded, match="hard limit"):
        client.store_file(1, source=io.BytesIO(obj), **kwargs)
    after = client.usage()
    assert after == before
    keys_left = set(store.backend(A).list(f"{A:08x}"))
    assert keys_left == {f"{A:08x}/info", object_key(A, ROOT_DIRECTORY_ID)}
    small_kwargs, small = file_object(keys, 1, b"small", b"tiny")
    client.store_file(1, source=io.BytesIO(small), **small_kwargs)  # still room for a small one
    client.finish()
    t.join(5)


def test_pipelined_uploads_write_each_directory_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = make_keys()
    client, t = session_client(store, A)
    client.login()
    from boxbox.store import account as account_mod

    writes: list[int] = []
    real = account_mod.Account.replace_object

    def counting(self: Any, object_id: int, data: bytes) -> int:
        writes.append(object_id)
        return real(self, object_id, data)

    monkeypatch.setattr(account_mod.Account, "replace_object", counting)
    pendings = []
    for i in range(30):
        kwargs, obj = file_object(keys, 1, b"f%d" % i, b"file %d " % i * 10)
        pendings.append(client.submit(m.StoreFile(1, kwargs["mtime"], kwargs["attributes_hash"], 0,
                                                  kwargs["name"], kwargs["attributes"]), upload=[obj]))
    ids = [p.result().object_id for p in pendings]
    assert len(set(ids)) == 30
    assert writes.count(ROOT_DIRECTORY_ID) < 30  # batched, not once per file
    assert len(Directory.parse(client.list_directory(1)).entries) == 30
    client.finish()
    t.join(5)
    assert store.read_info(A).count_current == 30


def test_admin_edits_survive_a_writing_session(store: Store) -> None:
    writer = store.open(A, write=True)
    writer.allocate_id()
    store.update_info(A, hard_limit=12_345, name="renamed", enabled=False)  # `boxbox accounts` meanwhile
    writer.close()
    info = store.read_info(A)
    assert (info.hard_limit, info.name, info.enabled, info.last_object_id) == (12_345, "renamed", False, 2)


def test_replies_leave_only_when_their_changes_are_on_disc(store: Store) -> None:
    """Invariant: whenever the server writes replies, no directory or info change is unsaved."""
    import socket
    import threading

    from boxbox.store.session import Session
    from boxbox.wire.client import Client
    from boxbox.wire.commands import Dispatcher
    from boxbox.wire.transport import Connection

    session = Session(store, A)
    unsaved_at_flush: list[str] = []

    class CheckingConnection(Connection):
        def flush(self) -> None:
            acct = session.account
            if session._dirty or (acct is not None and acct._info_dirty):
                unsaved_at_flush.append(f"dirty {sorted(session._dirty)}")
            super().flush()

    a, b = socket.socketpair()
    server = threading.Thread(target=lambda: Dispatcher(CheckingConnection(b), session).run(), daemon=True)
    server.start()
    client = Client(Connection(a))
    client.hello()
    client.login()
    keys = make_keys()
    kwargs, obj = file_object(keys, 1, b"first", os.urandom(600_000))  # big enough to flush mid-stream
    first = client.store_file(1, source=io.BytesIO(obj), **kwargs)
    pendings = []
    for i in range(100):  # more than one batch, with downloads that flush mid-batch
        kw, ob = file_object(keys, 1, b"f%d" % i, b"data %d" % i * 50)
        pendings.append(client.submit(m.StoreFile(1, kw["mtime"], kw["attributes_hash"], 0, kw["name"],
                                                  kw["attributes"]), upload=[ob]))
        if i % 10 == 0:
            pendings.append(client.submit(m.GetObject(first), download=True))
    for p in pendings:
        value = p.result()
        if p.download:
            assert value[1].read() == obj
    client.finish()
    server.join(5)
    session.close()
    assert unsaved_at_flush == []
    assert len(Directory.parse(store.open(A, write=False).read_object(ROOT_DIRECTORY_ID)).entries) == 101


def test_move_renames_and_lands_on_deleted_names_only_when_asked(alice: Any) -> None:
    keys = make_keys()
    ids = {}
    for name in (b"a", b"b"):
        kwargs, obj = file_object(keys, 1, name, name * 10)
        ids[name] = alice.store_file(1, source=io.BytesIO(obj), **kwargs)
    name_b = sealed_dir_name(keys, 1, b"b")
    with pytest.raises(UsageError, match="already taken"):
        alice.move_object(ids[b"a"], 1, 1, name_b)  # b is live
    alice.delete_file(1, name_b)
    with pytest.raises(UsageError, match="already taken"):
        alice.move_object(ids[b"a"], 1, 1, name_b)  # deleted, but the flag was not given
    alice.move_object(ids[b"a"], 1, 1, name_b, flags=m.MOVE_ALLOW_OVER_DELETED)
    entries = {e.object_id: (e.sealed_name, e.flags) for e in Directory.parse(alice.list_directory(1)).entries}
    assert entries == {ids[b"a"]: (name_b, FILE), ids[b"b"]: (name_b, FILE | DELETED)}
    renamed = sealed_dir_name(keys, 1, b"c")
    alice.move_object(ids[b"a"], 1, 1, renamed)  # a plain rename in place
    assert Directory.parse(alice.list_directory(1)).entry(ids[b"a"]).sealed_name == renamed
