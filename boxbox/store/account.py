"""Accounts on disc sets or S3 stores: the store as a whole, and one opened account.

Objects are addressed by 64-bit id under the account, sharded so that no directory holds
more than 256 objects: `0000002a/o/<id >> 16 hex>/<(id >> 8) & 0xff hex>/<id as 16 hex>`.
One writer per account at a time; read-only sessions need no lock. The locks are an
interface (`boxbox/store/locks.py`): on a disc set an flock on a local lock file (released
by the kernel when a client's process or connection dies); on an S3 store a lease object
in the bucket (`boxbox/store/lease.py`), so several servers can share it.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, NamedTuple

from boxbox.config import Config
from boxbox.errors import (
    BoxboxError, ConfigError, FormatError, InUse, IntegrityError, LimitExceeded, NotFound, PreconditionFailed,
    StorageError, UsageError, storage_error,
)
from boxbox.objects.directory import Directory
from boxbox.store.accountdb import AccountDatabase, BucketAccountDatabase, StoreDatabase
from boxbox.store.backend import ObjectStore, PutStream
from boxbox.store.raidstore import RaidObjectStore
from boxbox.store.info import AccountInfo
from boxbox.store.locks import AccountLocks, GuardedStore, LocalLocks, Lock

if TYPE_CHECKING:
    from boxbox.raidfile import DiscSet
    from boxbox.store.s3backend import S3ObjectStore, S3Store

log = logging.getLogger(__name__)

ROOT_DIRECTORY_ID = 1
MAX_OBJECT_ID = (1 << 64) - 1
MAX_ACCOUNT = 0xFFFFFFFF
#: How long a client's login waits for housekeeping or check to notice its request and let go.
YIELD_WAIT = 10.0
#: Read-ahead (S3 stores, read-only sessions): a read at most this many ids past the last one
#: counts as reading forward, and then the next READ_AHEAD_IDS ids are fetched in the background.
READ_AHEAD_GAP = 4
READ_AHEAD_IDS = 24


def account_prefix(account: int) -> str:
    return f"{account:08x}"


def object_key(account: int, object_id: int) -> str:
    return f"{account:08x}/o/{object_id >> 16:x}/{(object_id >> 8) & 0xFF:02x}/{object_id:016x}"


def delete_all(backend: ObjectStore, keys: list[str]) -> None:
    """Delete those of `keys` that exist: in one call where the backend has `delete_all`, else one by one."""
    together = getattr(backend, "delete_all", None)
    if together is not None:
        together(keys)
        return
    for key in keys:
        try:
            backend.delete(key)
        except NotFound:
            pass


def info_key(account: int) -> str:
    return f"{account:08x}/info"


class S3Parts(NamedTuple):
    """What the store keeps per `[s3 NAME]`: the objects, the account locks, the account list."""

    backend: "S3ObjectStore"
    locks: AccountLocks
    accounts: BucketAccountDatabase


def open_s3(spec: "S3Store") -> S3Parts:
    """Connect one configured S3 store; reads its account list (one request)."""
    from boxbox.s3.client import S3Client
    from boxbox.store.lease import LeaseLocks
    from boxbox.store.s3backend import S3ObjectStore

    client = S3Client(spec.settings)
    backend = S3ObjectStore(client, spec.prefix, spec.name)
    return S3Parts(backend, LeaseLocks(lambda: client, backend.prefix, spec.lease),
                   BucketAccountDatabase(client, backend.prefix + "accounts", spec.name))


class Store:
    """The account database plus the disc sets and S3 stores it points into."""

    def __init__(self, database: AccountDatabase, discsets: dict[str, "DiscSet"],
                 s3: dict[str, S3Parts] | None = None) -> None:
        s3 = s3 or {}
        self.database = StoreDatabase(database, {name: p.accounts for name, p in s3.items()})
        self.discsets = discsets
        self.lock_dir = database.path.parent / (database.path.name + ".locks")
        self.local_locks = LocalLocks(self.lock_dir)
        self.backends: dict[str, ObjectStore] = {name: RaidObjectStore(d) for name, d in discsets.items()}
        self._locks: dict[str, AccountLocks] = {}
        self.s3 = s3
        for name, parts in s3.items():
            if name in self.backends:
                raise ConfigError(f"[s3 {name}] has the name of a [discset {name}]: names must differ")
            self.backends[name] = parts.backend
            self._locks[name] = parts.locks

    @classmethod
    def from_config(cls, cfg: Config) -> "Store":
        from boxbox.raidfile import DiscSet
        from boxbox.store.s3backend import S3Store

        discsets = {name: DiscSet.from_config(name, values, str(cfg.path))
                    for name, values in cfg.groups.get("discset", {}).items()}
        s3 = {name: open_s3(S3Store.from_config(name, values, str(cfg.path)))
              for name, values in cfg.groups.get("s3", {}).items()}
        if not discsets and not s3:
            raise ConfigError(f"{cfg.path}: no [discset NAME] or [s3 NAME] section",
                              hint="add [discset 0] with directories = ..., or an [s3 NAME] section")
        return cls(AccountDatabase(cfg["server"]["account_database"]), discsets, s3)

    # ------------------------------------------------------------ accounts
    def backend(self, account: int) -> ObjectStore:
        """The account's objects; on S3, while this process holds its write lease, behind the lease's guard."""
        name = self.database.discset_of(account)
        try:
            backend = self.backends[name]
        except KeyError:
            raise ConfigError(f"account {account:08x} lives on disc set {name!r}, which the config does not "
                              f"define (known: {', '.join(sorted(self.backends))})") from None
        lease = self._locks.get(name, self.local_locks).held_write_lease(account)
        return backend if lease is None else GuardedStore(backend, lease)

    def locks(self, account: int) -> AccountLocks:
        """The flock files for an account on a disc set, the bucket's leases for one on an S3 store."""
        return self._locks.get(self.database.discset_of(account), self.local_locks)

    def read_info(self, account: int) -> AccountInfo:
        backend = self.backend(account)
        try:
            with backend.get(info_key(account)) as f:
                data = f.read()
        except NotFound:
            raise NotFound(f"info file of account {account:08x}") from None
        return AccountInfo.decode(data, f"account {account:08x} info")

    def write_info(self, info: AccountInfo) -> None:
        put = self.backend(info.account).put(info_key(info.account))
        try:
            put.write(info.encode())
        except BaseException:
            put.abort()
            raise
        put.commit()

    def conditional_info(self, account: int) -> bool:
        """True where the info file is changed by compare-and-swap (S3: If-Match), not under the info lock."""
        return hasattr(self.backend(account), "put_if")

    def read_info_tagged(self, account: int) -> tuple[AccountInfo, str]:
        """The info file and the tag a conditional write of it must name (S3 stores only)."""
        try:
            data, etag = self.backend(account).read_tagged(info_key(account))  # type: ignore[attr-defined]
        except NotFound:
            raise NotFound(f"info file of account {account:08x}") from None
        return AccountInfo.decode(data, f"account {account:08x} info"), etag

    def write_info_if(self, info: AccountInfo, etag: str | None) -> str:
        """Write the info file only if it is still the version `etag` names (None: any); its new tag.
        PreconditionFailed if someone else wrote it meanwhile."""
        return self.backend(info.account).put_if(info_key(info.account), info.encode(), etag)  # type: ignore[attr-defined]

    def _update_info(self, account: int, changes: dict[str, Any]) -> tuple[AccountInfo, str | None]:
        """`update_info`, also returning the new tag on an S3 store (so a session's first commit needs no read)."""
        with self.info_lock(account):
            if not self.conditional_info(account):
                info = self.read_info(account)._replace(**changes)
                self.write_info(info)
                return info, None
            while True:  # beside a session's conditional commits: retried until nobody wrote in between
                info, etag = self.read_info_tagged(account)
                info = info._replace(**changes)
                try:
                    return info, self.write_info_if(info, etag)
                except PreconditionFailed:
                    continue

    def create_account(self, account: int, soft_limit: int, hard_limit: int, discset: str,
                       name: str = "") -> AccountInfo:
        """Register ACCOUNT on DISCSET (a disc set or S3 store) with limits in blocks and an empty root directory."""
        _check_limits(soft_limit, hard_limit)
        if not 0 < account <= MAX_ACCOUNT:
            raise UsageError(f"account number must be 1..ffffffff, got {account:x}")
        if discset not in self.backends:
            raise UsageError(f"no disc set {discset!r} in the config (known: {', '.join(sorted(self.backends))})")
        backend = self.backends[discset]
        if discset in self.s3:
            return self._create_on_s3(account, soft_limit, hard_limit, discset, name, backend)
        with self.database.local.editing() as accounts:
            if account in accounts or account in self.database:
                raise UsageError(f"account {account:08x} already exists")
            if backend.exists(info_key(account)):
                raise UsageError(f"account {account:08x} has leftover data on disc set {discset!r}",
                                 hint="remove it or choose another account number")
            info = _write_new_account(backend, account, soft_limit, hard_limit, name)
            accounts[account] = discset
        return info

    def _create_on_s3(self, account: int, soft_limit: int, hard_limit: int, discset: str, name: str,
                      backend: ObjectStore) -> AccountInfo:
        """On a bucket shared by servers the info object is created with If-None-Match: whoever
        creates it first owns the number; only then is the account listed."""
        self.database.reload()
        if account in self.database:
            raise UsageError(f"account {account:08x} already exists")
        try:
            if backend.exists(info_key(account)):  # (before the root is written over)
                raise StorageError("info exists")
            info = _write_new_account(backend, account, soft_limit, hard_limit, name)
        except StorageError:
            raise UsageError(f"account {account:08x} has leftover data on S3 store {discset!r}",
                             hint="remove it or choose another account number") from None

        def add(accounts: dict[int, str]) -> None:
            if account in accounts:
                raise UsageError(f"account {account:08x} already exists")
            accounts[account] = discset

        self.s3[discset].accounts.update(add)
        return info

    def delete_account(self, account: int) -> int:
        """Remove ACCOUNT and all its objects; returns the number of objects removed."""
        discset = self.database.discset_of(account)
        with self.write_lock(account):
            backend = self.backend(account)
            keys = list(backend.list(account_prefix(account)))
            delete_all(backend, keys)
            removed = len(keys)
            if discset in self.s3:
                self.s3[discset].accounts.update(lambda accounts: accounts.pop(account, None) and None)
            else:
                with self.database.local.editing() as accounts:
                    accounts.pop(account, None)
        return removed

    def update_info(self, account: int, **changes: Any) -> AccountInfo:
        """Change fields of the info file (limits, name, enabled) safely beside a running server."""
        if "soft_limit" in changes or "hard_limit" in changes:
            info = self.read_info(account)
            _check_limits(changes.get("soft_limit", info.soft_limit), changes.get("hard_limit", info.hard_limit))
        return self._update_info(account, changes)[0]

    # ------------------------------------------------------------ locking
    def write_lock(self, account: int) -> Lock:
        """The one-writer lock: InUse if another session holds it."""
        return self.locks(account).write_lock(account)

    def info_lock(self, account: int) -> Lock:
        """Held briefly around read-modify-write of the info file (server session or admin)."""
        return self.locks(account).info_lock(account)

    def housekeeping_lock(self, account: int) -> Lock:
        """Held by housekeeping and check beside the write lock, so a client can tell who has the account."""
        return self.locks(account).housekeeping_lock(account)

    def housekeeping_running(self, account: int) -> bool:
        try:
            self.housekeeping_lock(account).acquire().release()
        except InUse:
            return True
        return False

    def yield_requested(self, account: int) -> bool:
        """A client is waiting for the account (a request younger than YIELD_WAIT x 3)."""
        return self.locks(account).yield_requested(account, 3 * YIELD_WAIT)

    def take_from_housekeeping(self, account: int) -> Lock:
        """The housekeeping lock for an admin job (check): a running pass is asked to stop and awaited."""
        locks = self.locks(account)
        lock = locks.housekeeping_lock(account)
        deadline = time.monotonic() + YIELD_WAIT
        asked = False
        try:
            while True:
                try:
                    return lock.acquire()
                except InUse:
                    if time.monotonic() > deadline:
                        raise InUse(f"account {account:08x} is being housekept or checked and did not let go "
                                    f"within {YIELD_WAIT:.0f} s", hint="try again in a moment") from None
                    if not asked:
                        locks.request_yield(account)
                        asked = True
                    time.sleep(locks.poll)
        finally:
            if asked:
                locks.clear_yield(account)

    def _acquire_writer(self, account: int) -> Lock:
        """The write lock; if housekeeping holds it, ask it to stop and wait up to YIELD_WAIT."""
        locks = self.locks(account)
        try:
            return locks.write_lock(account).acquire()
        except InUse:
            if not self.housekeeping_running(account):
                # Housekeeping may have let go between our two tries (it releases the write lock
                # first): one more try tells that apart from another client holding it.
                return locks.write_lock(account).acquire()
        locks.request_yield(account)
        deadline = time.monotonic() + YIELD_WAIT
        try:
            while True:
                try:
                    return locks.write_lock(account).acquire()
                except InUse:
                    if time.monotonic() > deadline:
                        raise InUse(f"account {account:08x} is being housekept or checked and did not yield "
                                    f"within {YIELD_WAIT:.0f} s", hint="try again in a moment") from None
                    time.sleep(locks.poll)
        finally:
            locks.clear_yield(account)

    def open(self, account: int, write: bool) -> "Account":
        """Open ACCOUNT for a session; a writer takes the account's lock first (housekeeping yields to it)."""
        lock = self._acquire_writer(account) if write else None
        try:
            backend = self.backend(account)  # (guarded on S3 from now on: refuses writes once the lease may lapse)
            if lock is not None and lock.expires:
                backend.forget(account_prefix(account))  # type: ignore[attr-defined]  # another server may have written
            info = self.read_info(account)
            if write:
                if info.writer_open:  # the last writer died mid-batch: settle what it left first
                    from boxbox.store.housekeep import recover

                    recover(self, account, info)
                info, etag = self._update_info(account, {"writer_open": True})
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        acct = Account(self, backend, info, lock)
        if write:
            acct.info_etag = etag
        else:
            acct.read_ahead = True
        return acct


def _write_new_account(backend: ObjectStore, account: int, soft_limit: int, hard_limit: int,
                       name: str) -> AccountInfo:
    """The empty root directory and the info file; the info is created exclusively where the backend can."""
    root = Directory(ROOT_DIRECTORY_ID, 0).serialize()
    put = backend.put(object_key(account, ROOT_DIRECTORY_ID))
    put.write(root)
    put.commit()
    blocks = backend.usage_blocks(object_key(account, ROOT_DIRECTORY_ID))
    info = AccountInfo(account, True, soft_limit, hard_limit, blocks_used=blocks, blocks_directories=blocks,
                       count_directories=1, last_object_id=ROOT_DIRECTORY_ID, name=name)
    put = backend.put(info_key(account), exclusive=True)
    put.write(info.encode())
    put.commit()
    return info


def _check_limits(soft: int, hard: int) -> None:
    if soft < 0 or hard < 0:
        raise UsageError(f"limits must not be negative, got soft {soft} and hard {hard} blocks")
    if soft > hard:
        raise UsageError(f"soft limit ({soft} blocks) is above the hard limit ({hard} blocks)")


class LimitedWriter:
    """Counts bytes on their way into a new object and stops at the account's remaining room."""

    CHECK_EVERY = 1 << 20

    def __init__(self, put: PutStream, room: int | None, blocks_for: Callable[[int], int],
                 message: Callable[[int], str]) -> None:
        self._put = put
        self._room = room
        self._blocks_for = blocks_for
        self._next_check = 0
        self._message = message
        self.size = 0
        self.blocks = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.size += len(data)
        # The exact check happens after commit; this early one only stops a doomed upload
        # soon, so it runs once per CHECK_EVERY bytes (per write it cost a third of the time).
        if self._room is not None and self.size >= self._next_check:
            self._next_check = self.size + self.CHECK_EVERY
            if self._blocks_for(self.size) > self._room:
                raise LimitExceeded(self._message(self._blocks_for(self.size)))
        self._put.write(data)
        return len(data)


@contextmanager
def _aborting(put: PutStream, what: str) -> Iterator[None]:
    """Abort `put` on any exception inside the block; an OSError becomes a storage error naming `what`."""
    try:
        yield
    except OSError as e:
        put.abort()
        raise storage_error(e, what) from e
    except BaseException:
        put.abort()
        raise

class Account:
    """One account opened by a session: its objects, its info, its usage arithmetic."""

    def __init__(self, store: Store, backend: ObjectStore, info: AccountInfo, lock: Lock | None) -> None:
        self.store = store
        self.backend = backend
        self.info = info
        self._lock = lock
        self._info_dirty = False
        #: on an S3 store, the tag of the info file as this session last wrote it (None: read it first)
        self.info_etag: str | None = None
        #: read-only sessions only (nothing rewrites an object under a read fetched ahead)
        self.read_ahead = False
        self._last_read = 0
        self._ahead_upto = 0
        self._owed: list[PutStream] = []  # new objects committed without their fsyncs (see sync_objects)
        self._barrier_error: StorageError | None = None  # a failed barrier fails every later one
        self._staged: list[PutStream] = []  # rewrites of existing objects awaiting publish_rewrites
        self._shards: dict[str, set[str]] = {}  # names found in each shard directory a new id went to

    @property
    def number(self) -> int:
        return self.info.account

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def key(self, object_id: int) -> str:
        return object_key(self.info.account, object_id)

    # ------------------------------------------------------------ objects
    def allocate_id(self) -> int:
        """The next unused id. An existing object is skipped, never overwritten, whatever the info says."""
        new = self.info.last_object_id + 1
        # On S3 the new object is created with If-None-Match instead: no HEAD per upload.
        while new <= MAX_OBJECT_ID and not self.backend.exclusive_create and self._taken(new):
            log.warning("account %08x: object %#x exists beyond the last id; skipped", self.number, new)
            new += 1
        if new > MAX_OBJECT_ID:
            raise LimitExceeded(f"account {self.number:08x} has used every object id")
        self.change(last_object_id=new)
        return new

    def _taken(self, object_id: int) -> bool:
        """Whether a new id's name is in use. Where the backend can list a shard directory's names
        (committed or a dead writer's temps), it is listed once per session: the writer lock keeps
        everyone else out, and this session adds only names it allocated, past every id it checked.
        (An `exists` per id cost ~6 syscalls, 6% of a first backup's session thread.)"""
        names = getattr(self.backend, "names", None)
        key = self.key(object_id)
        if names is None:
            return self.backend.exists(key)
        shard, name = key.rsplit("/", 1)
        found = self._shards.get(shard)
        if found is None:
            found = self._shards[shard] = names(shard)
        return name in found and self.backend.exists(key)  # (exists settles a dead writer's temps)

    def exists(self, object_id: int) -> bool:
        return 0 < object_id <= MAX_OBJECT_ID and self.backend.exists(self.key(object_id))

    def open_object(self, object_id: int) -> BinaryIO:
        """A reader for an object of this account; ids of other accounts simply do not exist."""
        if not 0 < object_id <= MAX_OBJECT_ID:
            raise NotFound(f"object {object_id:#x}")
        if self.read_ahead:
            self._read_ahead(object_id)
        try:
            return self.backend.get(self.key(object_id))
        except NotFound:
            raise NotFound(f"object {object_id:#x}") from None

    def _read_ahead(self, object_id: int) -> None:
        """Reading forward through the ids (a restore follows upload order): have the next ones fetched."""
        prefetch = getattr(self.backend, "prefetch", None)
        forward = 0 < object_id - self._last_read <= READ_AHEAD_GAP
        self._last_read = object_id
        if prefetch is None or not forward:
            return
        start = max(self._ahead_upto, object_id) + 1
        self._ahead_upto = object_id + READ_AHEAD_IDS
        if start <= self._ahead_upto:
            prefetch([self.key(i) for i in range(start, min(self._ahead_upto, MAX_OBJECT_ID) + 1)])

    def read_object(self, object_id: int) -> bytes:
        with self.open_object(object_id) as f:
            return f.read()

    def usage_of(self, object_id: int) -> int:
        return self.backend.usage_blocks(self.key(object_id))

    @contextmanager
    def new_object(self, object_id: int, check_limit: bool = True, durable: bool = True) -> Iterator["LimitedWriter"]:
        """Write an object inside the block; an exception or the hard limit leaves nothing behind.

        After the block, the writer's `blocks` holds the object's usage (RAID overhead included).
        `durable=False` (a new id only): durable at the next `sync_objects`, which must come
        before anything durable lists it.
        """
        what = f"writing object {object_id:#x}"
        try:
            # durable=False is for new ids only: where the backend can, they are created exclusively
            put = self.backend.put(self.key(object_id), exclusive=not durable)
        except OSError as e:
            raise storage_error(e, what) from e
        room = self.info.hard_limit - self.info.blocks_used if check_limit else None
        writer = LimitedWriter(put, room, self.backend.blocks_for_length, self._limit_message)
        with _aborting(put, what):
            yield writer
        durable = durable or not hasattr(self.backend, "sync")  # a backend without `sync` commits durably
        try:
            put.commit() if durable else put.commit(durable=False)
        except OSError as e:
            put.abort()
            raise storage_error(e, what) from e
        if not durable:
            self._owed.append(put)
        writer.blocks = self.backend.blocks_for_length(writer.size)  # what usage_of reads back, without opening it
        if room is not None and writer.blocks > room:
            self.backend.delete(self.key(object_id))
            raise LimitExceeded(self._limit_message(writer.blocks))

    def put_object(self, object_id: int, data: bytes, check_limit: bool = True, durable: bool = True) -> int:
        """Write a small object whole; returns its blocks."""
        with self.new_object(object_id, check_limit, durable) as w:
            w.write(data)
        return w.blocks

    def sync_objects(self) -> None:
        """The durability barrier: every object written with `durable=False` is durable on return."""
        if self._owed:
            owed, self._owed = self._owed, []
            try:
                self.backend.sync(owed)
            except OSError as e:
                self._barrier_error = storage_error(e, f"making {len(owed)} new objects durable")
            except StorageError as e:  # an object store's own failure (S3: a PUT sent behind)
                self._barrier_error = e
        if self._barrier_error is not None:  # nothing may list those objects now, in this session
            raise self._barrier_error

    def _settle_failed_barrier(self) -> None:
        """Remove what a failed barrier left (new objects nothing lists, no reply named), still
        holding the write lock, so `check` finds the account clean; if the store fails again the
        writer flag stays set and the next writer recovers instead."""
        from boxbox.store.housekeep import recover

        try:
            recover(self.store, self.number, self.store.read_info(self.number))
        except (BoxboxError, OSError) as e:
            log.warning("account %08x: after a failed sync, cleaning up failed too (%s); the next writer "
                        "will", self.number, e)

    def replace_object(self, object_id: int, data: bytes) -> int:
        """Rewrite a small object (a directory) whole; returns the change in blocks."""
        before = self.usage_of(object_id)
        try:
            put = self.backend.put(self.key(object_id))
            try:
                put.write(data)
                put.commit()
            except BaseException:
                put.abort()
                raise
        except OSError as e:
            raise storage_error(e, f"writing object {object_id:#x}") from e
        return self.usage_of(object_id) - before

    @contextmanager
    def rewrite_object(self, object_id: int) -> Iterator["LimitedWriter"]:
        """Write a new version of an object inside the block, published by the next `publish_rewrites`.

        Until then readers see the old version. One rewrite per object per publish. Not limited
        (directories and reverse patches); after the block the writer's `blocks` holds the new
        version's usage.
        """
        what = f"writing object {object_id:#x}"
        try:
            put = self.backend.put(self.key(object_id))
        except OSError as e:
            raise storage_error(e, what) from e
        writer = LimitedWriter(put, None, self.backend.blocks_for_length, self._limit_message)
        with _aborting(put, what):
            yield writer
        writer.blocks = self.backend.blocks_for_length(writer.size)
        self._staged.append(put)

    def publish_rewrites(self, barrier: bool = False) -> None:
        """Commit every staged rewrite durably, together: on a RAID store all temps are fsynced, then
        renamed, then each directory fsynced once; each object is its old or its new version after a
        power cut at any point (docs/STORE.md "Durability"). Durable on return.

        With `barrier`, the barrier (`sync_objects`) comes first; where the backend can, in the same
        round of fsyncs as the rewrites' temps, and no rewrite is renamed before it completed. Any
        failure then fails the barrier too (the objects may be lost, so nothing may list them).
        """
        staged, self._staged = self._staged, []
        together = getattr(self.backend, "sync_and_commit", None)
        if barrier and together is not None and self._owed and staged and self._barrier_error is None:
            owed, self._owed = self._owed, []
            try:
                together(owed, staged)
            except OSError as e:
                self._barrier_error = storage_error(e, f"making {len(owed)} new objects and {len(staged)} "
                                                       "changed objects durable")
                raise self._barrier_error from e
            return
        if barrier:
            try:
                self.sync_objects()
            except BaseException:
                for put in staged:
                    put.abort()
                raise
        if not staged:
            return
        commit_all = getattr(self.backend, "commit_all", None)
        try:
            if commit_all is not None:
                commit_all(staged)
            else:
                for i, put in enumerate(staged):
                    try:
                        put.commit()
                    except BaseException:
                        for rest in staged[i:]:
                            rest.abort()
                        raise
        except OSError as e:
            raise storage_error(e, f"writing {len(staged)} changed objects") from e

    def _drop_staged(self) -> None:
        staged, self._staged = self._staged, []
        for put in staged:
            put.abort()

    def delete_object(self, object_id: int) -> int:
        """Remove an object; returns the blocks freed."""
        blocks = self.usage_of(object_id)
        self.backend.delete(self.key(object_id))
        return blocks

    def delete_objects(self, object_ids: list[int]) -> None:
        """Remove those of `object_ids` that exist, together where the backend can (a RAID store rewrites
        each pack holding some of them once, not once per object)."""
        delete_all(self.backend, [self.key(i) for i in object_ids])

    def _limit_message(self, blocks: int) -> str:
        i = self.info
        return (f"account {i.account:08x}: storing {blocks} more blocks would exceed the hard limit "
                f"({i.blocks_used} of {i.hard_limit} blocks used)")

    # ------------------------------------------------------------ info
    def change(self, **fields: int) -> None:
        """Update info fields in memory; written by `commit()`."""
        self.info = self.info._replace(**fields)
        self._info_dirty = True

    def add(self, **deltas: int) -> None:
        """Add to usage counters (blocks_*, count_*) in memory; written by `commit()`."""
        self.change(**{name: max(0, getattr(self.info, name) + delta) for name, delta in deltas.items()})

    def commit(self) -> None:
        """Write the info file if it changed, preserving admin edits made meanwhile (limits, name, enabled)."""
        if not self._info_dirty:
            return
        if self._lock is not None:
            self._lock.check()  # a writer whose lease lapsed must not write the info either
        if self.store.conditional_info(self.number):
            self._commit_conditional()
            return
        with self.store.info_lock(self.number):
            try:
                self._keep_admin_edits(self.store.read_info(self.number))
            except (NotFound, FormatError, IntegrityError) as e:
                log.warning("account %08x: rewriting unreadable info file: %s", self.number, e)
            try:
                self.store.write_info(self.info)
            except OSError as e:
                raise storage_error(e, f"writing the info file of account {self.number:08x}") from e
        self._info_dirty = False

    def _keep_admin_edits(self, on_disc: AccountInfo) -> None:
        self.info = self.info._replace(soft_limit=on_disc.soft_limit, hard_limit=on_disc.hard_limit,
                                       enabled=on_disc.enabled, name=on_disc.name,
                                       keep_versions_days=on_disc.keep_versions_days,
                                       keep_min_versions=on_disc.keep_min_versions)

    def _commit_conditional(self) -> None:
        """S3: one If-Match PUT while nobody else wrote the info; after an admin edit, re-read, keep it, retry.

        (The info lease would cost three more requests a commit: it was most of a backup's requests.)"""
        for _ in range(50):
            if self._lock is not None:
                self._lock.check()  # a 412 may mean another server has the account now: never write over it
            if self.info_etag is None:
                try:
                    on_disc, self.info_etag = self.store.read_info_tagged(self.number)
                    self._keep_admin_edits(on_disc)
                except (NotFound, FormatError, IntegrityError) as e:
                    log.warning("account %08x: rewriting unreadable info file: %s", self.number, e)
            try:
                self.info_etag = self.store.write_info_if(self.info, self.info_etag)
            except PreconditionFailed:
                self.info_etag = None
                continue
            self._info_dirty = False
            return
        raise StorageError(f"account {self.number:08x}: the info file kept changing under 50 tries")

    def close(self) -> None:
        self._drop_staged()  # a sync that failed part way: the old versions stay
        try:
            if self.writable and self._barrier_error is None:
                self.change(writer_open=False)
                self.commit()
            elif self.writable:
                self._settle_failed_barrier()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

