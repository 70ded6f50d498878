"""Packs on SeaweedFS: a sync's small new objects stored as one S3 object per shard directory.

Members are readable before and after the sync, from this store and from a fresh one; a
standalone object shadows a member; deleting a member never brings an old version back, even
when it is cut short between any two of its steps; check --fix; a lease changing hands drops
the views; usage is each member's as if it were standalone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from boxbox.errors import NotFound, StorageError
from boxbox.s3.client import S3Client
from boxbox.store.account import object_key
from boxbox.store.check import check_account
from boxbox.store.s3backend import PACK_MEMBER, S3ObjectStore
from boxbox.store.s3pack import is_pack_name

from tests.packutil import batch, commit_new
from tests.serverutil import download, make_store, upload
from tests.test_store_support import make_keys, session_client

A = 0x52
KEYS = make_keys()
SHARD = "0000002a/o/0/01"


def key(i: int) -> str:
    return f"{SHARD}/{0x100 + i:016x}"


@pytest.fixture()
def backend(seaweed: Any) -> S3ObjectStore:
    return S3ObjectStore(S3Client(seaweed.new_bucket()), "pre", "t")


def fresh(backend: S3ObjectStore) -> S3ObjectStore:
    """Another server's view of the same bucket: nothing remembered."""
    return S3ObjectStore(backend.client, backend.prefix, "t")


def stored(backend: S3ObjectStore) -> tuple[list[str], list[str]]:
    """(pack names, standalone names) in the shard, as the bucket holds them."""
    names = [i.key.rpartition("/")[2] for i in backend.client.list_objects(f"pre/{SHARD}/")]
    return [n for n in names if is_pack_name(n)], [n for n in names if not is_pack_name(n)]


def contents(backend: S3ObjectStore, n: int) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for i in range(n):
        try:
            out[key(i)] = backend.get(key(i)).read()
        except NotFound:
            out[key(i)] = None
    return out


def test_members_are_readable_before_and_after_the_sync(backend: S3ObjectStore) -> None:
    data = {key(i): os.urandom(100 + 1000 * i) for i in range(8)}
    puts = commit_new(backend, data)
    assert backend.client.requests == 0  # held for the barrier
    assert backend.get(key(3)).read() == data[key(3)] and backend.exists(key(3))
    backend.sync(puts)
    assert backend.client.requests == 2  # the shard listed once (nothing there may be overwritten), one PUT
    packs, plain = stored(backend)
    assert len(packs) == 1 and plain == []
    for store in (backend, fresh(backend)):
        assert all(store.get(k).read() == d for k, d in data.items())
        assert sorted(store.list("0000002a")) == sorted(data)  # members, never the pack's name
        assert all(store.exists(k) for k in data) and not store.exists(key(9))
        assert all(store.usage_blocks(k) == store.blocks_for_length(len(d)) for k, d in data.items())
        v = store.verify(key(5), repair=False)
        assert v.ok and packs[0] in v.detail
    reader = fresh(backend)
    before = reader.client.requests
    reader.prefetch(list(data))
    assert [reader.get(k).read() for k in data] == list(data.values())
    assert reader.client.requests - before == 3  # a LIST, the pack's index, the pack: not a GET per member


def test_a_new_object_never_replaces_a_member(backend: S3ObjectStore) -> None:
    batch(backend, {key(0): b"first"})
    with pytest.raises(StorageError, match="already exists"):  # this store knows the shard: at once
        batch(backend, {key(0): b"second"})
    other = fresh(backend)  # knows nothing yet: found when its barrier lists the shard
    with pytest.raises(StorageError, match="already exists"):
        batch(other, {key(0): b"third", key(1): b"other"})
    with pytest.raises(StorageError, match="already exists"):  # nor standalone, once the shard is known
        p = other.put(key(0), exclusive=True)
        p.write(b"fourth")
        p.commit()
    for store in (backend, other, fresh(backend)):
        assert store.get(key(0)).read() == b"first" and store.get(key(1)).read() == b"other"


def test_a_standalone_object_shadows_a_member(backend: S3ObjectStore) -> None:
    batch(backend, {key(i): b"packed %d" % i for i in range(3)})
    p = backend.put(key(1))  # a rewrite (a directory, a reverse patch): a plain PUT
    p.write(b"rewritten, and longer than before" * 200)
    p.commit()
    for store in (backend, fresh(backend)):
        assert store.get(key(1)).read() == b"rewritten, and longer than before" * 200
        assert store.usage_blocks(key(1)) == store.blocks_for_length(33 * 200)
        assert sorted(store.list("0000002a")) == [key(0), key(1), key(2)]
        assert store.get(key(0)).read() == b"packed 0"


def test_deleting_members_never_brings_an_old_version_back(backend: S3ObjectStore) -> None:
    batch(backend, {key(i): b"packed %d" % i for i in range(4)})
    p = backend.put(key(1))
    p.write(b"rewritten 1")
    p.commit()
    backend.delete(key(1))  # shadowed: its pack goes too (the others standalone first), so it cannot come back
    packs, plain = stored(backend)
    assert packs == [] and sorted(plain) == [key(i).rpartition("/")[2] for i in (0, 2, 3)]
    backend.delete(key(2))
    expected = {key(0): b"packed 0", key(1): None, key(2): None, key(3): b"packed 3"}
    for store in (backend, fresh(backend)):
        assert contents(store, 4) == expected
        assert sorted(store.list("0000002a")) == [key(0), key(3)]


def _fail_nth(backend: S3ObjectStore, method: str, match: Callable[[str], bool], n: int) -> Callable[[], None]:
    """Make the client's `method` fail on its n-th call whose key matches; returns the undo."""
    real = getattr(backend.client, method)
    seen = [0]

    def failing(s3key: str, *args: Any, **kw: Any) -> Any:
        if match(s3key):
            seen[0] += 1
            if seen[0] == n:
                raise StorageError(f"S3 {method} {s3key}: InternalError (after 6 attempts)")
        return real(s3key, *args, **kw)

    setattr(backend.client, method, failing)
    return lambda: setattr(backend.client, method, real)


STEPS = {
    "writing the second other member standalone": ("put_object", lambda k: "pack~" not in k, 2),
    "deleting the pack": ("delete_object", lambda k: "pack~" in k, 1),
    "deleting the key's standalone object": ("delete_object", lambda k: "pack~" not in k, 1),
}


@pytest.mark.parametrize("shadowed", [False, True], ids=["packed", "shadowed"])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_delete_cut_short_between_its_steps_leaves_a_valid_state(backend: S3ObjectStore, step: str,
                                                                     shadowed: bool) -> None:
    batch(backend, {key(i): b"packed %d" % i for i in range(4)})
    victim = b"packed 1"
    if shadowed:
        p = backend.put(key(1))
        p.write(b"rewritten 1")
        p.commit()
        victim = b"rewritten 1"
    undo = _fail_nth(backend, *STEPS[step])
    try:
        with pytest.raises(StorageError, match="InternalError"):
            backend.delete(key(1))
    finally:
        undo()
    others = {key(i): b"packed %d" % i for i in (0, 2, 3)}
    for store in (backend, fresh(backend)):  # whatever the step: the others intact, the key old or gone
        now = contents(store, 4)
        assert {k: now[k] for k in others} == others
        assert now[key(1)] in (victim, None)
        if now[key(1)] is None:
            assert victim == b"packed 1" or step != "deleting the key's standalone object"
    backend.delete(key(1))  # done again, to the end
    for store in (backend, fresh(backend)):
        assert contents(store, 4) == {**others, key(1): None}
        assert sorted(store.list("0000002a")) == sorted(others)
    assert stored(backend)[0] == []


def test_check_fix_deletes_a_stray_member_and_leaves_the_account_clean(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    client, thread = session_client(store, A)
    client.login(read_only=False)
    files = {upload(client, KEYS, 1, f"f{i}".encode(), os.urandom(3000 + i)): i for i in range(5)}
    client.close()
    thread.join(10)
    backend = store.backends["0"]
    names = [i.key.rpartition("/")[2] for i in backend.client.list_objects("")]  # type: ignore[attr-defined]
    assert any(is_pack_name(n) for n in names)
    report = check_account(store, A)
    assert report.errors == 0 and report.objects == 6, [str(p) for p in report.problems]
    stray = max(files) + 1  # an object beyond the last id, in a pack with nothing referring to it
    batch(backend, {object_key(A, stray): b"stray"})  # type: ignore[arg-type]
    report = check_account(store, A)
    assert report.errors >= 1
    check_account(store, A, fix=True)
    after = check_account(store, A)
    assert after.errors == 0 and after.files == 5, [str(p) for p in after.problems]
    assert not fresh(backend).exists(object_key(A, stray))  # type: ignore[arg-type]
    client, thread = session_client(store, A)
    client.login(read_only=True)
    assert all(len(download(client, KEYS, 1, i)) == 3000 + n for i, n in files.items())
    client.close()
    thread.join(10)


def test_usage_of_members_is_as_if_standalone(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    acct = store.open(A, write=True)
    sizes = {acct.allocate_id(): n for n in (0, 4096 - 48, 4096 - 47, 100_000, PACK_MEMBER + 1)}
    blocks = {i: acct.put_object(i, os.urandom(n), check_limit=False, durable=False) for i, n in sizes.items()}
    acct.sync_objects()
    for i, n in sizes.items():
        assert blocks[i] == acct.usage_of(i) == -(-(n + 48) // 4096)
    first = min(sizes)
    assert acct.delete_object(first) == blocks[first]  # freed what it counted, though its pack is rewritten
    assert all(acct.usage_of(i) == blocks[i] for i in sizes if i != first)
    acct.close()


def test_a_lease_changing_hands_drops_the_views(tmp_path: Path, seaweed: Any) -> None:
    s3 = seaweed.new_bucket()
    one = make_store(tmp_path / "one", (A, 10_000, 20_000), s3=s3)
    two = make_store(tmp_path / "two", s3=s3)  # another server on the same bucket
    acct = one.open(A, write=True)
    ids = [acct.allocate_id() for _ in range(3)]
    for i in ids:
        acct.put_object(i, b"object %d" % i, check_limit=False, durable=False)
    acct.sync_objects()
    acct.close()
    b2 = two.backends["0"]
    shard = b2.prefix + object_key(A, ids[0]).rpartition("/")[0]  # type: ignore[attr-defined]
    assert b2.exists(object_key(A, ids[0])) and shard in b2._views  # type: ignore[attr-defined]
    acct = one.open(A, write=True)  # server one changes the shard: a member deleted, one rewritten
    acct.delete_object(ids[0])
    acct.replace_object(ids[1], b"rewritten")
    acct.close()
    two.open(A, write=True).close()  # server two takes the lease: what it kept of the account goes
    assert shard not in b2._views  # type: ignore[attr-defined]
    assert not b2.exists(object_key(A, ids[0]))
    assert b2.get(object_key(A, ids[1])).read() == b"rewritten"
    acct = one.open(A, write=True)
    acct.replace_object(ids[2], b"rewritten too")
    acct.close()
    reader = two.open(A, write=False)  # a read-only session starts from the account's info: views dropped too
    assert reader.read_object(ids[2]) == b"rewritten too"
    reader.close()


def test_pack_names_are_the_stores_own(backend: S3ObjectStore) -> None:
    from boxbox.errors import ProgrammingError

    with pytest.raises(ProgrammingError, match="store's own"):
        backend.put(f"{SHARD}/pack~0123456789abcdef")


def test_the_read_ahead_fetches_each_pack_once_and_lets_passed_over_packs_go(backend: S3ObjectStore) -> None:
    for b in range(3):  # three barriers: three packs in the shard
        batch(backend, {key(4 * b + i): b"object %d" % (4 * b + i) for i in range(4)})
    reader = fresh(backend)
    before = reader.client.requests
    reader.prefetch([key(i) for i in range(12)])
    assert reader.get(key(0)).read() == b"object 0"
    packs = [p for p in reader.ahead.started if "pack~" in p]
    assert len(packs) == 3
    assert reader.get(key(5)).read() == b"object 5"  # 1-3 skipped (old versions a restore does not read)
    assert packs[0] not in reader.ahead.started and packs[1] in reader.ahead.started  # the first pack was let go
    assert [reader.get(key(i)).read() for i in range(6, 12)] == [b"object %d" % i for i in range(6, 12)]
    assert not reader.ahead.started and not reader.ahead._via and reader.ahead.held_bytes() == 0
    assert reader.client.requests - before == 7  # a LIST, three indexes, three packs
    assert reader.get(key(2)).read() == b"object 2"  # (one ranged GET)


def test_a_writer_whose_lease_lapsed_sends_no_pack(tmp_path: Path, seaweed: Any) -> None:
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=seaweed.new_bucket())
    acct = store.open(A, write=True)
    new = acct.allocate_id()
    acct.put_object(new, b"held", check_limit=False, durable=False)
    acct._lock._lost = True  # type: ignore[union-attr]  # as a renewal that found another server's lease
    with pytest.raises(StorageError, match="stops writing"):
        acct.sync_objects()
    acct.close()  # (its clean-up is refused too, and left to the next writer)
    backend = store.backends["0"]
    names = [i.key for i in backend.client.list_objects(backend.prefix + object_key(A, new).rpartition("/")[0])]  # type: ignore[attr-defined]
    assert not any("pack~" in n for n in names)


def test_a_pack_with_a_damaged_index_is_reported_and_removed_by_check_fix(tmp_path: Path, seaweed: Any) -> None:
    s3 = seaweed.new_bucket()
    store = make_store(tmp_path, (A, 10_000, 20_000), s3=s3)
    client, thread = session_client(store, A)
    client.login(read_only=False)
    for i in range(3):
        upload(client, KEYS, 1, f"f{i}".encode(), os.urandom(2000))
    client.close()
    thread.join(10)
    backend = store.backends["0"]
    packs = [i.key for i in backend.client.list_objects("") if is_pack_name(i.key.rpartition("/")[2])]  # type: ignore[attr-defined]
    raw = bytearray(backend.client.get_object(packs[-1]))  # type: ignore[attr-defined]
    raw[-1] ^= 1  # the index's SHA-256
    backend.client.put_object(packs[-1], bytes(raw))  # type: ignore[attr-defined]
    store = make_store(tmp_path / "two", s3=s3)  # a server that has not read that index yet
    report = check_account(store, A)
    assert any("is not an object" in str(p) and "pack~" in str(p) for p in report.problems), report.problems
    check_account(store, A, fix=True)
    after = check_account(store, A)
    assert after.errors == 0, [str(p) for p in after.problems]
    assert packs[-1] not in [i.key for i in backend.client.list_objects("")]  # type: ignore[attr-defined]
