"""Housekeeping: trim old versions and deleted files to the soft limit, keep retention, recount usage.

One pass over one account, holding its write lock (so never beside a writing client) and
its housekeeping lock (so a client that wants the account can tell who has it and ask it
to let go: `Store.yield_requested`). A pass:

1. skips the account with one read of its info file and its state object when nothing
   changed since the last complete pass: same change count (bumped by every writing
   session), same limits and retention settings, and no retained version due to expire;
2. otherwise reads every directory from the root, and picks what to delete:
   a. with `keep_versions_days`, every old or deleted version first seen longer ago than
      that, except the `keep_min_versions` newest old versions of each file;
   b. while usage is over the soft limit, candidates in Box Backup's order - the oldest
      versions of the most-versioned files first (highest count of newer versions of the
      same name), then the oldest uploads (lowest object id) - skipping retained ones;
   c. only if usage is still over the hard limit, retained ones too, same order, until under
      the soft limit: the hard limit always wins;
3. deletes them; a version in the middle of a chain is merged out first (the older patch
   is rewritten to refer past it, `versions.merge_past`), so every remaining version
   stays restorable; a whole object with a patch depending on it is merged the same way;
4. removes deleted directories that are now empty, recounts usage from the directories
   and writes corrected counts, and saves its state.

Order on disc: the patch rewrite first, then the directories without the entry, then the
object itself - a crash at any point leaves every listed version readable (at worst an
unlisted object, which `check --fix` removes or reattaches).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from boxbox import magic
from boxbox.errors import FormatError, InUse, IntegrityError, NotFound
from boxbox.objects.directory import DELETED, DIR, FILE, OLD, Directory, Entry
from boxbox.objects.layout import read_file_layout
from boxbox.store.account import ROOT_DIRECTORY_ID, Account, Store, account_prefix
from boxbox.store.info import AccountInfo
from boxbox.store.versions import merge_past

log = logging.getLogger(__name__)

# State object `<account>/housekeeping` (little-endian):
#   0   4   magic b"BXHK"
#   4   2   version (1)
#   6   2   reserved, zero
#   8   8   change count of the account at the last complete pass
#   16  8   soft limit, blocks, at that pass
#   24  8   hard limit, blocks
#   32  4   keep_versions_days
#   36  4   keep_min_versions
#   40  8   next expiry, seconds since the epoch: when a retained version becomes trimmable
#           (NEVER if none)
#   48  8   time of the pass
#   56  4   n: number of seen-times that follow
#   60  16n per old or deleted version: u64 object id, u64 time first seen old or deleted
STATE_MAGIC = magic.HOUSEKEEPING_STATE
STATE_VERSION = 1
STATE_HEAD = struct.Struct("<4sHHQQQIIQQI")
SEEN = struct.Struct("<QQ")
assert STATE_HEAD.size == 60 and SEEN.size == 16
NEVER = (1 << 64) - 1
DAY = 86400
#: Deletions between writes of the changed directories (bounds what a crash leaves unlisted).
BATCH = 500


def state_key(account: int) -> str:
    return f"{account_prefix(account)}/housekeeping"


# Journal object `<account>/journal`, present only while a pass changes the account:
#   0   4   magic b"BXHJ"
#   4   2   version (1)
#   6   2   reserved, zero
#   8   4   n
#   12  8n  object ids the pass may delete or rewrite (and their chain neighbours)
JOURNAL_MAGIC = magic.HOUSEKEEPING_JOURNAL
JOURNAL_HEAD = struct.Struct("<4sHHI")
assert JOURNAL_HEAD.size == 12


def journal_key(account: int) -> str:
    return f"{account_prefix(account)}/journal"


def write_journal(store: Store, account: int, ids: set[int]) -> None:
    put = store.backend(account).put(journal_key(account))
    try:
        put.write(JOURNAL_HEAD.pack(JOURNAL_MAGIC, 1, 0, len(ids)) + struct.pack(f"<{len(ids)}Q", *sorted(ids)))
    except BaseException:
        put.abort()
        raise
    put.commit()


def read_journal(store: Store, account: int) -> set[int] | None:
    """The ids a killed pass was changing; None if there is no (readable) journal."""
    try:
        with store.backend(account).get(journal_key(account)) as f:
            data = f.read()
    except (NotFound, IntegrityError):
        return None
    if len(data) < JOURNAL_HEAD.size:
        return None
    mg, version, _, n = JOURNAL_HEAD.unpack_from(data)
    if mg != JOURNAL_MAGIC or version != 1 or len(data) != JOURNAL_HEAD.size + 8 * n:
        return None
    return set(struct.unpack_from(f"<{n}Q", data, JOURNAL_HEAD.size))


def delete_journal(store: Store, account: int) -> None:
    try:
        store.backend(account).delete(journal_key(account))
    except NotFound:
        pass


class State(NamedTuple):
    change_count: int
    soft_limit: int
    hard_limit: int
    keep_days: int
    keep_min: int
    next_expiry: int
    when: int
    seen: dict[int, int]

    def encode(self) -> bytes:
        head = STATE_HEAD.pack(STATE_MAGIC, STATE_VERSION, 0, self.change_count, self.soft_limit, self.hard_limit,
                               self.keep_days, self.keep_min, self.next_expiry, self.when, len(self.seen))
        return head + b"".join(SEEN.pack(i, t) for i, t in sorted(self.seen.items()))

    @classmethod
    def decode(cls, data: bytes, where: str) -> "State":
        if len(data) < STATE_HEAD.size:
            raise FormatError(f"{where}: {len(data)} bytes, expected at least {STATE_HEAD.size}")
        mg, version, _, cc, soft, hard, days, keep_min, expiry, when, n = STATE_HEAD.unpack_from(data)
        if mg != STATE_MAGIC:
            raise FormatError(f"{where}: magic {mg!r}, expected {STATE_MAGIC!r}")
        if version != STATE_VERSION:
            raise FormatError(f"{where}: version {version}, expected {STATE_VERSION}")
        if len(data) != STATE_HEAD.size + n * SEEN.size:
            raise FormatError(f"{where}: {n} entries need {STATE_HEAD.size + n * SEEN.size} bytes, got {len(data)}")
        seen = dict(SEEN.iter_unpack(memoryview(data)[STATE_HEAD.size:]))
        return cls(cc, soft, hard, days, keep_min, expiry, when, seen)


def read_state(store: Store, account: int) -> State | None:
    """The last pass's state, or None if there is none or it is unreadable (a full pass rebuilds it)."""
    try:
        with store.backend(account).get(state_key(account)) as f:
            return State.decode(f.read(), f"housekeeping state of account {account:08x}")
    except (NotFound, FormatError, IntegrityError):
        return None


def write_state(store: Store, account: int, state: State) -> None:
    put = store.backend(account).put(state_key(account))
    try:
        put.write(state.encode())
    except BaseException:
        put.abort()
        raise
    put.commit()


@dataclass
class Result:
    """What one pass did (or why it did nothing)."""

    account: int
    skipped: str = ""
    yielded: bool = False
    directories: int = 0
    removed_old: int = 0
    removed_deleted: int = 0
    blocks_freed: int = 0
    merged: int = 0
    removed_directories: int = 0
    usage_corrected: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        who = f"account {self.account:08x}"
        if self.skipped:
            return f"{who}: skipped ({self.skipped})"
        text = (f"{who}: {self.directories} directories; removed {self.removed_old} old versions and "
                f"{self.removed_deleted} deleted files ({self.blocks_freed} blocks), merged {self.merged} "
                f"patches, removed {self.removed_directories} empty deleted directories")
        if self.usage_corrected:
            text += "; usage counts corrected"
        if self.yielded:
            text += "; stopped early for a client"
        return text + f" in {self.seconds:.2f} s"


class _Pass:
    """One housekeeping pass over an account whose locks are held."""

    def __init__(self, store: Store, acct: Account, now: float, stop: threading.Event | None) -> None:
        self.store = store
        self.acct = acct
        self.now = now
        self.stop = stop
        self.dirs: dict[int, Directory] = {}
        self.dir_blocks: dict[int, int] = {}
        self.where: dict[int, int] = {}  # file object id -> directory id
        self.dirty: set[int] = set()
        self.doomed: list[int] = []
        self.result = Result(acct.number)
        self.yielding = True  # recovery runs to the end: a waiting client needs it done

    def interrupted(self) -> bool:
        if not self.yielding:
            return False
        return (self.stop is not None and self.stop.is_set()) or self.store.yield_requested(self.acct.number)

    # ------------------------------------------------------------ reading
    def scan(self) -> bool:
        """Read every directory from the root; False if a client asked for the account meanwhile."""
        stack = [ROOT_DIRECTORY_ID]
        while stack:
            dir_id = stack.pop()
            if dir_id in self.dirs:
                continue
            try:
                data = self.acct.read_object(dir_id)
                d = Directory.parse(data)
            except (NotFound, FormatError, IntegrityError) as e:
                self.result.errors.append(f"directory {dir_id:#x}: {e} (run `boxbox accounts check --fix`)")
                continue
            self.dirs[dir_id] = d
            self.dir_blocks[dir_id] = self.acct.backend.blocks_for_length(len(data))
            for e in d.entries:
                if e.flags & DIR:
                    stack.append(e.object_id)
                else:
                    self.where[e.object_id] = dir_id
            if self.interrupted():
                return False
        self.result.directories = len(self.dirs)
        return True

    def entry(self, object_id: int) -> Entry | None:
        dir_id = self.where.get(object_id)
        return self.dirs[dir_id].entry(object_id) if dir_id is not None else None

    def candidates(self) -> list[tuple[int, int, int]]:
        """(newer versions of the same name, object id, rank among its old versions) per old or deleted file."""
        out = []
        for d in self.dirs.values():
            by_name: dict[bytes, list[Entry]] = {}
            for e in d.entries:
                if e.flags & FILE:
                    by_name.setdefault(e.sealed_name, []).append(e)
            for versions in by_name.values():
                versions.sort(key=lambda e: e.object_id, reverse=True)
                old_rank = 0
                for age, e in enumerate(versions):
                    if e.flags & (OLD | DELETED):
                        out.append((age, e.object_id, old_rank))
                        old_rank += 1
        return out

    # ------------------------------------------------------------ changing
    def remove(self, object_id: int) -> None:
        """Drop one version from its directory, merging a patch that depends on it past it."""
        dir_id = self.where.pop(object_id)
        d = self.dirs[dir_id]
        e = d.entry(object_id)
        assert e is not None  # `where` lists only entries of loaded directories
        older = self.entry(e.older) if e.older else None
        newer = self.entry(e.newer) if e.newer else None
        links_on = older is not None and self._merge(older, e)
        if older is not None:
            older.newer = e.newer if links_on else 0
            self.dirty.add(self.where[older.object_id])
        if newer is not None:
            newer.older = older.object_id if older is not None and links_on else 0
            self.dirty.add(self.where[newer.object_id])
        d.entries.remove(e)
        self.dirty.add(dir_id)
        self.doomed.append(object_id)
        self.result.blocks_freed += e.size_blocks
        if e.flags & DELETED:
            self.result.removed_deleted += 1
        else:
            self.result.removed_old += 1
        if len(self.doomed) >= BATCH:
            self.flush()

    def _merge(self, older: Entry, middle: Entry) -> bool:
        """Merge `older` past `middle`; False if `older` is whole afterwards (no link onwards)."""
        acct = self.acct
        with acct.open_object(older.object_id) as of, acct.open_object(middle.object_id) as mf:
            olayout = read_file_layout(of)
            if middle.object_id not in {obj for obj, _ in olayout.refs.values()}:
                return bool(olayout.refs)
            mlayout = read_file_layout(mf)
            with acct.new_object(older.object_id, check_limit=False) as w:
                targets = merge_past(olayout, of, middle.object_id, mlayout, mf, w)
            older.size_blocks = w.blocks
            self.result.merged += 1
            return bool(targets)

    def remove_empty_deleted_directories(self) -> None:
        depth: dict[int, int] = {ROOT_DIRECTORY_ID: 0}
        order = [ROOT_DIRECTORY_ID]
        for dir_id in order:  # breadth first: parents before children
            for e in self.dirs[dir_id].entries:
                if e.flags & DIR and e.object_id in self.dirs and e.object_id not in depth:
                    depth[e.object_id] = depth[dir_id] + 1
                    order.append(e.object_id)
        for dir_id in reversed(order):  # children first, so a chain of empty directories goes at once
            d = self.dirs[dir_id]
            for e in list(d.entries):
                child = self.dirs.get(e.object_id) if e.flags & DIR else None
                if child is not None and e.flags & DELETED and not child.entries:
                    d.entries.remove(e)
                    del self.dirs[e.object_id]
                    self.dirty.discard(e.object_id)
                    self.dirty.add(dir_id)
                    self.doomed.append(e.object_id)
                    self.result.removed_directories += 1

    def flush(self) -> None:
        """Write changed directories (with their size in the parent's entry), then delete what they dropped."""
        acct = self.acct
        while self.dirty:
            dir_id = self.dirty.pop()
            d = self.dirs.get(dir_id)
            if d is None:
                continue
            acct.replace_object(dir_id, d.serialize())
            blocks = acct.backend.blocks_for_length(len(d.serialize()))
            if blocks != self.dir_blocks.get(dir_id):
                self.dir_blocks[dir_id] = blocks
                parent = self.dirs.get(d.container_id)
                entry = parent.entry(dir_id) if parent is not None else None
                if entry is not None and entry.size_blocks != blocks:
                    entry.size_blocks = blocks
                    self.dirty.add(parent.object_id)  # type: ignore[union-attr]
        acct.delete_objects(self.doomed)
        for object_id in self.doomed:
            self.dir_blocks.pop(object_id, None)
        self.doomed.clear()

    def recount(self) -> dict[str, int]:
        """Usage from the directories: entries' sizes for files, the objects' own sizes for directories."""
        c = dict(blocks_current=0, blocks_old=0, blocks_deleted=0, count_current=0, count_old=0, count_deleted=0)
        for d in self.dirs.values():
            for e in d.entries:
                if e.flags & DIR:
                    blocks = self.dir_blocks.get(e.object_id)
                    if blocks is not None and e.size_blocks != blocks:
                        e.size_blocks = blocks
                        self.dirty.add(d.object_id)
                    continue
                kind = "deleted" if e.flags & DELETED else "old" if e.flags & OLD else "current"
                c[f"blocks_{kind}"] += e.size_blocks
                c[f"count_{kind}"] += 1
        if self.dirty:
            self.flush()
        c["blocks_directories"] = sum(self.dir_blocks[i] for i in self.dirs)
        c["count_directories"] = len(self.dirs)
        c["blocks_used"] = c["blocks_current"] + c["blocks_old"] + c["blocks_deleted"] + c["blocks_directories"]
        return c


def housekeep(store: Store, account: int, *, force: bool = False, now: float | None = None,
              stop: threading.Event | None = None) -> Result:
    """One pass over ACCOUNT (see the module docstring); `force` ignores the unchanged-account shortcut.

    Never waits: if a client writes to the account, or another housekeeping or check runs
    on it, the pass is skipped and says why.
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    hk_lock = store.housekeeping_lock(account)
    try:
        hk_lock.acquire()
    except InUse:
        return Result(account, skipped="housekeeping or check already running")
    try:
        try:
            write_lock = store.write_lock(account).acquire()
        except InUse:
            return Result(account, skipped="a client is writing to it")
        try:
            if store.yield_requested(account):  # a client is waiting for the lock: let it have it
                return Result(account, skipped="a client asked for the account", yielded=True)
            result = _run(store, account, force, now, stop)
        finally:
            write_lock.release()
    finally:
        hk_lock.release()
    result.seconds = time.monotonic() - started
    return result


def _relink(p: _Pass, ids: set[int]) -> None:
    """Redo the newer/older links and sizes of these file entries (and their neighbours) from the objects."""
    around = set(ids)
    for obj in ids:
        e = p.entry(obj)
        if e is not None:
            around.update((e.newer, e.older))
    around.discard(0)
    target: dict[int, int] = {}
    for obj in around:
        e = p.entry(obj)
        if e is None:
            continue
        try:
            with p.acct.open_object(obj) as f:
                refs = {o for o, _ in read_file_layout(f).refs.values()}
        except (NotFound, FormatError, IntegrityError):
            continue  # for check to report
        target[obj] = next(iter(refs)) if len(refs) == 1 else 0
        blocks = p.acct.usage_of(obj)
        if blocks != e.size_blocks:
            e.size_blocks = blocks
            p.dirty.add(p.where[obj])
    for obj, tgt in target.items():
        e = p.entry(obj)
        newer = p.entry(tgt) if tgt else None
        want = tgt if newer is not None else 0
        if e is not None and e.newer != want:
            e.newer = want
            p.dirty.add(p.where[obj])
        if newer is not None and newer.older != obj:
            newer.older = obj
            p.dirty.add(p.where[tgt])
    for obj in target:
        e = p.entry(obj)
        if e is not None and e.older and e.older in target and target[e.older] != obj:
            e.older = 0
            p.dirty.add(p.where[obj])


#: Object ids a dead writer's last batch may have used beyond the info file's last object id: a
#: batch is at most 64 requests (wire.commands.MAX_BATCH), each allocating at most one id.
PROBE_IDS = 128


def recover(store: Store, account: int, info: AccountInfo) -> AccountInfo:
    """Settle what a writing session that died mid-batch left; called with the write lock held.

    A session writes objects, then the directories listing them, then patches, then the
    info file (session.sync). Killed in between, it leaves: objects no directory lists -
    their replies never left, so they are deleted; directories listing objects the info
    file does not count, and ids above its last object id; versions rewritten as patches
    whose entries still give their whole size, or versions linked as patches whose patch was
    never written. A housekeeping pass killed part way leaves its journal: objects it had
    unlisted but not yet deleted, patches merged past a version whose links were not yet
    redone. All are put right here from the directories and objects, so the next writer
    never reuses an id and the counts and links are exact.
    """
    acct = Account(store, store.backend(account), info, None)
    p = _Pass(store, acct, time.time(), None)
    p.yielding = False
    p.scan()
    listed = set(p.dirs) | {e.object_id for d in p.dirs.values() for e in d.entries}
    last = info.last_object_id
    highest = max([last, *listed])
    journal = read_journal(store, account) or set()
    # a lost batch's unlisted objects, or those a pass had unlisted: together (a pack is rewritten once)
    doomed = [i for i in sorted(journal | set(range(last + 1, last + PROBE_IDS + 1)))
              if i not in listed and acct.exists(i)]
    acct.delete_objects(doomed)
    removed = len(doomed)
    drop_damaged = getattr(acct.backend, "drop_damaged", None)  # a RAID store's pack torn by a power cut
    if drop_damaged is not None:
        removed += drop_damaged({acct.key(i).rpartition("/")[0] for i in range(last + 1, last + PROBE_IDS + 1)})
    touched = journal | {e.object_id for d in p.dirs.values() for e in d.entries
                         if e.flags & FILE and (e.newer > last or e.object_id > last)}
    _relink(p, touched)
    p.flush()
    counts = p.recount()
    with store.info_lock(account):
        on_disc = store.read_info(account)
        fresh = on_disc._replace(**counts, last_object_id=max(highest, on_disc.last_object_id), writer_open=False,
                                 change_count=on_disc.change_count + 1)
        store.write_info(fresh)
    delete_journal(store, account)
    log.warning("account %08x: a writing session had died; removed %d unlisted objects, usage recounted",
                account, removed)
    return fresh


def _run(store: Store, account: int, force: bool, now: float, stop: threading.Event | None) -> Result:
    info = store.read_info(account)
    if info.writer_open:  # we hold the write lock, so that writer is dead
        info = recover(store, account, info)
        force = True
    state = read_state(store, account)
    settings = (info.change_count, info.soft_limit, info.hard_limit, info.keep_versions_days, info.keep_min_versions)
    if not force and state is not None and state[:5] == settings and now < state.next_expiry:
        return Result(account, skipped="unchanged since the last pass")
    # Until the counts are written at the end, the account is as a dead writer would leave it if
    # this process were killed: the flag makes the next writer (or pass) recount first.
    store.update_info(account, writer_open=True)
    acct = Account(store, store.backend(account), info, None)
    p = _Pass(store, acct, now, stop)
    if not p.scan():
        store.update_info(account, writer_open=False)
        p.result.yielded = True
        p.result.skipped = "a client asked for the account"
        return p.result
    seen_before = state.seen if state is not None else {}
    candidates = p.candidates()
    seen = {obj: seen_before.get(obj, int(now)) for _, obj, _ in candidates}
    days, keep_min = info.keep_versions_days, info.keep_min_versions

    def retained(obj: int, rank: int) -> bool:
        return (days > 0 and now - seen[obj] < days * DAY) or rank < keep_min

    initial = p.recount()
    p.result.usage_corrected = any(getattr(info, k) != v for k, v in initial.items())
    used = initial["blocks_used"]
    order = sorted(candidates, key=lambda c: (-c[0], c[1]))
    plan: list[int] = []
    planned: set[int] = set()

    def take(obj: int) -> None:
        nonlocal used
        e = p.entry(obj)
        if e is not None:
            used -= e.size_blocks
            plan.append(obj)
        planned.add(obj)

    if days > 0:
        for _, obj, rank in order:
            if not retained(obj, rank):
                take(obj)
    for protect in (True, False):
        limit = info.soft_limit if protect else info.hard_limit
        if used <= limit:
            continue
        for _, obj, rank in order:
            if used <= info.soft_limit:
                break
            if obj not in planned and not (protect and retained(obj, rank)):
                take(obj)
    # The journal names everything this pass may change, before anything changes: a pass killed
    # part way is finished by `recover` (objects whose entries went are deleted, links redone).
    journal = set(plan) | {link for obj in plan if (e := p.entry(obj)) is not None for link in (e.newer, e.older)}
    if journal:
        write_journal(store, account, journal - {0})
    going = True
    gone: set[int] = set()
    for obj in plan:
        if p.interrupted():
            going = False
            break
        p.remove(obj)
        gone.add(obj)
    if going:
        p.remove_empty_deleted_directories()
    else:
        p.result.yielded = True
    p.flush()
    counts = p.recount()
    with store.info_lock(account):
        on_disc = store.read_info(account)
        fresh = on_disc._replace(**counts, writer_open=False)
        if fresh != on_disc:
            store.write_info(fresh)
    if journal:
        delete_journal(store, account)
    if going:
        left = {obj: t for obj, t in seen.items() if obj not in gone}
        expiry = min((t + days * DAY for t in left.values()), default=NEVER) if days > 0 else NEVER
        write_state(store, account, State(*settings, expiry, int(now), left))
    for problem in p.result.errors:
        log.warning("housekeeping account %08x: %s", account, problem)
    return p.result

