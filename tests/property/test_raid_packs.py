"""The RAID store with packs against a dict: any sequence of new small (held) and big objects,
standalone rewrites, deletes, multi-key deletes, barriers and fresh store instances leaves every
key reading its latest bytes, from this store and from a cold one, deleted keys NotFound, and
`list` exactly the live keys. Packing is an optimisation no caller may ever observe."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from boxbox.errors import NotFound
from boxbox.raidfile import DiscSet
from boxbox.store.raidstore import SMALL, RaidObjectStore

PREFIX = "0000002a"
SHARDS = [f"{PREFIX}/o/0/01", f"{PREFIX}/o/0/02"]
#: Object ids per shard: few, so rules keep meeting the same keys (and reuse deleted ones).
IDS = 6
KEYS = [f"{shard}/{0x100 + i:016x}" for shard in SHARDS for i in range(IDS)]

key_index = st.integers(0, len(KEYS) - 1)
small = st.binary(max_size=600)


def big(seed: int) -> bytes:
    """An object just over SMALL (written standalone), cheap to make."""
    return bytes([seed]) * (SMALL + 1 + seed)


class Cut(BaseException):
    """A failure part way through (a BaseException: the store may not catch it and carry on)."""


class RaidPacks(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.dirs = [Path(self._tmp.name) / f"d{i}" for i in range(3)]
        for d in self.dirs:
            d.mkdir()
        self.store = self.fresh()
        self.model: dict[str, bytes] = {}  # what a read of this store must return
        self.held: set[str] = set()  # model keys held for the next barrier (a cold store cannot see them)
        self.owed: list[Any] = []  # puts committed with durable=False, for the next barrier
        #: new objects written standalone whose fsyncs are owed: their writers hold the stripes' locks until the
        #: barrier, so a delete or plain rewrite of one is InUse (the raidfile layer's, as before packs)
        self.locked: set[str] = set()

    def fresh(self) -> RaidObjectStore:
        return RaidObjectStore(DiscSet("0", self.dirs, 4096))

    def teardown(self) -> None:
        self._tmp.cleanup()

    def _new(self, k: str, data: bytes) -> None:
        p = self.store.put(k, exclusive=True)
        p.write(data)
        p.commit(durable=False)
        self.owed.append(p)
        self.model[k] = data
        if p.held:
            self.held.add(k)
        else:
            self.locked.add(k)

    def _unhold(self, k: str) -> None:
        if k in self.held:
            self.held.discard(k)

    @rule(i=key_index, data=small)
    def new_small(self, i: int, data: bytes) -> None:
        """A new object (an id not in use: maybe one deleted before) held for its barrier."""
        if KEYS[i] not in self.model:
            self._new(KEYS[i], data)

    @rule(i=key_index, seed=st.integers(0, 3))
    def new_big(self, i: int, seed: int) -> None:
        if KEYS[i] not in self.model:
            self._new(KEYS[i], big(seed))

    @rule(i=key_index, data=small)
    def rewrite(self, i: int, data: bytes) -> None:
        """A rewrite of a stored or held object (a directory): standalone, durable at once, winning over the
        held copy at once."""
        k = KEYS[i]
        if k in self.model and k not in self.locked:
            p = self.store.put(k)
            p.write(data)
            p.commit()
            self.model[k] = data
            self._unhold(k)

    @rule(i=key_index, data=small)
    def rewrite_at_the_barrier(self, i: int, data: bytes) -> None:
        """A rewrite committed by the barrier (`publish_rewrites(barrier=True)`), held or not."""
        k = KEYS[i]
        if k in self.model:
            p = self.store.put(k)
            p.write(data)
            owed, self.owed = self.owed, []
            self.store.sync_and_commit(owed, [p])
            self.model[k] = data
            self.held.clear()
            self.locked.clear()

    @rule(i=key_index)
    def delete(self, i: int) -> None:
        k = KEYS[i]
        if k in self.locked:
            return
        if k in self.model:
            self.store.delete(k)
            del self.model[k]
            self._unhold(k)
        else:
            with pytest.raises(NotFound):
                self.store.delete(k)

    @rule(i=key_index, step=st.sampled_from(["_write_pack", "delete"]), n=st.integers(1, 3))
    def delete_cut_short(self, i: int, step: str, n: int) -> None:
        """A delete that fails at its n-th new pack or file deletion (a full disc, a crash): every other key
        keeps its bytes, this one its latest or none, never an older one; a retry finishes it."""
        k = KEYS[i]
        if k not in self.model or k in self.held or k in self.locked:
            return
        target: Any = self.store if step == "_write_pack" else self.store.discset
        real = getattr(target, step)
        calls = [0]

        def cut(*args: Any, **kw: Any) -> Any:
            calls[0] += 1
            if calls[0] == n:
                raise Cut(f"{step} #{n}")
            return real(*args, **kw)

        setattr(target, step, cut)
        try:
            self.store.delete(k)
            cut_short = False
        except Cut:
            cut_short = True
        finally:
            delattr(target, step)
        if cut_short:
            cold = self.fresh()
            for other, data in self.model.items():
                if other != k and other not in self.held:
                    assert cold.get(other).read() == data, other
            try:
                now: bytes | None = cold.get(k).read()
            except NotFound:
                now = None
            assert now in (self.model[k], None), (k, now)
            if now is None:
                with pytest.raises(NotFound):
                    self.store.delete(k)
            else:
                self.store.delete(k)
        del self.model[k]

    @precondition(lambda self: not self.owed)
    @rule(i=key_index, data=st.none() | small)
    def another_process_changes(self, i: int, data: bytes | None) -> None:
        """Another process deletes (None) or rewrites a key: this store's views are stale, yet every other key
        reads right; once a session starts here (it reads the account's info) the change is seen too."""
        k = KEYS[i]
        if k not in self.model:
            return
        other = self.fresh()
        if data is None:
            other.delete(k)
            del self.model[k]
        else:
            p = other.put(k)
            p.write(data)
            p.commit()
            self.model[k] = data
        for o, d in self.model.items():
            if o != k:
                assert self.store.get(o).read() == d, o
        with pytest.raises(NotFound):
            self.store.get(f"{PREFIX}/info")  # (there is none: its read drops the account's views first)

    @rule(picks=st.lists(key_index, min_size=1, max_size=5, unique=True))
    def delete_all(self, picks: list[int]) -> None:
        doomed = [KEYS[i] for i in picks if KEYS[i] not in self.locked]
        self.store.delete_all(doomed)
        for k in doomed:
            self.model.pop(k, None)
            self._unhold(k)

    @rule()
    def sync(self) -> None:
        owed, self.owed = self.owed, []
        self.store.sync(owed)
        self.held.clear()
        self.locked.clear()

    @precondition(lambda self: not self.owed)
    @rule()
    def reopen(self) -> None:
        """Another process (or this one restarted after its barrier): nothing remembered."""
        self.store = self.fresh()

    @rule()
    def reopen_before_the_barrier(self) -> None:
        """A process that died before its barrier: its held objects are lost, its big ones were renamed into
        place already (only their fsyncs were owed), and nothing else changes."""
        self.store = self.fresh()
        for k in self.held:
            del self.model[k]
        self.held.clear()
        self.locked.clear()
        for p in self.owed:  # (the dead process's locks go with it)
            if p.writer is not None:
                p.writer._close()  # as its __del__ would: fds closed, nothing fsynced
        self.owed = []

    @invariant()
    def reads_match_the_model(self) -> None:
        cold = self.fresh()
        for store, expected in ((self.store, self.model),
                                (cold, {k: v for k, v in self.model.items() if k not in self.held})):
            for k in KEYS:
                if k in expected:
                    assert store.get(k).read() == expected[k], k
                    assert store.exists(k), k
                else:
                    with pytest.raises(NotFound):
                        store.get(k)
                    assert not store.exists(k), k
            for shard in SHARDS:
                assert sorted(store.list(shard)) == sorted(k for k in expected if k.startswith(shard + "/"))
            assert sorted(k for k in store.list(PREFIX) if k in KEYS) == sorted(expected)

    @invariant()
    def nothing_held_without_a_barrier_to_come(self) -> None:
        assert self.store._held_bytes == sum(len(self.store._held[k]) for k in self.store._held)
        assert set(self.store._held) == self.held


RaidPacks.TestCase.settings = settings(settings.default, max_examples=40, stateful_step_count=20, deadline=None)
test_raid_packs = RaidPacks.TestCase
