"""The object store on a disc set: every object a RAID file, a sync's small new objects packed.

Keys are paths under `backup/`. A new object written for a barrier (`commit(durable=False)`)
of up to SMALL bytes, named by an object id, is held in memory until the barrier (`sync`),
which writes the held objects of each shard directory as one RAID file `pack~<16 hex>`, in
the pack format of `s3pack` (each member its payload + SHA-256 trailer). One RAID file costs
three inodes, three renames and their fsyncs whatever it holds: 3,000 small objects took
1.88 s as one RAID file each and 0.22 s as one per 64 (docs/BENCHMARKS.md), most of the
server's CPU in a first backup. Reads find members through a per-shard view (one listing
of the directory and its packs' indexes), so callers still see one object per key.

The rules that keep every state readable (docs/STORE.md "Packs on a disc set"):
- a standalone RAID file always wins over a member of the same name (a rewrite is standalone);
- a pack is written whole and atomically (it is a RAID file), and never changed;
- deleting a member writes the pack's other live members as a new pack first, then deletes the
  old pack, then any standalone file of the name: a cut anywhere leaves each other object
  readable and never brings an old version back.
Views are changed only by this process's own writes (under its lock); another process writes
an account only under the account's write lock, and a session starts by reading the account's
info, which drops that account's views. A pack that vanished under a view makes it reload.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, BinaryIO, Iterator

from boxbox.errors import FormatError, InUse, IntegrityError, NotFound, ProgrammingError
from boxbox.store.backend import ROOT, PutStream, Verified, check_key
from boxbox.store.info import BLOCK_SIZE
from boxbox.store.s3pack import (
    FOOTER,
    TRAILER,
    Entry,
    Location,
    ShardView,
    build,
    checked,
    is_id_name,
    is_pack_name,
    pack_name,
    parse_index,
    seal,
)

if TYPE_CHECKING:
    from boxbox.raidfile import DiscSet
    from boxbox.raidfile.writer import RaidWriter

log = logging.getLogger(__name__)

#: New objects up to this size are held for their sync's pack (a directory listing, a small file).
SMALL = 256 * 1024
#: A pack holds members up to about this many bytes (more held in one shard: more packs).
PACK_BYTES = 4 << 20
#: Held members over all accounts; past it a new object is written on its own, as before packs.
HELD_BYTES = 32 << 20
#: Shard views kept (each at most 256 names and a few packs' indexes: ~50 KB at most).
VIEWS = 128
#: Whole packs kept after a read: a restore reads members in upload order, a pack's in a row.
BODIES = 4
#: A pack verified this recently is not verified again for each of its members (`check`).
VERIFIED_FOR = 60.0
#: Bytes read from a pack's end to find its index: a shard has 256 ids, so at most 256 entries.
INDEX_TAIL = 256 * 24 + FOOTER.size


def _shard(key: str) -> tuple[str, str] | None:
    """(directory, name) of a key that may be a pack member (an object id); None for any other key."""
    shard, _, name = key.rpartition("/")
    return (shard, name) if shard and is_id_name(name) else None


class _Member(io.BytesIO):
    """A pack member's payload, as read: `degraded` if its pack was read with a stripe missing or damaged."""

    degraded = False


class _Put:
    """A new object: held in memory if it may go into its sync's pack, else streamed to a RaidWriter."""

    def __init__(self, store: "RaidObjectStore", key: str, holdable: bool) -> None:
        self._store = store
        self.key = key
        self._buf: bytearray | None = bytearray() if holdable else None
        self.writer: RaidWriter | None = None if holdable else store.discset.create(store.path(key))
        self.held = False  # True once held for the sync's pack

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.writer is not None:
            return self.writer.write(data)
        if self._buf is None:
            raise ProgrammingError(f"{self._store.label(self.key)}: write after commit or abort")
        self._buf += data
        if len(self._buf) > SMALL:
            self._spill()
        return len(data)

    def _spill(self) -> None:
        """Go on as a RAID file of its own (too big to hold, or a durable commit)."""
        buf, self._buf = self._buf, None
        self.writer = self._store.discset.create(self._store.path(self.key))
        if buf:
            self.writer.write(buf)

    def commit(self, durable: bool = True) -> None:
        if self.writer is None:
            if self._buf is None:
                raise ProgrammingError(f"{self._store.label(self.key)}: commit after commit or abort")
            if not durable and self._store.hold(self.key, self._buf):
                self._buf, self.held = None, True
                return
            self._spill()
        assert self.writer is not None
        self.writer.commit(durable)
        self._store.landed(self.key)

    def abort(self) -> None:
        self._buf = None
        if self.writer is not None:
            self.writer.abort()


def _writers(puts: list[PutStream]) -> list["RaidWriter"]:
    return [w for w in (getattr(p, "writer", None) for p in puts) if w is not None]


class RaidObjectStore:
    """`ObjectStore` over a raidfile `DiscSet`, shared by the server's threads."""

    exclusive_create = False  # a new id is checked with `names`/`exists` by the caller

    def __init__(self, discset: "DiscSet") -> None:
        self.discset = discset
        self._lock = threading.RLock()
        self._held: dict[str, bytes] = {}  # key -> member bytes (payload + trailer), until its sync
        self._held_bytes = 0
        self._views: OrderedDict[str, ShardView] = OrderedDict()
        self._indexes: OrderedDict[str, dict[str, Entry]] = OrderedDict()  # pack key -> members (immutable)
        self._bodies: OrderedDict[str, tuple[bytes, bool]] = OrderedDict()  # pack key -> (whole pack, degraded)
        self._verified: OrderedDict[str, tuple[float, tuple[object, ...]]] = OrderedDict()  # pack -> when, stamp

    def path(self, key: str) -> str:
        return f"{ROOT}/{check_key(key)}"

    def label(self, key: str) -> str:
        return f"discset {self.discset.name}: {key}"

    # ------------------------------------------------------------ views
    def _view(self, shard: str) -> tuple[ShardView, bool]:
        """The shard's view, and whether it was loaded just now (False: kept from before). Call under the lock."""
        view = self._views.get(shard)
        if view is not None:
            self._views.move_to_end(shard)
            return view, False
        view, _ = self._load(shard)
        self._views[shard] = view
        while len(self._views) > VIEWS:
            self._views.popitem(last=False)
        return view, True

    def _load(self, shard: str) -> tuple[ShardView, list[str]]:
        """A fresh view of `shard` from one listing, and its damaged packs (index unreadable: logged)."""
        plain: dict[str, int] = {}
        packs: dict[str, tuple[int, dict[str, Entry]]] = {}
        damaged: list[str] = []
        for name in self.discset.listdir(self.path(shard)):
            if not is_pack_name(name):
                plain[name] = 0
                continue
            try:
                packs[name] = (0, self._index(f"{shard}/{name}"))
            except NotFound:
                continue  # deleted since the listing: its live members were written elsewhere first
            except (FormatError, IntegrityError) as e:
                log.warning("%s; its members cannot be read", e)
                damaged.append(name)
        return ShardView(plain, packs), damaged

    def _index(self, pack: str) -> dict[str, Entry]:
        index = self._indexes.get(pack)
        if index is not None:
            return index
        with self.discset.open(self.path(pack), settle=False) as f:
            size = f.seek(0, io.SEEK_END)
            start = max(0, size - INDEX_TAIL)
            tail = f.pread(start, size - start)
        found = parse_index(tail, size, self.label(pack))
        return self._keep_index(pack, {f"{i:016x}": e for i, e in found.items()})

    def _keep_index(self, pack: str, index: dict[str, Entry]) -> dict[str, Entry]:
        self._indexes[pack] = index
        while len(self._indexes) > 4 * VIEWS:  # (an index: ~150 bytes a member)
            self._indexes.popitem(last=False)
        return index

    def _body(self, pack: str) -> tuple[bytes, bool]:
        """A whole pack (kept for the reads of its next members), and whether it was read degraded (a stripe
        missing or damaged: `check` then verifies and repairs it); NotFound if it is gone. Read outside the
        lock: other sessions' reads need not wait for this one's disc."""
        with self._lock:
            body = self._bodies.get(pack)
            if body is not None:
                self._bodies.move_to_end(pack)
                return body
        with self.discset.open(self.path(pack), settle=False) as f:
            body = f.readall(), f.degraded
        with self._lock:
            self._bodies[pack] = body
            while len(self._bodies) > BODIES:
                self._bodies.popitem(last=False)
        return body

    def _member(self, shard: str, name: str, loc: Location | None) -> "_Member | None":
        """The payload of pack member `name` at `loc` (from a view), checked; None if there is none or its
        pack is gone."""
        if loc is None:
            return None
        pack = f"{shard}/{loc.pack}"
        try:
            body, degraded = self._body(pack)
        except NotFound:
            return None
        except (FormatError, IntegrityError):
            with self._lock:
                self._forget_pack(pack)  # (its index was kept: the next listing finds it damaged)
            raise
        e = loc.entry
        if e.offset + e.length > len(body):
            raise FormatError(f"{self.label(pack)}: member {name} ends at {e.offset + e.length}, past the pack's "
                              f"{len(body)} bytes")
        member = _Member(checked(memoryview(body)[e.offset:e.offset + e.length], self.label(f"{shard}/{name}")))
        member.degraded = degraded
        return member

    def _drop_views(self, start: str) -> None:
        with self._lock:
            for shard in [s for s in self._views if (s + "/").startswith(start)]:
                del self._views[shard]

    def landed(self, key: str) -> None:
        """A standalone RAID file of `key` was committed: it wins over a member of its name."""
        shard = _shard(key)
        if shard is None:
            return
        with self._lock:
            self._unhold(key)  # (a copy held for the sync is older)
            view, _ = self._view(shard[0])
            view.plain[shard[1]] = 0
            for pack in view.holding(shard[1]):  # a pack left with no member to read takes space for nothing
                if all(n in view.plain for n in view.packs[pack][1]):
                    self._delete_file(f"{shard[0]}/{pack}")
                    self._forget_pack(f"{shard[0]}/{pack}")
                    view.drop_pack(pack)

    # ------------------------------------------------------------ holding and packing
    def hold(self, key: str, payload: bytes | bytearray) -> bool:
        """Keep a new small object for its sync's pack; False if HELD_BYTES are held already."""
        data = seal(payload)
        with self._lock:
            if self._held_bytes + len(data) > HELD_BYTES:
                return False
            self._held[key] = data
            self._held_bytes += len(data)
        return True

    def _unhold(self, key: str) -> bool:
        data = self._held.pop(key, None)
        if data is not None:
            self._held_bytes -= len(data)
        return data is not None

    def _write_packs(self, keys: list[str]) -> list["RaidWriter"]:
        """Write the members held under `keys` as packs, one per shard directory (more past PACK_BYTES),
        committed with their durability owed (their names are new: nothing durable names them yet)."""
        groups: dict[str, list[tuple[int, bytes]]] = {}
        keys = list(dict.fromkeys(keys))  # (a key held, deleted and held again is in the barrier twice)
        with self._lock:
            for key in keys:
                data = self._held.get(key)
                if data is not None:
                    shard, name = _shard(key)  # type: ignore[misc]  # only id keys are held
                    groups.setdefault(shard, []).append((int(name, 16), data))
        writers: list[RaidWriter] = []
        try:
            for shard, members in groups.items():
                chunk: list[tuple[int, bytes]] = []
                size = 0
                for member in sorted(members):
                    if chunk and size + len(member[1]) > PACK_BYTES:
                        writers.append(self._write_pack(shard, chunk, durable=False))
                        chunk, size = [], 0
                    chunk.append(member)
                    size += len(member[1])
                writers.append(self._write_pack(shard, chunk, durable=False))
        except BaseException:
            from boxbox.raidfile.writer import sync_all

            with contextlib.suppress(OSError):
                sync_all(writers)  # (closes them; the barrier fails anyway)
            raise
        finally:
            with self._lock:
                for key in keys:
                    self._unhold(key)
        return writers

    def _write_pack(self, shard: str, members: list[tuple[int, bytes]], durable: bool) -> "RaidWriter":
        """One new pack of `members` (id, member bytes) in `shard`, committed and in the view if one is kept."""
        name = pack_name(int.from_bytes(os.urandom(8), "big"))
        key = f"{shard}/{name}"
        body = build(members)
        w = self.discset.create(self.path(key))
        try:
            w.write(body)
        except BaseException:
            w.abort()
            raise
        w.commit(durable)
        index = {f"{i:016x}": e for i, e in parse_index(body, len(body), self.label(key)).items()}
        with self._lock:
            self._keep_index(key, index)
            view = self._views.get(shard)
            if view is not None:
                view.add_pack(name, len(body), index)
        return w

    # ------------------------------------------------------------ ObjectStore: writing
    def put(self, key: str, exclusive: bool = False) -> PutStream:
        shard = _shard(key)
        if is_pack_name(key.rpartition("/")[2]):
            raise ProgrammingError(f"{self.label(key)}: names pack~<16 hex digits> are the store's own")
        # exclusive: a new id, to be committed for a barrier (Account.new_object), so it may be held
        return _Put(self, key, holdable=exclusive and shard is not None)

    def sync(self, puts: list[PutStream]) -> None:
        """The barrier: the held members of `puts` written as packs, then every one of them made durable
        in one round of fsyncs (`raidfile.writer.sync_all`)."""
        self.sync_and_commit(puts, [])

    def commit_all(self, puts: list[PutStream]) -> None:
        """Commit uncommitted puts durably together: every temp fsynced, then the renames, then each
        directory fsynced once (`raidfile.writer.commit_all`); each object stays old or new."""
        self.sync_and_commit([], puts)

    def sync_and_commit(self, owed: list[PutStream], puts: list[PutStream]) -> None:
        """`sync(owed)` and `commit_all(puts)` in one round of fsyncs, no put renamed before every owed
        object (and pack) is durable (`raidfile.writer.sync_and_commit`); any error fails both."""
        from boxbox.raidfile.writer import sync_all, sync_and_commit

        rewritten = {p.key for p in puts}  # type: ignore[attr-defined]
        with self._lock:  # a new directory rewritten in the same sync: its first version would be shadowed at once
            for key in rewritten:
                self._unhold(key)
        try:
            packs = self._write_packs([p.key for p in owed if getattr(p, "held", False)])  # type: ignore[attr-defined]
        except BaseException:
            for w in _writers(puts):
                w.abort()
            with contextlib.suppress(OSError):
                sync_all(_writers(owed))  # done with: they release their names' locks (the barrier fails)
            raise
        sync_and_commit(_writers(owed) + packs, _writers(puts))
        for p in puts:
            self.landed(p.key)  # type: ignore[attr-defined]

    def delete(self, key: str) -> None:
        """Remove `key`; NotFound if absent (see `delete_all`)."""
        if not self._delete([key]):
            raise NotFound(self.label(key))

    def delete_all(self, keys: list[str]) -> None:
        """Remove every key of `keys` that exists: each pack holding some of them is rewritten once."""
        self._delete(keys)

    def _delete(self, keys: list[str]) -> set[str]:
        """Remove `keys`; the set of those that existed. Members: every pack holding one is replaced by a
        pack of its other live members (written durably first), then deleted; then the standalone files."""
        found: set[str] = set()
        shards: dict[str, list[str]] = {}
        with self._lock:
            for key in keys:
                check_key(key)
                if self._unhold(key):
                    found.add(key)  # held for its sync: nothing stored yet
                elif _shard(key) is None:
                    if self._delete_file(key):
                        found.add(key)
                    if is_pack_name(key.rpartition("/")[2]):  # a damaged pack `check --fix` removes
                        self._forget_pack(key)
                else:
                    shards.setdefault(_shard(key)[0], []).append(key)  # type: ignore[index]
        for shard, doomed in shards.items():
            with self._lock:
                found |= self._delete_in(shard, {k.rpartition("/")[2] for k in doomed})
        return found

    def _delete_in(self, shard: str, doomed: set[str]) -> set[str]:
        view, _ = self._load(shard)  # fresh: a delete must see every pack
        self._views[shard] = view
        found: set[str] = set()
        for pack in sorted({p for n in doomed for p in view.holding(n)}):
            index = view.packs[pack][1]
            found |= {f"{shard}/{n}" for n in doomed & index.keys()}
            keep = [n for n in index if n not in doomed and (loc := view.where(n)) is not None and loc.pack == pack]
            key = f"{shard}/{pack}"
            if keep:
                try:
                    body = self._body(key)[0]
                except NotFound:
                    body = b""  # gone already (another process's delete): its live members are elsewhere
                except (FormatError, IntegrityError) as e:  # nothing in it can be kept: `drop_damaged` or check
                    log.warning("%s; its other members are lost too", e)
                    self._forget_pack(key)
                    view.drop_pack(pack)
                    continue
                if body:
                    self._write_pack(shard, [(int(n, 16), body[index[n].offset:index[n].offset + index[n].length])
                                             for n in keep], durable=True)
            self._delete_file(key)
            self._forget_pack(key)
            view.drop_pack(pack)
        for name in doomed:
            if name in view.plain or name not in view.members:
                if self._delete_file(f"{shard}/{name}"):
                    found.add(f"{shard}/{name}")
                view.plain.pop(name, None)
        return found

    def drop_damaged(self, shards: set[str]) -> int:
        """Delete the packs in `shards` whose index cannot be read; their number. For recovery after a dead
        writer: a power cut between a barrier's pack rename and its fsync can leave one torn (its members
        were never listed), and a pack damaged beyond repair otherwise has no member left to read."""
        dropped = 0
        for shard in sorted(shards):
            with self._lock:
                view, damaged = self._load(shard)
                self._views[shard] = view
                for name in damaged:
                    log.warning("%s: pack unreadable, removed", self.label(f"{shard}/{name}"))
                    dropped += self._delete_file(f"{shard}/{name}")
                    self._forget_pack(f"{shard}/{name}")
        return dropped

    def _delete_file(self, key: str) -> bool:
        try:
            self.discset.delete(self.path(key))
        except NotFound:
            return False
        return True

    def _forget_pack(self, pack: str) -> None:
        self._indexes.pop(pack, None)
        self._bodies.pop(pack, None)
        self._verified.pop(pack, None)

    # ------------------------------------------------------------ ObjectStore: reading
    def get(self, key: str) -> BinaryIO:
        with self._lock:
            held = self._held.get(key)
        if held is not None:
            return io.BytesIO(checked(held, self.label(key)))
        shard = _shard(key)
        if shard is None:
            if key.endswith("/info"):  # a session starts here: another process may have written the account
                self._drop_views(key.rpartition("/")[0] + "/")
            return self.discset.open(self.path(key), settle=False)  # type: ignore[return-value]
        for _ in range(3):
            with self._lock:
                view, fresh = self._view(shard[0])
                standalone = shard[1] in view.plain
                loc = None if standalone else view.where(shard[1])
            data = self._member(shard[0], shard[1], loc)
            if data is not None:
                return data
            if standalone:
                try:
                    return self.discset.open(self.path(key), settle=False)  # type: ignore[return-value]
                except NotFound:
                    pass
            if fresh and loc is None and not standalone:
                break  # a view just loaded has it nowhere
            # kept from before another process's change, or its pack went since (its live members were written
            # elsewhere first): load it again
            self._drop_views(shard[0] + "/")
        raise NotFound(self.label(key))

    def exists(self, key: str) -> bool:
        shard = _shard(key)
        if shard is None:
            return self.discset.exists(self.path(key))
        with self._lock:
            if key in self._held:
                return True
            view, fresh = self._view(shard[0])
            if shard[1] not in view.plain and view.where(shard[1]) is not None:
                return True
        if self.discset.exists(self.path(key)):  # (settles a dead writer's temps of the name)
            self.landed(key)
            return True
        if not fresh:
            self._drop_views(shard[0] + "/")
            with self._lock:
                return self._view(shard[0])[0].where(shard[1]) is not None
        return False

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix/`: standalone files, members of packs not shadowed (a damaged pack: the
        pack itself, for `check` to report), and those held."""
        stack = [check_key(prefix)]
        while stack:
            here = stack.pop()
            path = self.path(here)
            with self._lock:
                view, damaged = self._load(here)
                if view.packs or here in self._views:
                    self._views[here] = view
                held = [k for k in self._held if k.rpartition("/")[0] == here]
            names = set(view.plain) | set(view.members) | set(damaged)
            names |= {k.rpartition("/")[2] for k in held}
            for name in sorted(names):
                yield f"{here}/{name}"
            subdirs = set(self.discset.listdirs(path))
            with self._lock:  # held objects may be in a directory not yet on disc
                subdirs |= {k[len(here) + 1:].partition("/")[0] for k in self._held if k.startswith(here + "/")
                            and "/" in k[len(here) + 1:]}
            stack.extend(f"{here}/{sub}" for sub in sorted(subdirs))

    def names(self, prefix: str) -> set[str]:
        """The names directly under `prefix/` in use: committed, held, packed, or a dead writer's temps (to settle)."""
        found = {n for n in self.discset.names(self.path(prefix)) if not is_pack_name(n)}
        with self._lock:
            view, _ = self._load(prefix)
            self._views[prefix] = view
            found |= set(view.members)
            found |= {k.rpartition("/")[2] for k in self._held if k.rpartition("/")[0] == prefix}
        return found

    def usage_blocks(self, key: str) -> int:
        """4 KiB blocks of the RAID file; a member counts as if it were one (conservative: it takes less)."""
        shard = _shard(key)
        if shard is not None:
            with self._lock:
                held = self._held.get(key)
                if held is not None:
                    return self.blocks_for_length(len(held) - TRAILER.size)
                view, _ = self._view(shard[0])
                loc = view.where(shard[1])
            if loc is not None:
                return self.blocks_for_length(loc.entry.length - TRAILER.size)
        return self.discset.usage_blocks(self.path(key)) * self.discset.block_size // BLOCK_SIZE

    def blocks_for_length(self, length: int) -> int:
        return self.discset.blocks_for_length(length) * self.discset.block_size // BLOCK_SIZE

    def verify(self, key: str, repair: bool) -> Verified:
        shard = _shard(key)
        if shard is not None:
            with self._lock:
                held = self._held.get(key)
                view, _ = self._view(shard[0])
                loc = view.where(shard[1])
            if held is not None:
                return Verified(True, True, False, f"{self.label(key)}: held for its sync")
            if loc is not None:
                return self._verify_member(shard[0], shard[1], loc.pack, repair)
        return self._verify_file(key, repair)

    def _verify_member(self, shard: str, name: str, pack: str, repair: bool) -> Verified:
        """The pack's RAID file verified, then the member's SHA-256. A pack found good is not verified again
        for its next members (`check` asks once per member) while its stripes are unchanged (same inode,
        mtime and size) and for VERIFIED_FOR seconds at most."""
        key = f"{shard}/{pack}"
        member = self.label(f"{shard}/{name}")
        stamp = self.discset.stamp(self.path(key))
        with self._lock:
            seen = self._verified.get(key)
        if seen is not None and seen[1] == stamp and time.monotonic() - seen[0] <= VERIFIED_FOR:
            v = Verified(True, True, False, f"{self.label(key)}: verified with an earlier member")
        else:
            try:
                v = self._verify_file(key, repair)
            except NotFound:  # deleted since: its live members are in another pack now
                self._drop_views(shard + "/")
                return self.verify(f"{shard}/{name}", repair)
            if v.ok or v.repaired:
                with self._lock:
                    self._verified[key] = (time.monotonic(), self.discset.stamp(self.path(key)))
                    while len(self._verified) > VIEWS:
                        self._verified.popitem(last=False)
        if not v.readable:
            return v._replace(detail=f"{member}: in {pack}: {v.detail}")
        try:
            with self._lock:
                loc = self._view(shard)[0].where(name)
            data = self._member(shard, name, loc)
        except (FormatError, IntegrityError) as e:
            return Verified(False, False, False, str(e))
        if data is None:
            return Verified(False, False, False, f"{member}: missing from {pack}")
        return v._replace(detail=f"{member}: SHA-256 ok in {pack}; {v.detail}")

    def _verify_file(self, key: str, repair: bool) -> Verified:
        path = self.path(key)
        report = self.discset.check(path)
        if report.ok or not repair or not report.readable:
            return Verified(report.ok, report.readable, False, str(report))
        try:
            report = self.discset.repair(path)
        except (InUse, NotFound, IntegrityError) as e:
            return Verified(False, report.readable, False, f"{report}; not repaired: {e}")
        with self._lock:
            self._bodies.pop(key, None)
        return Verified(report.ok, report.readable, report.repaired, str(report))
