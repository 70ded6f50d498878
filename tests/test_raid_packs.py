"""Packs on a RAID disc set: a sync's small new objects stored as one RAID file per shard directory.

Members are visible before the sync (held) and after it, from this store and from a fresh one;
a standalone file always wins over a member; deleting a member repacks the others and never
brings an old version back, even when cut short between any two of its steps; a damaged stripe
is survived and repaired; a torn pack is reported and dropped; a stale view of another process
reloads; and a whole backup through the store layers checks clean before and after housekeeping.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from boxbox.errors import NotFound
from boxbox.raidfile import DiscSet
from boxbox.raidfile.layout import STRIPE1
from boxbox.store import raidstore
from boxbox.store.account import Store, object_key
from boxbox.store.backend import ROOT
from boxbox.store.check import check_account
from boxbox.store.housekeep import housekeep
from boxbox.store.raidstore import SMALL, RaidObjectStore
from boxbox.store.s3pack import is_pack_name

from tests.packutil import batch, commit_new
from tests.serverutil import download, make_store, upload
from tests.test_store_support import make_keys, session_client

SHARD = "0000002a/o/0/01"
SHARD2 = "0000002a/o/0/02"
A = 0x2A
KEYS = make_keys()


def key(i: int, shard: str = SHARD) -> str:
    return f"{shard}/{0x100 + i:016x}"


@pytest.fixture()
def dirs(tmp_path: Path) -> list[Path]:
    out = [tmp_path / f"d{i}" for i in range(3)]
    for d in out:
        d.mkdir()
    return out


@pytest.fixture()
def store(dirs: list[Path]) -> RaidObjectStore:
    return fresh(dirs)


def fresh(dirs: list[Path]) -> RaidObjectStore:
    """Another process's store on the same directories: no view, index or body remembered (cold)."""
    return RaidObjectStore(DiscSet("0", dirs, 4096))


def rewrite(store: RaidObjectStore, k: str, data: bytes) -> None:
    """A rewrite (a directory, a reverse patch): a plain put committed durably, standalone."""
    p = store.put(k)
    p.write(data)
    p.commit()


def files(dirs: list[Path], shard: str = SHARD) -> list[list[str]]:
    """The committed stripe files (`*.rf`) in `shard`, per disc, sorted."""
    out = []
    for d in dirs:
        here = d / ROOT / shard
        out.append(sorted(f for f in os.listdir(here) if f.endswith(".rf")) if here.is_dir() else [])
    return out


def packs(dirs: list[Path], shard: str = SHARD) -> list[str]:
    """The pack names in `shard` (the same on every disc: asserted)."""
    per_disc = [[f[:-3] for f in names if is_pack_name(f[:-3])] for names in files(dirs, shard)]
    assert per_disc[0] == per_disc[1] == per_disc[2], per_disc
    return per_disc[0]


def standalone(dirs: list[Path], shard: str = SHARD) -> list[str]:
    per_disc = [[f[:-3] for f in names if not is_pack_name(f[:-3])] for names in files(dirs, shard)]
    assert per_disc[0] == per_disc[1] == per_disc[2], per_disc
    return per_disc[0]


def contents(store: RaidObjectStore, keys: list[str]) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for k in keys:
        try:
            out[k] = store.get(k).read()
        except NotFound:
            out[k] = None
    return out


def stripes(dirs: list[Path], shard: str, name: str) -> list[Path]:
    return [d / ROOT / shard / f"{name}.rf" for d in dirs]


# ------------------------------------------------------------------ holding and packing

def test_held_objects_are_visible_before_the_sync_and_one_pack_per_shard_after(dirs: list[Path],
                                                                                 store: RaidObjectStore) -> None:
    """Callers see one object per key whether it is held, packed, or read by a cold store."""
    data = {key(i): os.urandom(100 + 700 * i) for i in range(6)}
    data |= {key(i, SHARD2): os.urandom(50 + i) for i in range(3)}
    data[key(6)] = b""  # an empty object is a member too
    puts = commit_new(store, data)
    assert files(dirs) == [[], [], []] and files(dirs, SHARD2) == [[], [], []]  # held: nothing on disc yet
    assert all(store.get(k).read() == d for k, d in data.items())
    assert all(store.exists(k) for k in data) and not store.exists(key(9))
    assert sorted(store.list(SHARD)) == sorted(k for k in data if k.startswith(SHARD + "/"))
    assert store.names(SHARD) == {k.rpartition("/")[2] for k in data if k.startswith(SHARD + "/")}
    assert all(store.usage_blocks(k) == store.blocks_for_length(len(d)) for k, d in data.items())
    store.sync(puts)
    for shard in (SHARD, SHARD2):
        for d, names in zip(dirs, files(dirs, shard)):  # one pack per shard directory on every disc, nothing else
            assert len(names) == 1 and is_pack_name(names[0][:-3]), names
            assert os.listdir(d / ROOT / shard) == names  # (no temp left either)
    for s in (store, fresh(dirs)):
        assert {k: s.get(k).read() for k in data} == data
        assert sorted(s.list("0000002a")) == sorted(data)  # members, never the pack's own name
        assert all(s.exists(k) for k in data) and not s.exists(key(9))
        assert all(s.usage_blocks(k) == s.blocks_for_length(len(d)) for k, d in data.items())
        assert s.names(SHARD2) == {key(i, SHARD2).rpartition("/")[2] for i in range(3)}
        v = s.verify(key(3), repair=False)
        assert v.ok and packs(dirs)[0] in v.detail


def test_held_objects_in_a_directory_already_on_disc_are_listed(dirs: list[Path], store: RaidObjectStore) -> None:
    """`list` walks the disc's directories and adds the held keys of each directory it meets."""
    rewrite(store, key(0), b"standalone")
    commit_new(store, {key(1): b"held"})
    assert sorted(store.list("0000002a")) == [key(0), key(1)]


def test_held_objects_in_a_new_directory_are_listed(dirs: list[Path], store: RaidObjectStore) -> None:
    commit_new(store, {key(0): b"held"})
    assert list(store.list(SHARD)) == [key(0)]  # asked for the directory itself: found
    assert list(store.list("0000002a")) == [key(0)]


def test_big_objects_and_durable_commits_go_standalone(dirs: list[Path], store: RaidObjectStore) -> None:
    """Only small new objects committed for a barrier are held; SMALL itself is still small."""
    big, edge, durable, small = os.urandom(SMALL + 1), os.urandom(SMALL), b"durable", b"small"
    puts = commit_new(store, {key(0): big, key(1): edge, key(3): small})
    p = store.put(key(2), exclusive=True)
    p.write(durable)
    p.commit()  # durable: at once, on its own
    assert standalone(dirs) == [key(0).rpartition("/")[2], key(2).rpartition("/")[2]]
    store.sync(puts)
    assert len(packs(dirs)) == 1
    assert standalone(dirs) == [key(0).rpartition("/")[2], key(2).rpartition("/")[2]]
    cold = fresh(dirs)
    assert contents(cold, [key(i) for i in range(4)]) == {key(0): big, key(1): edge, key(2): durable, key(3): small}
    assert "pack~" in cold.verify(key(1), repair=False).detail
    assert "pack~" not in cold.verify(key(0), repair=False).detail


def test_a_non_id_key_is_never_held(dirs: list[Path], store: RaidObjectStore) -> None:
    """Only object ids are packed: an account's info file stays a RAID file of its own."""
    p = store.put("0000002a/info", exclusive=True)
    p.write(b"info")
    p.commit(durable=False)
    assert [names for names in files(dirs, "0000002a")] == [["info.rf"]] * 3
    store.sync([p])
    assert fresh(dirs).get("0000002a/info").read() == b"info"


def test_a_standalone_rewrite_wins_and_a_fully_shadowed_pack_goes(dirs: list[Path], store: RaidObjectStore) -> None:
    """A rewrite is standalone and wins; a pack none of whose members is read any more is deleted."""
    batch(store, {key(i): b"packed %d" % i for i in range(3)})
    assert store.exists(key(0))  # (the shard's view, as a session's allocation keeps it)
    (pack,) = packs(dirs)
    rewrite(store, key(1), b"rewritten 1" * 500)
    for s in (store, fresh(dirs)):
        assert contents(s, [key(i) for i in range(3)]) == {key(0): b"packed 0", key(1): b"rewritten 1" * 500,
                                                           key(2): b"packed 2"}
        assert s.usage_blocks(key(1)) == s.blocks_for_length(11 * 500)
        assert sorted(s.list("0000002a")) == [key(0), key(1), key(2)]
    assert packs(dirs) == [pack]  # two members still read from it
    rewrite(store, key(0), b"rewritten 0")
    rewrite(store, key(2), b"rewritten 2")
    assert packs(dirs) == []
    assert contents(fresh(dirs), [key(i) for i in range(3)]) == {
        key(0): b"rewritten 0", key(1): b"rewritten 1" * 500, key(2): b"rewritten 2"}


def test_a_fully_shadowed_pack_goes_even_without_a_view(dirs: list[Path], store: RaidObjectStore) -> None:
    batch(store, {key(i): b"packed %d" % i for i in range(3)})
    cold = fresh(dirs)
    for i in range(3):
        rewrite(cold, key(i), b"rewritten %d" % i)
    assert contents(fresh(dirs), [key(i) for i in range(3)]) == {key(i): b"rewritten %d" % i for i in range(3)}
    assert packs(dirs) == []


def test_a_rewrite_in_the_same_sync_as_the_new_object_is_not_packed(dirs: list[Path], store: RaidObjectStore) -> None:
    """`sync_and_commit`: a new object rewritten before its barrier (a new directory) is stored once, new."""
    owed = commit_new(store, {key(0): b"first version", key(1): b"other"})
    p = store.put(key(0))
    p.write(b"second version")
    store.sync_and_commit(owed, [p])
    for s in (store, fresh(dirs)):
        assert contents(s, [key(0), key(1)]) == {key(0): b"second version", key(1): b"other"}
    (pack,) = packs(dirs)
    assert "0000000000000100" not in fresh(dirs)._index(f"{SHARD}/{pack}")  # not in the pack: shadowed at once


def test_a_durable_rewrite_of_a_held_object_wins_at_once(dirs: list[Path], store: RaidObjectStore) -> None:
    """The ObjectStore contract: commit replaces any previous object, whatever the backend holds."""
    owed = commit_new(store, {key(0): b"old"})
    rewrite(store, key(0), b"new")
    assert store.get(key(0)).read() == b"new"
    store.sync(owed)
    assert store.get(key(0)).read() == b"new"


# ------------------------------------------------------------------ deleting

def test_deleting_a_member_repacks_the_others(dirs: list[Path], store: RaidObjectStore) -> None:
    """The pack is never changed: its other live members go to a new pack, the old one is deleted."""
    data = {key(i): b"packed %d" % i * (i + 1) for i in range(6)}
    batch(store, data)
    (old,) = packs(dirs)
    store.delete(key(2))
    new = packs(dirs)
    assert len(new) == 1 and new != [old]
    del data[key(2)]
    for s in (store, fresh(dirs)):
        assert contents(s, [key(i) for i in range(6)]) == {**data, key(2): None}
        assert sorted(s.list("0000002a")) == sorted(data)
        assert not s.exists(key(2))
    assert set(fresh(dirs)._index(f"{SHARD}/{new[0]}")) == {k.rpartition("/")[2] for k in data}


def test_delete_all_rewrites_each_pack_once(dirs: list[Path], store: RaidObjectStore,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Housekeeping deletes many old versions at once: one new pack per pack touched, not one per key."""
    data = {key(i): b"object %d" % i for i in range(12)}
    data |= {key(i, SHARD2): b"other %d" % i for i in range(4)}
    batch(store, data)
    written: list[str] = []
    real = RaidObjectStore._write_pack

    def counting(self: RaidObjectStore, shard: str, members: list[tuple[int, bytes]], durable: bool) -> Any:
        written.append(shard)
        return real(self, shard, members, durable)

    monkeypatch.setattr(RaidObjectStore, "_write_pack", counting)
    doomed = [key(1), key(3), key(5), key(7), key(50), key(0, SHARD2)]  # key(50): absent, skipped silently
    store.delete_all(doomed)
    assert sorted(written) == [SHARD, SHARD2]
    expected = {k: (None if k in doomed else d) for k, d in data.items()}
    assert contents(fresh(dirs), list(data)) == expected
    written.clear()
    store.delete_all([key(i, SHARD2) for i in range(4)])  # every remaining member: nothing to keep, no new pack
    assert written == [] and packs(dirs, SHARD2) == []
    assert len(packs(dirs)) == 1


def test_past_pack_bytes_a_shard_gets_more_packs_each_rewritten_alone(dirs: list[Path], store: RaidObjectStore,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Members in ascending id, a new pack past PACK_BYTES; a delete touches only the packs holding its keys."""
    monkeypatch.setattr(raidstore, "PACK_BYTES", 3 * (1000 + 48))
    data = {key(i): os.urandom(1000) for i in range(9)}
    batch(store, data)
    names = packs(dirs)
    cold = fresh(dirs)
    members = sorted(sorted(cold._index(f"{SHARD}/{p}")) for p in names)
    assert members == [[key(i).rpartition("/")[2] for i in range(j, j + 3)] for j in (0, 3, 6)]
    assert {k: cold.get(k).read() for k in data} == data
    written: list[int] = []
    real = RaidObjectStore._write_pack

    def counting(self: RaidObjectStore, shard: str, members: list[tuple[int, bytes]], durable: bool) -> Any:
        written.append(len(members))
        return real(self, shard, members, durable)

    monkeypatch.setattr(RaidObjectStore, "_write_pack", counting)
    store.delete_all([key(0), key(1), key(4)])  # two packs touched, the third (6-8) left alone
    assert sorted(written) == [1, 2]
    assert len(set(packs(dirs)) & set(names)) == 1
    del data[key(0)], data[key(1)], data[key(4)]
    assert contents(fresh(dirs), [key(i) for i in range(9)]) == {
        **{key(i): None for i in (0, 1, 4)}, **data}


def test_deleting_a_missing_key_is_not_found(dirs: list[Path], store: RaidObjectStore) -> None:
    batch(store, {key(0): b"there"})
    for k in (key(1), key(0, SHARD2), "0000002a/info"):
        with pytest.raises(NotFound):
            store.delete(k)
    store.delete(key(0))
    with pytest.raises(NotFound):
        store.delete(key(0))
    assert packs(dirs) == []


def test_deleting_a_held_object_leaves_nothing_for_the_sync(dirs: list[Path], store: RaidObjectStore) -> None:
    """Over the hard limit a new object is deleted at once (`new_object`): before its barrier."""
    puts = commit_new(store, {key(0): b"kept", key(1): b"refused"})
    store.delete(key(1))
    with pytest.raises(NotFound):
        store.get(key(1))
    store.sync(puts)
    cold = fresh(dirs)
    assert contents(cold, [key(0), key(1)]) == {key(0): b"kept", key(1): None}
    assert set(cold._index(f"{SHARD}/{packs(dirs)[0]}")) == {key(0).rpartition("/")[2]}


def test_a_held_object_deleted_and_created_again_before_the_sync(dirs: list[Path], store: RaidObjectStore) -> None:
    """The ObjectStore contract lets a deleted key be created again; Account never reuses an id in a session."""
    first = commit_new(store, {key(0): b"first", key(1): b"other"})
    store.delete(key(0))
    again = commit_new(store, {key(0): b"again"})
    store.sync(first + again)
    assert contents(fresh(dirs), [key(0), key(1)]) == {key(0): b"again", key(1): b"other"}


def test_deleting_a_shadowed_member_never_brings_the_packed_copy_back(dirs: list[Path],
                                                                      store: RaidObjectStore) -> None:
    batch(store, {key(i): b"packed %d" % i for i in range(4)})
    rewrite(store, key(1), b"rewritten 1")
    store.delete(key(1))
    assert all(key(1).rpartition("/")[2] not in fresh(dirs)._index(f"{SHARD}/{p}") for p in packs(dirs))
    for s in (store, fresh(dirs)):
        with pytest.raises(NotFound):
            s.get(key(1))
        assert not s.exists(key(1))
        assert contents(s, [key(i) for i in (0, 2, 3)]) == {key(i): b"packed %d" % i for i in (0, 2, 3)}
        assert sorted(s.list("0000002a")) == [key(0), key(2), key(3)]


class Cut(BaseException):
    """A crash at this point (a BaseException: nothing may catch it as an error and go on)."""


def _cut_nth(store: RaidObjectStore, monkeypatch: pytest.MonkeyPatch, where: str, method: str, n: int) -> list[int]:
    """Make `method` of the store (`where` "store") or of its disc set raise Cut on its n-th call; the calls seen."""
    target: Any = store if where == "store" else store.discset
    real: Callable[..., Any] = getattr(target, method)
    seen = [0]

    def cut(*args: Any, **kw: Any) -> Any:
        seen[0] += 1
        if seen[0] == n:
            raise Cut(f"{method} #{n}")
        return real(*args, **kw)

    monkeypatch.setattr(target, method, cut)
    return seen


STEPS = {
    "writing the new pack": ("store", "_write_pack", 1),
    "deleting the old pack": ("discset", "delete", 1),
    "deleting the key's standalone file": ("discset", "delete", 2),
}


@pytest.mark.parametrize("shadowed", [False, True], ids=["packed", "shadowed"])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_delete_cut_short_between_its_steps_leaves_a_valid_state(dirs: list[Path], store: RaidObjectStore,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     step: str, shadowed: bool) -> None:
    """Whatever step a crash interrupts: every other object intact, the key its latest version or gone."""
    others = {key(i): b"packed %d" % i for i in (0, 2, 3)}
    batch(store, {**others, key(1): b"packed 1"})
    latest = b"packed 1"
    if shadowed:
        rewrite(store, key(1), b"rewritten 1")
        latest = b"rewritten 1"
    with monkeypatch.context() as m:
        seen = _cut_nth(store, m, *STEPS[step])
        with pytest.raises(Cut):
            store.delete(key(1))
        assert seen == [STEPS[step][2]]
    for s in (store, fresh(dirs)):
        now = contents(s, [key(i) for i in range(4)])
        assert {k: now[k] for k in others} == others
        assert now[key(1)] in (latest, None)  # never b"packed 1" once it was rewritten
    if now[key(1)] is None:  # the cut came after its last copy went: done already
        with pytest.raises(NotFound):
            store.delete(key(1))
    else:
        store.delete(key(1))  # retried, to the end
    for s in (store, fresh(dirs)):
        assert contents(s, [key(i) for i in range(4)]) == {**others, key(1): None}
        assert sorted(s.list("0000002a")) == sorted(others)
    cold = fresh(dirs)
    assert all(key(1).rpartition("/")[2] not in cold._index(f"{SHARD}/{p}") for p in packs(dirs))
    assert standalone(dirs) == []


# ------------------------------------------------------------------ damage

def _flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_damaged_stripe_of_a_pack_is_read_around_and_repaired(dirs: list[Path], store: RaidObjectStore) -> None:
    data = {key(i): os.urandom(3000) for i in range(8)}  # a pack of several blocks: data in every stripe
    batch(store, data)
    (pack,) = packs(dirs)
    victim = next(p for p in stripes(dirs, SHARD, pack) if p.read_bytes()[5] == STRIPE1)  # (the header's role)
    _flip(victim, victim.stat().st_size // 2)  # in a data block, not the parity a read does not need
    cold = fresh(dirs)
    v = cold.verify(key(3), repair=False)
    assert not v.ok and v.readable and not v.repaired
    got = {k: cold.get(k) for k in data}
    assert {k: f.read() for k, f in got.items()} == data
    assert all(getattr(f, "degraded") for f in got.values())
    v = cold.verify(key(5), repair=True)
    assert v.repaired and v.readable, v
    again = fresh(dirs)  # from the disc, nothing remembered of the repair
    assert again.verify(key(3), repair=False).ok
    assert all(not getattr(again.get(k), "degraded") for k in data)
    assert {k: again.get(k).read() for k in data} == data


def test_a_pack_with_a_disc_missing_is_still_readable(dirs: list[Path], store: RaidObjectStore) -> None:
    data = {key(i): os.urandom(2000 + i) for i in range(6)}
    batch(store, data)
    (pack,) = packs(dirs)
    for lost in range(3):
        one = dirs[lost] / ROOT / SHARD / f"{pack}.rf"
        saved = one.read_bytes()
        one.unlink()
        cold = fresh(dirs)
        got = {k: cold.get(k) for k in data}
        assert {k: f.read() for k, f in got.items()} == data
        assert all(getattr(f, "degraded") for f in got.values())
        assert not cold.verify(key(0), repair=False).ok
        one.write_bytes(saved)


def test_a_torn_pack_is_a_stray_and_drop_damaged_removes_it(dirs: list[Path], store: RaidObjectStore) -> None:
    """A power cut between a barrier's pack rename and its fsync can leave it empty on every disc."""
    batch(store, {key(i): b"lost %d" % i for i in range(3)})
    batch(store, {key(i, SHARD2): b"kept %d" % i for i in range(2)})
    (pack,) = packs(dirs)
    for p in stripes(dirs, SHARD, pack):
        os.truncate(p, 0)
    cold = fresh(dirs)
    for i in range(3):
        with pytest.raises(NotFound):
            cold.get(key(i))
        assert not cold.exists(key(i))
    assert sorted(cold.list("0000002a")) == sorted([f"{SHARD}/{pack}", key(0, SHARD2), key(1, SHARD2)])
    assert cold.drop_damaged({SHARD, SHARD2}) == 1
    assert files(dirs) == [[], [], []]
    assert sorted(fresh(dirs).list("0000002a")) == [key(0, SHARD2), key(1, SHARD2)]
    assert cold.drop_damaged({SHARD, SHARD2}) == 0


# ------------------------------------------------------------------ limits and other processes

def test_past_held_bytes_new_objects_go_standalone_and_are_durable_at_the_sync(
        dirs: list[Path], store: RaidObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raidstore, "HELD_BYTES", 3 * (1000 + 48))
    data = {key(i): os.urandom(1000) for i in range(7)}
    puts = commit_new(store, data)
    assert [p.held for p in puts] == [True] * 3 + [False] * 4
    assert standalone(dirs) == [key(i).rpartition("/")[2] for i in range(3, 7)]
    assert all(p.writer._owed for p in puts[3:])  # visible, their fsyncs owed to the barrier
    store.sync(puts)
    assert not any(p.writer._owed for p in puts[3:])
    (pack,) = packs(dirs)
    cold = fresh(dirs)
    assert set(cold._index(f"{SHARD}/{pack}")) == {key(i).rpartition("/")[2] for i in range(3)}
    assert {k: cold.get(k).read() for k in data} == data
    assert store._held_bytes == 0  # room again for the next barrier's
    assert commit_new(store, {key(9): b"x"})[0].held


def test_a_stale_view_of_another_process_reloads_when_its_pack_vanished(dirs: list[Path]) -> None:
    """Two processes' stores: one repacks, the other's view names a pack that is gone."""
    one, two = fresh(dirs), fresh(dirs)
    data = {key(i): b"object %d" % i for i in range(5)}
    batch(one, data)
    assert two.exists(key(0))  # two's view: the first pack (its index read, not its body)
    one.delete(key(2))
    del data[key(2)]
    v = two.verify(key(4), repair=False)  # the pack two's view names is gone: verified in the new one
    assert v.ok and packs(dirs)[0] in v.detail
    assert {k: two.get(k).read() for k in data} == data
    one.delete(key(3))  # again, now that two has read the new pack's body
    del data[key(3)]
    assert {k: two.get(k).read() for k in data} == data
    info = one.put("0000002a/info")
    info.write(b"info")
    info.commit()
    two.get("0000002a/info").read()  # a session starts here: the account's views are dropped
    for gone in (key(2), key(3)):
        with pytest.raises(NotFound):
            two.get(gone)
    assert sorted(two.list("0000002a")) == sorted([*data, "0000002a/info"])


def test_a_pack_gone_right_after_a_fresh_view_named_it_is_read_from_where_it_went(dirs: list[Path],
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The view was loaded by this very read, and another process repacked the member before its pack's body
    was read: the read loads the view again (the member is in the new pack) rather than answering NotFound."""
    one, two = fresh(dirs), fresh(dirs)
    data = {key(i): b"object %d" % i for i in range(4)}
    batch(one, data)
    real = RaidObjectStore._body
    cut: list[str] = []

    def repacked_first(self: RaidObjectStore, pack: str) -> tuple[bytes, bool]:
        if self is two and not cut:
            cut.append(pack)
            one.delete(key(0))  # the other members go to a new pack, then this pack is deleted
        return real(self, pack)

    monkeypatch.setattr(RaidObjectStore, "_body", repacked_first)
    assert two.get(key(1)).read() == data[key(1)]
    assert cut and cut[0].rpartition("/")[2] not in packs(dirs)  # the pack its first view named is gone


def test_readers_in_other_threads_see_every_object_while_a_writer_packs_rewrites_and_deletes(
        dirs: list[Path], store: RaidObjectStore) -> None:
    """The server's threads share one store: a reader's view, pack bodies and indexes change under it as the
    writer packs, rewrites (shadowing members, deleting fully shadowed packs) and deletes (repacking)."""
    import threading

    kept = {key(i): b"kept %d " % i * (i + 1) for i in range(0, 40, 2)}  # never changed: read throughout
    batch(store, {**kept, **{key(i): b"doomed %d" % i for i in range(1, 40, 2)}})
    stop = threading.Event()
    wrong: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for k, want in kept.items():
                try:
                    got = store.get(k).read()
                except Exception as e:  # noqa: BLE001 - any error is the finding
                    wrong.append(f"{k}: {e!r}")
                    continue
                if got != want:
                    wrong.append(f"{k}: {got[:20]!r}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 40, 2):  # each rewrite, then delete, of a member of the kept ones' packs
            rewrite(store, key(i), b"rewritten %d" % i)
            batch(store, {key(100 + i): b"new %d" % i})
            store.delete(key(i))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert wrong == []
    assert contents(fresh(dirs), list(kept)) == kept


# ------------------------------------------------------------------ through the store's layers

def test_a_backup_is_packed_checks_clean_and_survives_housekeeping(tmp_path: Path) -> None:
    """The layers above see no packs: check, housekeeping's deletes (repacks) and restores all as before."""
    store: Store = make_store(tmp_path, (A, 100_000, 200_000))
    client, thread = session_client(store, A)
    client.login()
    current: dict[int, tuple[bytes, bytes]] = {}  # object id -> (name, contents) of each current version
    for i in range(40):
        data = os.urandom(1000 + 37 * i)
        current[upload(client, KEYS, 1, b"f%d" % i, data)] = (b"f%d" % i, data)
    old = list(current)[:10]
    for i in range(10):  # new versions of the first ten: ten old versions for housekeeping
        data = os.urandom(800 + i)
        current[upload(client, KEYS, 1, b"f%d" % i, data)] = (b"f%d" % i, data)
    for o in old:
        del current[o]
    client.finish()
    thread.join(10)
    pack_files = {p.name for p in (tmp_path / "d0" / ROOT).rglob("pack~*.rf")}
    assert pack_files, "a session's small new objects should be packed"
    report = check_account(store, A)
    assert report.errors == 0, [str(p) for p in report.problems]
    store.update_info(A, soft_limit=0)  # every old version goes
    result = housekeep(store, A)
    assert result.removed_old == 10
    after = {p.name for p in (tmp_path / "d0" / ROOT).rglob("pack~*.rf")}
    assert after and after != pack_files  # old versions' packs were rewritten without them
    report = check_account(store, A)
    assert report.errors == 0, [str(p) for p in report.problems]
    info = store.read_info(A)._asdict()
    assert report.counts == {k: info[k] for k in report.counts}
    cold = fresh([tmp_path / f"d{i}" for i in range(3)])
    assert not any(cold.exists(object_key(A, o)) for o in old)  # the objects themselves, not only their entries
    assert all(cold.exists(object_key(A, o)) for o in current)
    other = make_store(tmp_path)  # another server process on the same disc set: cold views
    for s in (store, other):
        client, thread = session_client(s, A)
        client.login(read_only=True)
        for object_id, (name, data) in current.items():
            assert download(client, KEYS, 1, object_id, name) == data
        for o in old:
            with pytest.raises(NotFound):
                client.get_file(1, o).read()
        client.finish()
        thread.join(10)
