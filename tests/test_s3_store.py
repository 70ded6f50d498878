"""The store on SeaweedFS: the S3 object store, its checksums and usage, its config, the
account list in the bucket shared by two stores, a writer that loses its lease, check."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox import config
from boxbox.errors import (
    BoxboxError, ConfigError, IntegrityError, NotFound, PermissionDenied, StorageError, UsageError,
)
from boxbox.s3.client import S3Client
from boxbox.store.account import Store, object_key
from boxbox.store.check import check_account
from boxbox.store.s3backend import PACK_MEMBER, SMALL, TRAILER, S3ObjectStore
from boxbox.store.session import Session
from boxbox.wire import messages as m
from boxbox.wire.client import Client
from boxbox.wire.commands import Dispatcher
from boxbox.wire.transport import Connection

from tests.serverutil import make_store, s3_section, upload
from tests.test_store_support import file_object, make_keys, session_client

A = 0x51
KEYS = make_keys()


@pytest.fixture()
def backend(seaweed: Any) -> S3ObjectStore:
    return S3ObjectStore(S3Client(seaweed.new_bucket()), "pre/fix", "t")


def put(backend: S3ObjectStore, key: str, *chunks: bytes, exclusive: bool = False) -> None:
    p = backend.put(key, exclusive)
    for c in chunks:
        p.write(c)
    p.commit()


def test_round_trip_in_one_request_each(backend: S3ObjectStore) -> None:
    before = backend.client.requests
    put(backend, "0000002a/o/0/00/0000000000000002", b"hello ", b"world", exclusive=True)
    assert backend.client.requests - before == 1  # no HEAD before, none after
    assert backend.get("0000002a/o/0/00/0000000000000002").read() == b"hello world"
    assert backend.usage_blocks("0000002a/o/0/00/0000000000000002") == 1
    assert backend.client.requests - before == 2  # the size was remembered: no HEAD for usage
    assert [i.key for i in backend.client.list_objects("pre/fix/")] == ["pre/fix/0000002a/o/0/00/0000000000000002"]
    assert list(backend.list("0000002a")) == ["0000002a/o/0/00/0000000000000002"]
    assert backend.exists("0000002a/o/0/00/0000000000000002") and not backend.exists("0000002a/info")
    backend.delete("0000002a/o/0/00/0000000000000002")
    backend.delete("0000002a/o/0/00/0000000000000002")  # S3: a missing key is not an error
    with pytest.raises(NotFound, match="s3 store t: 0000002a/o/0/00/0000000000000002"):
        backend.get("0000002a/o/0/00/0000000000000002")


def test_a_new_object_never_replaces_one(backend: S3ObjectStore) -> None:
    put(backend, "a/b", b"first", exclusive=True)
    with pytest.raises(StorageError, match="a/b already exists"):
        put(backend, "a/b", b"second", exclusive=True)
    put(backend, "a/b", b"rewritten")  # a rewrite (a directory, a patch) replaces
    assert backend.get("a/b").read() == b"rewritten"


def test_rewrites_are_committed_together_and_a_failure_leaves_the_old_version(backend: S3ObjectStore) -> None:
    for k in ("d/1", "d/2", "d/3"):
        put(backend, k, b"old " + k.encode())
    real = backend.client.put_object

    def failing_for_2(key: str, data: bytes, **kw: Any) -> str:
        if key.endswith("d/2"):
            raise StorageError(f"S3 PUT {key}: InternalError (after 6 attempts)")
        return real(key, data, **kw)

    puts = []
    for k in ("d/1", "d/2", "d/3"):
        p = backend.put(k)
        p.write(b"new " + k.encode())
        puts.append(p)
    backend.client.put_object = failing_for_2  # type: ignore[method-assign]
    try:
        with pytest.raises(StorageError, match="d/2: InternalError"):
            backend.commit_all(puts)
    finally:
        backend.client.put_object = real  # type: ignore[method-assign]
    assert [backend.get(k).read() for k in ("d/1", "d/2", "d/3")] == [b"new d/1", b"old d/2", b"new d/3"]
    puts = []
    for k in ("d/1", "d/2"):
        p = backend.put(k)
        p.write(b"newer " + k.encode())
        puts.append(p)
    backend.commit_all(puts)
    assert [backend.get(k).read() for k in ("d/1", "d/2")] == [b"newer d/1", b"newer d/2"]


def test_usage_is_the_stored_size_without_raid_overhead(backend: S3ObjectStore) -> None:
    for n in (0, 4096 - TRAILER.size, 4096 - TRAILER.size + 1, 100_000):
        put(backend, f"u/{n}", b"x" * n)
        assert backend.usage_blocks(f"u/{n}") == -(-(n + TRAILER.size) // 4096) == backend.blocks_for_length(n)


def test_big_object_streams_in_parts_and_reads_by_range(backend: S3ObjectStore) -> None:
    data = os.urandom(3 * SMALL) * 4  # 12 MiB: multipart (5 MiB parts in the test bed)
    put(backend, "big", data[:7_000_000], data[7_000_000:])
    with backend.get("big") as f:
        assert f.seek(0, io.SEEK_END) == len(data)
        f.seek(100)
        assert f.read(50) == data[100:150]
        f.seek(len(data) - 10)
        assert f.read(100) == data[-10:]
        f.seek(0)
        assert f.read() == data
    assert backend.verify("big", repair=True).ok


def test_damage_is_found_by_reads_and_verify(backend: S3ObjectStore) -> None:
    put(backend, "small", b"precious" * 100)
    raw = bytearray(backend.client.get_object("pre/fix/small"))
    raw[3] ^= 1
    backend.client.put_object("pre/fix/small", bytes(raw))
    with pytest.raises(IntegrityError, match="small: SHA-256"):
        backend.get("small")
    v = backend.verify("small", repair=True)
    assert (v.ok, v.readable, v.repaired) == (False, False, False) and "SHA-256" in v.detail
    backend.client.put_object("pre/fix/small", b"no trailer")
    assert not backend.verify("small", repair=False).readable
    assert not backend.verify("gone", repair=False).readable


def damage(backend: S3ObjectStore, key: str, at: int) -> None:
    """Flip byte `at` of a stored object: its standalone object if there is one, else its bytes in its pack."""
    from boxbox.store.s3pack import is_pack_name, parse_index

    s3key = backend.prefix + key
    shard, _, name = s3key.rpartition("/")
    for info in backend.client.list_objects(shard + "/"):
        if info.key == s3key:
            raw = bytearray(backend.client.get_object(s3key))
            raw[at] ^= 0xFF
            backend.client.put_object(s3key, bytes(raw))
            return
    for info in backend.client.list_objects(shard + "/"):
        if is_pack_name(info.key.rpartition("/")[2]):
            raw = bytearray(backend.client.get_object(info.key))
            entry = parse_index(bytes(raw), len(raw), "").get(int(name, 16))
            if entry is not None:
                raw[entry.offset + at] ^= 0xFF
                backend.client.put_object(info.key, bytes(raw))
                return
    raise AssertionError(f"{key} is stored nowhere")


# ---------------------------------------------------------------- config
def server_config(tmp_path: Path, s3_text: str, discset: bool = False) -> Path:
    path = tmp_path / "server.conf"
    path.write_text("[server]\ncertificate = s.crt\nprivate_key = s.key\nca_certificate = ca.crt\n"
                    f"account_database = {tmp_path / 'accounts.db'}\n" + s3_text
                    + (f"\n[discset 0]\ndirectories = {tmp_path}\n" if discset else ""))
    return path


def test_config_section_and_its_errors(tmp_path: Path, seaweed: Any) -> None:
    s3 = seaweed.new_bucket()
    text = s3_section(s3, tmp_path, name="cloud")
    store = Store.from_config(config.load(server_config(tmp_path, text), "server"))  # no disc set needed
    assert sorted(store.backends) == ["cloud"] and store.backends["cloud"].prefix == "store/"  # type: ignore[attr-defined]
    secret = tmp_path / "s3-cloud.secret"
    secret.chmod(0o644)
    with pytest.raises(PermissionDenied, match=r"server.conf:s3 cloud.secret_key_file: .* readable by others"):
        Store.from_config(config.load(server_config(tmp_path, text), "server"))
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match=r"s3 cloud.endpoint: http://.* is plain http"):
        Store.from_config(config.load(server_config(tmp_path, text.replace("allow_http = yes", "")), "server"))
    with pytest.raises(ConfigError, match=r"s3 cloud.clock_skew: 4 s must be above 0 and under half of lease_time"):
        Store.from_config(config.load(server_config(tmp_path, text.replace("clock_skew = 1s", "clock_skew = 4s")),
                                      "server"))
    with pytest.raises(ConfigError, match=r"s3 cloud.secret_key_file: required key is missing"):
        config.load(server_config(tmp_path, "\n".join(ln for ln in text.splitlines()
                                                      if not ln.startswith("secret_key_file"))), "server")
    with pytest.raises(ConfigError, match=r"required section \[discset NAME\] is missing"):
        config.load(server_config(tmp_path, ""), "server")
    clash = s3_section(s3, tmp_path, name="0")
    with pytest.raises(ConfigError, match=r"\[s3 0\] has the name of a \[discset 0\]"):
        Store.from_config(config.load(server_config(tmp_path, clash, discset=True), "server"))


# ---------------------------------------------------------------- two stores, one bucket
def test_account_list_is_shared_and_edits_are_never_lost(tmp_path: Path, seaweed: Any) -> None:
    s3 = seaweed.new_bucket()
    one = make_store(tmp_path / "one", s3=s3)
    two = make_store(tmp_path / "two", s3=s3)
    one.create_account(A, 1000, 2000, "0")
    two.database.refresh()
    assert A in two.database and two.read_info(A).hard_limit == 2000
    with pytest.raises(UsageError, match="already exists"):
        two.create_account(A, 1, 2, "0")
    # many creations at once through both stores: each lands once, none is lost
    errors: list[Exception] = []

    def create(store: Store, account: int) -> None:
        try:
            store.create_account(account, 10, 20, "0")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=create, args=(s, 0x100 + i)) for i, s in enumerate([one, two] * 4)]
    threads += [threading.Thread(target=create, args=(two, 0x100))]  # a duplicate racing the first
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], UsageError), errors
    one.database.refresh()
    assert sorted(one.database.accounts()) == [A, *range(0x100, 0x108)]
    assert two.delete_account(0x101) > 0
    one.database.refresh()
    assert 0x101 not in one.database


def test_a_writer_whose_lease_lapses_stops_writing(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    acct = store.open(A, write=True)
    acct.put_object(acct.allocate_id(), b"fine", check_limit=False)
    acct._lock._lost = True  # type: ignore[union-attr]  # as a renewal that found another server's lease
    with pytest.raises(StorageError, match="the session stops writing"):
        acct.put_object(acct.allocate_id(), b"refused", check_limit=False)
    with pytest.raises(StorageError):
        acct.close()  # its info write is refused too; the lease is left to expire
    time.sleep(6 + 1 + 0.5)  # TEST_LEASE: duration + skew
    store.open(A, write=True).close()  # the next writer gets in, settles the unfinished session


def test_check_finds_and_removes_a_damaged_object(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    client, thread = session_client(store, A)
    client.login(read_only=False)
    ids = [upload(client, KEYS, 1, f"f{i}".encode(), os.urandom(5000)) for i in range(5)]
    client.close()
    thread.join(10)
    report = check_account(store, A)
    assert report.errors == 0 and report.objects == 6, [str(p) for p in report.problems]
    damage(store.backends["0"], object_key(A, ids[2]), 100)  # type: ignore[arg-type]
    report = check_account(store, A)
    assert report.errors >= 1 and any(p.object_id == ids[2] for p in report.problems)
    fixed = check_account(store, A, fix=True)
    assert fixed.errors >= 1
    after = check_account(store, A)
    assert after.errors == 0 and after.files == 4, [str(p) for p in after.problems]
    assert check_account(store, A, scrub=True).errors == 0


def test_session_commits_and_admin_edits_never_lose_each_other(tmp_path: Path, seaweed: Any) -> None:
    s3 = seaweed.new_bucket()
    server = make_store(tmp_path / "one", (A, 10_000, 20_000), s3=s3)
    admin = make_store(tmp_path / "two", s3=s3)  # another server, or `boxbox accounts` elsewhere
    acct = server.open(A, write=True)
    new_id = acct.allocate_id()
    acct.put_object(new_id, b"x" * 10, check_limit=False)
    admin.update_info(A, hard_limit=30_000, name="edited meanwhile")
    acct.commit()  # its If-Match fails once: re-read, keep the admin's edit, write
    acct.change(client_store_marker=7)
    admin.update_info(A, soft_limit=15_000)  # conditional too: the session's write is not lost either
    acct.close()
    info = admin.read_info(A)
    assert (info.hard_limit, info.soft_limit, info.name) == (30_000, 15_000, "edited meanwhile")
    assert (info.last_object_id, info.client_store_marker, info.writer_open) == (new_id, 7, False)


def test_uploads_cost_at_most_three_requests_a_file(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 100_000, 200_000), s3=seaweed.new_bucket())
    client, thread = session_client(store, A)
    client.login(read_only=False)
    requests = store.backend(A).client  # type: ignore[attr-defined]
    before = requests.requests
    for i in range(30):  # one at a time, each synced on its own: the worst case (a client pipelines)
        upload(client, KEYS, 1, f"f{i}".encode(), os.urandom(3000))
    used = requests.requests - before  # per file: the object (in a pack), the directory rewritten, the info
    client.close()
    thread.join(10)
    assert used <= 3 * 30 + 2, used  # + reading the directory once, + listing the shard directory once


def test_read_ahead_is_taken_once_and_never_stale(backend: S3ObjectStore) -> None:
    for i in range(3):
        put(backend, f"r/{i}", f"version one of {i}".encode())
    backend.prefetch(["r/0", "r/1", "r/2", "r/missing"])
    time.sleep(0.5)
    before = backend.client.requests
    assert backend.get("r/0").read() == b"version one of 0"
    assert backend.client.requests == before  # fetched ahead: no request now
    put(backend, "r/1", b"rewritten after the read-ahead")
    backend.delete("r/2")
    before = backend.client.requests
    assert backend.get("r/1").read() == b"rewritten after the read-ahead"
    with pytest.raises(NotFound):
        backend.get("r/2")
    with pytest.raises(NotFound):
        backend.get("r/missing")
    assert backend.client.requests - before == 2  # r/1 and r/2 read again; r/missing's 404 was fetched ahead


def test_whoever_holds_the_write_lease_is_guarded(tmp_path: Path, seaweed: Any) -> None:
    """Housekeeping and check take the write lease themselves: their writes are refused once it lapses too."""
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    store.backend(A).put(object_key(A, 99)).abort()  # no lease held: plain
    lease = store.write_lock(A).acquire()
    try:
        lease._lost = True  # type: ignore[attr-defined]
        with pytest.raises(StorageError, match="stops writing"):
            store.backend(A).put(object_key(A, 99))
        with pytest.raises(StorageError, match="stops writing"):
            store.write_info(store.read_info(A))
    finally:
        lease.release()
    store.write_info(store.read_info(A))


def test_the_barrier_packs_small_objects_and_waits_for_objects_sent_behind(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    acct = store.open(A, write=True)
    backend = store.backends["0"]
    sent = []
    real = backend.client.put_object  # type: ignore[attr-defined]

    def slow_put(key: str, data: bytes, **kw: Any) -> str:
        time.sleep(0.3)
        sent.append(key)
        return real(key, data, **kw)

    backend.client.put_object = slow_put  # type: ignore[attr-defined]
    try:
        ids = [acct.allocate_id() for _ in range(6)]
        for i in ids[:2]:  # too big for a pack: sent in the background ...
            acct.put_object(i, os.urandom(PACK_MEMBER), check_limit=False, durable=False)
        for i in ids[2:]:  # small: held for the barrier
            acct.put_object(i, b"batch", check_limit=False, durable=False)
        assert len(sent) < 2 and all(acct.read_object(i) == b"batch" for i in ids[2:])  # (readable while held)
        acct.sync_objects()
        assert len(sent) == 3  # ... and landed when the barrier returns, which sent the four small ones in a pack
        assert all(backend.client.head_object(backend.prefix + object_key(A, i)).size for i in ids[:2])  # type: ignore[attr-defined]
        assert sorted("/pack~" in k for k in sent) == [False, False, True]  # (the three PUTs end in any order)
        fresh = S3ObjectStore(backend.client, backend.prefix, "t")  # type: ignore[attr-defined]
        assert all(fresh.get(object_key(A, i)).read() == b"batch" for i in ids[2:])
    finally:
        backend.client.put_object = real  # type: ignore[attr-defined]
        acct.close()


@contextlib.contextmanager
def _puts_failing(backend: Any) -> Iterator[None]:
    """Every S3 PUT of `backend` fails as one would after its retries, inside the block."""
    real = backend.client.put_object

    def failing(key: str, data: bytes, **kw: Any) -> str:
        raise StorageError(f"S3 PUT {key}: InternalError (after 6 attempts)")

    backend.client.put_object = failing
    try:
        yield
    finally:
        backend.client.put_object = real


def test_a_put_sent_behind_that_fails_fails_the_barrier(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    acct = store.open(A, write=True)
    backend = store.backends["0"]
    lost = acct.allocate_id()
    with _puts_failing(backend):
        acct.put_object(lost, b"lost", check_limit=False, durable=False)
        with pytest.raises(StorageError, match="InternalError"):
            acct.sync_objects()
    with pytest.raises(StorageError, match="InternalError"):
        acct.sync_objects()  # nothing may list it in this session, even once S3 is back
    acct.close()  # settles the failed barrier before letting go of the account (S3 is back)
    assert not store.read_info(A).writer_open
    assert not backend.exists(object_key(A, lost))


def test_a_big_object_sent_behind_lands_by_the_barrier_or_fails_it(tmp_path: Path, seaweed: Any) -> None:
    """Over the part size: its last part and completion go out behind too; the barrier waits for them."""
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    acct = store.open(A, write=True)
    backend = store.backends["0"]
    client = backend.client  # type: ignore[attr-defined]
    data = os.urandom(client.settings.part_size + 1000)
    big = acct.allocate_id()
    with acct.new_object(big, check_limit=False, durable=False) as w:
        w.write(data)
    acct.sync_objects()
    assert acct.read_object(big) == data
    real = client.complete_upload

    def failing(key: str, *args: Any, **kw: Any) -> str:
        raise StorageError(f"S3 POST {key}: InternalError (after 6 attempts)")

    client.complete_upload = failing
    lost = acct.allocate_id()
    try:
        with acct.new_object(lost, check_limit=False, durable=False) as w:
            w.write(data)
        with pytest.raises(StorageError, match="InternalError"):
            acct.sync_objects()
    finally:
        client.complete_upload = real
    assert client.abort_incomplete_uploads("") == 0  # the failed upload was aborted, no parts left
    assert not backend.exists(object_key(A, lost))
    acct.close()


def test_a_put_failing_while_later_uploads_are_staged_stores_none_of_them(tmp_path: Path, seaweed: Any) -> None:
    """Six pipelined uploads in one batch; their pack's PUT fails at the barrier, once the sixth is staged:
    every reply fails, none of the six stays in the bucket, the usage is what it was, check finds nothing."""
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    a, b = socket.socketpair()

    def serve() -> None:  # as the server does: the session closes (failing), then the connection
        session = Session(store, A)
        try:
            Dispatcher(Connection(b, idle_timeout=20, read_timeout=20), session).run()
        except BoxboxError:
            pass
        finally:
            with contextlib.suppress(BoxboxError):
                session.close()
            b.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = Client(Connection(a, idle_timeout=20, read_timeout=20))
    client.hello()
    client.login(read_only=False)
    kept = upload(client, KEYS, 1, b"kept", b"stored before")
    before = store.read_info(A)
    backend = store.backends["0"]
    real = backend.client.put_object  # type: ignore[attr-defined]
    last_sent = threading.Event()

    def put_object(key: str, data: bytes, **kw: Any) -> str:
        if "/pack~" in key:  # the six went to the barrier in one pack
            last_sent.set()
            raise StorageError(f"S3 PUT {key}: InternalError (after 6 attempts)")
        return real(key, data, **kw)

    backend.client.put_object = put_object  # type: ignore[attr-defined]
    try:
        pending = []
        for i in range(6):
            kwargs, obj = file_object(KEYS, 1, f"p{i}".encode(), os.urandom(3000 + i))
            request = m.StoreFile(1, kwargs["mtime"], kwargs["attributes_hash"], 0, kwargs["name"], kwargs["attributes"])
            pending.append(client.submit(request, upload=io.BytesIO(obj)))
        for p in pending:
            with pytest.raises(BoxboxError):
                p.result()
        thread.join(20)
    finally:
        backend.client.put_object = real  # type: ignore[attr-defined]
    assert last_sent.is_set()  # the failure came after the later uploads were staged and sent
    after = store.read_info(A)
    assert (after.blocks_used, after.count_current) == (before.blocks_used, before.count_current)
    assert not after.writer_open
    assert not any(backend.exists(object_key(A, kept + i)) for i in range(1, 7))
    report = check_account(store, A)
    assert report.errors == 0 and report.objects == 2, [str(p) for p in report.problems]


def test_a_failed_barrier_that_cannot_be_settled_leaves_the_writer_flag(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    acct = store.open(A, write=True)
    with _puts_failing(store.backends["0"]):
        acct.put_object(acct.allocate_id(), b"lost", check_limit=False, durable=False)
        with pytest.raises(StorageError, match="InternalError"):
            acct.sync_objects()
        acct.close()  # S3 still failing: the clean-up fails too
    assert store.read_info(A).writer_open  # left set: the next writer's recovery removes what may be half there


def test_leftover_data_in_the_bucket_is_never_written_over(tmp_path: Path, seaweed: Any) -> None:
    s3 = seaweed.new_bucket()
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=s3)
    store.s3["0"].accounts.update(lambda accounts: accounts.pop(A) and None)  # listed no more, data still there
    put(store.backends["0"], object_key(A, 1), b"the old root, with entries")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=f"account {A:08x} has leftover data on S3 store '0'"):
        store.create_account(A, 1, 2, "0")
    assert store.backends["0"].get(object_key(A, 1)).read() == b"the old root, with entries"


class _FakeObjects:
    """Stands in for S3Client.get_object and fetch_ahead (FETCH_CONNECTIONS at once): sealed objects in memory,
    fetches held until released, a log of the keys fetched, and keys that fail."""

    def __init__(self, objects: dict[str, bytes], failing: dict[str, Exception]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from boxbox.s3.client import FETCH_CONNECTIONS

        self._fetcher = ThreadPoolExecutor(FETCH_CONNECTIONS)
        self.objects = objects
        self.failing = failing
        self.fetched: list[str] = []
        self.running = 0
        self.most_running = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def get_object(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        with self._lock:
            self.fetched.append(key)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self.release.wait(10)
            if key in self.failing:
                raise self.failing[key]
            if key not in self.objects:
                raise NotFound(key)
            return self.objects[key][start:end]
        finally:
            with self._lock:
                self.running -= 1

    def fetch_ahead(self, key: str, start: int, end: int) -> Any:
        return self._fetcher.submit(self.get_object, key, start, end)


def test_read_ahead_is_bounded_in_bytes_and_serves_what_is_then_read() -> None:
    from boxbox.s3.client import FETCH_CONNECTIONS
    from boxbox.store.s3ahead import READ_AHEAD_BYTES
    from boxbox.store.s3backend import seal

    big = seal(b"x" * (SMALL - TRAILER.size))  # each fetch holds SMALL bytes: the window decides how many run
    fake = _FakeObjects({f"w/{i}": big for i in range(24)}, {})
    store = S3ObjectStore(fake, "", "t")  # type: ignore[arg-type]
    store.prefetch([f"w/{i}" for i in range(24)])
    assert len(fake.fetched) == min(READ_AHEAD_BYTES // SMALL, FETCH_CONNECTIONS, 24)
    assert len(store.ahead.started) == READ_AHEAD_BYTES // SMALL  # started (some may queue for a thread)
    fake.release.set()
    for i in range(24):  # read in order: every one was fetched ahead, once, and the window moved along
        f = store.get(f"w/{i}")
        assert f.read(5) == b"xxxxx"
        assert store.ahead.held_bytes() <= READ_AHEAD_BYTES
    assert fake.fetched == [f"w/{i}" for i in range(24)]
    assert fake.most_running <= FETCH_CONNECTIONS
    assert not store.ahead.started and not store.ahead._wanted


def test_a_failed_read_ahead_surfaces_as_the_same_error_on_read() -> None:
    from boxbox.store.s3backend import seal

    broken = StorageError("S3 GET s3://b/f/1: SlowDown (gave up after 6 attempts)")
    fake = _FakeObjects({"f/0": seal(b"zero")}, {"f/1": broken})
    fake.release.set()
    store = S3ObjectStore(fake, "", "t")  # type: ignore[arg-type]
    store.prefetch(["f/0", "f/1", "f/2"])
    assert store.get("f/0").read() == b"zero"
    with pytest.raises(StorageError) as failed:  # fetched ahead and failed: read once more, same error
        store.get("f/1")
    assert failed.value is broken
    with pytest.raises(NotFound, match="s3 store t: f/2"):  # a 404 fetched ahead is the read's NotFound
        store.get("f/2")
    assert fake.fetched.count("f/1") == 2 and fake.fetched.count("f/2") == 1


def test_a_waiting_pack_let_go_forgets_its_members() -> None:
    """Reading passed over a pack still waiting for room: it is let go with its members, which a later
    prefetch may then ask for again (before, they stayed listed as read ahead from a pack no longer there)."""
    from concurrent.futures import Future

    from boxbox.store.s3ahead import READ_AHEAD_BYTES, ReadAhead
    from boxbox.store.s3pack import Entry, Location

    class Lands:
        def fetch_ahead(self, key: str, start: int, end: int) -> Future[bytes]:
            f: Future[bytes] = Future()
            f.set_result(bytes(end - start))
            return f

    ahead = ReadAhead(Lands(), "p/", SMALL)  # type: ignore[arg-type]
    shard = "p/00000001/backup/00"
    big, waiting = "pack~" + "a" * 16, "pack~" + "b" * 16
    two = f"{shard}/{2:016x}"
    ahead.want([(f"{shard}/{4:016x}", Location(big, READ_AHEAD_BYTES, Entry(0, 10))),
                (two, Location(waiting, 100, Entry(0, 10)))])
    assert f"{shard}/{waiting}" in ahead._wanted  # no room while the big pack is held
    assert ahead.take_member(f"{shard}/{4:016x}", Entry(0, 10)) == bytes(10)  # reading is past id 2's pack
    assert not ahead.started and not ahead._wanted and two not in ahead._via
    ahead.want([(two, Location(waiting, 100, Entry(0, 10)))])
    assert f"{shard}/{waiting}" in ahead.started
