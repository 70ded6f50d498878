"""`accounts check`: walk every object and directory of an account, report damage, and repair it with `fix`.

Without `fix` nothing on disc changes (the same repairs are worked out in memory, so the
report lists exactly what `--fix` will do). Order of work:

1. every key under the account: each object read whole through raidfile (which checks the
   data stripes' checksums and notices missing or damaged stripes; a big object is skipped
   through instead); where that found damage, or did not read every byte, all stripes are
   verified and rebuilt with `fix`; with `scrub`, every stripe of every object is verified
   first (parity too: silent corruption no read needed); stray keys noted; a directory is
   parsed, a file's block layout read; anything that does not parse is unreadable;
2. patches whose chain does not end in a readable whole object (missing or unreadable target,
   reference past the target's last block, a loop) are unrestorable and count as unreadable;
3. from the root (recreated empty if missing or damaged): entries naming a missing,
   unreadable or wrong-kind object, or an object already listed elsewhere, are dropped;
   directories get their container id and entry sizes corrected;
4. objects nothing lists are reattached: a file to the directory its own header names, when
   that directory exists (its sealed name is valid only there), else - like directories,
   whose names were in the lost entry - under `lost+found` in the root, with store-made
   names (see LOST_FOUND_NAME);
5. version links (newer/older) rebuilt from the objects' references;
6. usage recounted from the objects' real sizes; the info file rewritten (or rebuilt, with
   limits and retention from the housekeeping state when the info file is lost).

With `fix`: directories are written first, then unreadable objects and stray keys
deleted, then the info file - a second check finds nothing.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple

from boxbox.errors import FormatError, IntegrityError, NotFound
from boxbox.objects.directory import DELETED, DIR, FILE, MAGIC as DIRECTORY_MAGIC, OLD, Directory, Entry
from boxbox.objects.file import MAGIC as FILE_MAGIC
from boxbox.objects.layout import read_file_layout
from boxbox.store.account import (
    MAX_OBJECT_ID,
    ROOT_DIRECTORY_ID,
    Store,
    account_prefix,
    delete_all,
    info_key,
    object_key,
)
from boxbox.store.housekeep import journal_key, read_state, recover, state_key
from boxbox.store.info import AccountInfo

#: Store-made sealed names cannot be opened by a client (it has no such seal). They are 16 zero
#: bytes then clear ASCII, so a client can recognise and show them: `lost+found`, and
#: `dir-<hex id>` / `file-<hex id>` for what is reattached in it.
STORE_NAME_PREFIX = bytes(16)
LOST_FOUND_NAME = STORE_NAME_PREFIX + b"lost+found"
#: Objects up to this size are read whole and parsed in memory; bigger ones are skipped through.
WHOLE_READ = 1 << 20
COUNT_FIELDS = ("blocks_used", "blocks_current", "blocks_old", "blocks_deleted", "blocks_directories",
                "count_current", "count_old", "count_deleted", "count_directories")


@dataclass
class Problem:
    kind: str
    object_id: int | None
    message: str
    fixed: bool = False

    def __str__(self) -> str:
        what = f"object {self.object_id:#x}: " if self.object_id is not None else ""
        return f"{self.kind}: {what}{self.message}{' (fixed)' if self.fixed else ''}"


@dataclass
class CheckReport:
    account: int
    fix: bool
    scrub: bool = False
    objects: int = 0
    directories: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: what an unfinished writing session left, which its next writer removes: not errors
    pending: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return len(self.problems)

    @property
    def remaining(self) -> int:
        return sum(not p.fixed for p in self.problems)

    def as_json(self) -> dict[str, object]:
        return {"account": f"{self.account:08x}", "fix": self.fix, "scrub": self.scrub, "objects": self.objects,
                "directories": self.directories, "files": self.files, "errors": self.errors,
                "fixed": self.errors - self.remaining, "remaining": self.remaining,
                "seconds": round(self.seconds, 3), "counts": self.counts, "pending": self.pending,
                "problems": [{**asdict(p), "object_id": None if p.object_id is None else f"{p.object_id:#x}"}
                             for p in self.problems]}


class _File(NamedTuple):
    blocks: int
    block_count: int
    container: int
    sealed_name: bytes
    mtime_ns: int
    refs: dict[int, int]  # target object -> highest block referred to


def _parse_object_key(prefix: str, key: str) -> int | None:
    """The object id a key names, or None if it is not exactly an object key of this account."""
    name = key.rsplit("/", 1)[-1]
    if len(name) != 16:
        return None
    try:
        object_id = int(name, 16)
    except ValueError:
        return None
    if not 0 < object_id <= MAX_OBJECT_ID or key != f"{prefix}/{object_key(0, object_id)[9:]}":
        return None
    return object_id


class _Check:
    def __init__(self, store: Store, account: int, fix: bool, scrub: bool,
                 progress: Callable[[int, int], None] | None) -> None:
        self.store = store
        self.account = account
        self.fix = fix
        self.scrub = scrub
        self.progress = progress
        self.backend = store.backend(account)
        self.report = CheckReport(account, fix, scrub)
        self.dirs: dict[int, Directory] = {}
        self.dir_blocks: dict[int, int] = {}
        self.files: dict[int, _File] = {}
        self.bad: set[int] = set()
        self.dirty: set[int] = set()
        self.doomed_keys: list[str] = []
        self.max_id = ROOT_DIRECTORY_ID
        self._blocks: dict[int, int] = {}
        #: the info's last object id while a writing session is unfinished (its flag still set)
        self.unfinished: int | None = None

    def problem(self, kind: str, object_id: int | None, message: str) -> None:
        self.report.problems.append(Problem(kind, object_id, message, self.fix))

    # ------------------------------------------------------------ reading
    def read_objects(self) -> None:
        prefix = account_prefix(self.account)
        keys = list(self.backend.list(prefix))
        total = len(keys)
        last = time.monotonic()
        for n, key in enumerate(keys):
            if self.progress is not None and time.monotonic() - last > 0.25:
                self.progress(n, total)
                last = time.monotonic()
            object_id = _parse_object_key(prefix, key)
            if key == journal_key(self.account):
                self.doomed_keys.append(key)  # a killed pass's journal: what it names is checked below anyway
                continue
            if object_id is None and key not in (info_key(self.account), state_key(self.account)):
                self.problem("stray", None, f"{key} is not an object, info or state key of the account")
                self.doomed_keys.append(key)
                continue
            if (object_id is None or self.scrub) and not self._verify(key, object_id):
                if object_id is not None:
                    self.report.objects += 1
                    self.max_id = max(self.max_id, object_id)
                    self.bad.add(object_id)
                continue
            if object_id is None:
                continue
            self.report.objects += 1
            self.max_id = max(self.max_id, object_id)
            if self._read(object_id) and not self.scrub:
                self._verify(key, object_id)
        if self.progress is not None:
            self.progress(total, total)

    def _verify(self, key: str, object_id: int | None) -> bool:
        """Verify every checksum of every stripe of `key` (rebuild with `fix`); False if it is unreadable."""
        v = self.backend.verify(key, self.fix)
        if not v.ok:
            if v.readable:
                self.problem("stripes", object_id, v.detail)
                self.report.problems[-1].fixed = v.repaired
            else:
                self.problem("stripes", object_id, f"{v.detail}; unrecoverable, the object is removed")
        return v.readable

    def _read(self, object_id: int) -> bool:
        """Read and classify one object; True if the read found a stripe damaged or missing, or did not
        read every byte (a big object is skipped through), so its stripes need verifying."""
        try:
            with self.backend.get(object_key(self.account, object_id)) as raw:
                size = raw.seek(0, 2)
                raw.seek(0)
                # Small objects (most) are read in one call and parsed from memory: ~3x fewer reads.
                f = io.BytesIO(raw.read()) if size <= WHOLE_READ else raw
                head = f.read(4)
                f.seek(0)
                blocks = self._blocks.get(size)
                if blocks is None:
                    blocks = self._blocks[size] = self.backend.blocks_for_length(size)
                if head == DIRECTORY_MAGIC:
                    d = Directory.parse(f.read())
                    if d.object_id != object_id:
                        raise FormatError(f"directory header names object {d.object_id:#x}")
                    self.dirs[object_id] = d
                    self.dir_blocks[object_id] = blocks
                elif head == FILE_MAGIC:
                    layout = read_file_layout(f)
                    refs: dict[int, int] = {}
                    for obj, blk in layout.refs.values():
                        refs[obj] = max(blk, refs.get(obj, 0))
                    self.files[object_id] = _File(blocks, layout.block_count, layout.container_id,
                                                  layout.sealed_name, layout.mtime_ns, refs)
                else:
                    raise FormatError(f"unknown object magic {head!r}")
                return size > WHOLE_READ or bool(getattr(raw, "degraded", False))
        except (FormatError, IntegrityError, NotFound) as e:
            self.problem("unreadable", object_id, str(e))
            self.bad.add(object_id)
            return False

    def check_chains(self) -> None:
        """A patch whose chain does not end in a readable whole object cannot be restored."""
        good: dict[int, bool] = {}
        for start in self.files:
            path = []
            obj = start
            ok = True
            while obj not in good:
                f = self.files.get(obj)
                if f is None or obj in path:
                    ok = False
                    break
                path.append(obj)
                if not f.refs:
                    ok = True
                    break
                target, top = next(iter(f.refs.items()))
                t = self.files.get(target)
                if len(f.refs) != 1 or t is None or top >= t.block_count:
                    ok = False
                    break
                obj = target
            else:
                ok = good[obj]
            for o in path:
                good[o] = ok
            if not ok:
                self.problem("chain", start, "a version whose chain does not end in a readable whole object "
                             "(missing or unreadable newer version, or references out of range); removed")
        for obj, ok in good.items():
            if not ok:
                self.bad.add(obj)
                del self.files[obj]

    # ------------------------------------------------------------ the tree
    def root(self) -> Directory:
        root = self.dirs.get(ROOT_DIRECTORY_ID)
        if root is None:
            self.problem("root", ROOT_DIRECTORY_ID, "the root directory is missing or damaged; recreated empty")
            self.bad.discard(ROOT_DIRECTORY_ID)
            root = self.dirs[ROOT_DIRECTORY_ID] = Directory(ROOT_DIRECTORY_ID, 0)
            self.dir_blocks[ROOT_DIRECTORY_ID] = self.backend.blocks_for_length(len(root.serialize()))
            self.dirty.add(ROOT_DIRECTORY_ID)
        elif root.container_id != 0:
            self.problem("container", ROOT_DIRECTORY_ID, f"root names container {root.container_id:#x}, expected 0")
            root.container_id = 0
            self.dirty.add(ROOT_DIRECTORY_ID)
        return root

    def walk(self, top: int, reached: set[int]) -> None:
        """Visit the tree under directory `top`, dropping bad entries and correcting directories."""
        queue = [top]
        reached.add(top)
        while queue:
            d = self.dirs[queue.pop()]
            for e in list(d.entries):
                obj = e.object_id
                want_dir = bool(e.flags & DIR)
                is_dir, is_file = obj in self.dirs, obj in self.files
                if not is_dir and not is_file:
                    why = "unreadable" if obj in self.bad else "missing"
                    self._drop(d, e, "missing", f"listed in directory {d.object_id:#x} but {why}; entry removed")
                elif want_dir != is_dir:
                    self._drop(d, e, "kind", f"listed in directory {d.object_id:#x} as a "
                               f"{'directory' if want_dir else 'file'}, but it is not; entry removed")
                elif obj in reached:
                    self._drop(d, e, "duplicate", f"listed again in directory {d.object_id:#x}; "
                               "the second entry removed")
                else:
                    reached.add(obj)
                    if is_dir:
                        child = self.dirs[obj]
                        if child.container_id != d.object_id:
                            self.problem("container", obj, f"directory names container {child.container_id:#x}, "
                                         f"but directory {d.object_id:#x} holds it; corrected")
                            child.container_id = d.object_id
                            self.dirty.add(obj)
                        queue.append(obj)
                    blocks = self.dir_blocks[obj] if is_dir else self.files[obj].blocks
                    if e.size_blocks != blocks:
                        self.problem("size", obj, f"entry says {e.size_blocks} blocks, the object takes {blocks}")
                        e.size_blocks = blocks
                        self.dirty.add(d.object_id)

    def _drop(self, d: Directory, e: Entry, kind: str, message: str) -> None:
        self.problem(kind, e.object_id, message)
        d.entries.remove(e)
        self.dirty.add(d.object_id)

    def set_aside(self, reached: set[int]) -> bool:
        """Leave out what an unfinished session stored above the info's last id and nothing lists:
        its next writer (`housekeep.recover`) deletes those, so they are neither orphans nor counted."""
        if self.unfinished is None:
            return False
        for pool in (self.dirs, self.files):
            for obj in sorted(pool.keys() - reached):
                if obj > self.unfinished:
                    del pool[obj]
                    self.report.pending.append(f"object {obj:#x}: stored by the unfinished session, listed "
                                               "nowhere; its next writer removes it")
        return bool(self.report.pending)

    def reattach(self, reached: set[int]) -> None:
        lost: Directory | None = None

        def lost_found() -> Directory:
            nonlocal lost
            if lost is None:
                root = self.dirs[ROOT_DIRECTORY_ID]
                found = next((e for e in root.entries if e.sealed_name == LOST_FOUND_NAME and e.flags & DIR
                              and e.object_id in self.dirs), None)
                if found is not None:
                    lost = self.dirs[found.object_id]
                else:
                    self.max_id += 1
                    lost = self.dirs[self.max_id] = Directory(self.max_id, ROOT_DIRECTORY_ID)
                    self.dir_blocks[self.max_id] = self.backend.blocks_for_length(len(lost.serialize()))
                    root.entries.append(Entry(self.max_id, DIR, LOST_FOUND_NAME, 0, self.dir_blocks[self.max_id]))
                    self.dirty.add(ROOT_DIRECTORY_ID)
                    reached.add(self.max_id)
                self.dirty.add(lost.object_id)
            return lost

        for obj in sorted(self.dirs):
            if obj in reached:
                continue
            top, seen = obj, {obj}
            while True:  # climb to the top of the orphaned subtree
                parent = self.dirs.get(self.dirs[top].container_id)
                if parent is None or parent.object_id in reached or parent.object_id in seen \
                        or parent.entry(top) is None:
                    break
                top = parent.object_id
                seen.add(top)
            into = lost_found()
            self.problem("orphan", top, "directory not reachable from the root; reattached under lost+found")
            name = STORE_NAME_PREFIX + b"dir-%x" % top
            into.entries.append(Entry(top, DIR, name, 0, self.dir_blocks[top]))
            self.dirs[top].container_id = into.object_id
            self.dirty.update((top, into.object_id))
            self.walk(top, reached)
        for obj in sorted(self.files):
            if obj in reached:
                continue
            f = self.files[obj]
            home = self.dirs.get(f.container)
            if home is not None and f.container in reached:
                live = home.find(f.sealed_name)
                flags = FILE | OLD if live is not None and live.object_id > obj else FILE
                if live is not None and live.object_id < obj:
                    live.flags |= OLD
                home.entries.append(Entry(obj, flags, f.sealed_name, f.mtime_ns, f.blocks))
                self.problem("orphan", obj, f"file listed nowhere; reattached to directory {f.container:#x}")
                self.dirty.add(f.container)
            else:
                into = lost_found()
                into.entries.append(Entry(obj, FILE, STORE_NAME_PREFIX + b"file-%x" % obj, f.mtime_ns, f.blocks))
                self.problem("orphan", obj, "file listed nowhere and its directory is gone; "
                             "reattached under lost+found")
            reached.add(obj)

    def links(self) -> None:
        """Rebuild newer/older links from the objects' references."""
        newer: dict[int, int] = {}
        older: dict[int, int] = {}
        for obj, f in self.files.items():
            if f.refs:
                target = next(iter(f.refs))
                newer[obj] = target
                older[target] = max(obj, older.get(target, 0))
        for d in self.dirs.values():
            for e in d.entries:
                if e.flags & FILE and (e.newer, e.older) != (newer.get(e.object_id, 0), older.get(e.object_id, 0)):
                    self.problem("links", e.object_id, f"version links newer {e.newer:#x} older {e.older:#x}, "
                                 f"expected {newer.get(e.object_id, 0):#x} and {older.get(e.object_id, 0):#x}")
                    e.newer, e.older = newer.get(e.object_id, 0), older.get(e.object_id, 0)
                    self.dirty.add(d.object_id)

    def count(self) -> dict[str, int]:
        c = dict.fromkeys(COUNT_FIELDS, 0)
        for d in self.dirs.values():
            for e in d.entries:
                if e.flags & FILE:
                    kind = "deleted" if e.flags & DELETED else "old" if e.flags & OLD else "current"
                    c[f"blocks_{kind}"] += e.size_blocks
                    c[f"count_{kind}"] += 1
        c["blocks_directories"] = sum(self.dir_blocks[i] for i in self.dirs)
        c["count_directories"] = len(self.dirs)
        c["blocks_used"] = c["blocks_current"] + c["blocks_old"] + c["blocks_deleted"] + c["blocks_directories"]
        return c

    # ------------------------------------------------------------ writing
    def write(self, info: AccountInfo) -> None:
        # Serialized sizes change the directories' own blocks; settle those (and the parents'
        # entries) before anything is written, so the counts written match what is on disc.
        changed = True
        while changed:
            changed = False
            for dir_id in list(self.dirty):
                d = self.dirs[dir_id]
                blocks = self.backend.blocks_for_length(len(d.serialize()))
                if blocks != self.dir_blocks[dir_id]:
                    self.dir_blocks[dir_id] = blocks
                    parent = self.dirs.get(d.container_id)
                    entry = parent.entry(dir_id) if parent is not None else None
                    if entry is not None and entry.size_blocks != blocks:
                        entry.size_blocks = blocks
                        self.dirty.add(parent.object_id)  # type: ignore[union-attr]
                        changed = True
        counts = self.count()
        self.report.counts = counts
        if not self.fix:
            return
        for dir_id in sorted(self.dirty):
            put = self.backend.put(object_key(self.account, dir_id))
            put.write(self.dirs[dir_id].serialize())
            put.commit()
        delete_all(self.backend, [object_key(self.account, obj) for obj in sorted(self.bad)] + self.doomed_keys)
        with self.store.info_lock(self.account):
            try:
                current = self.store.read_info(self.account)
            except (NotFound, FormatError, IntegrityError):
                current = info
            self.store.write_info(current._replace(**counts, last_object_id=max(current.last_object_id, self.max_id),
                                                   change_count=current.change_count + 1, writer_open=False))

    def run(self) -> CheckReport:
        started = time.monotonic()
        info = self._info()
        if info.writer_open:  # we hold the write lock, so that session is over: it failed or died
            if self.fix:
                info = recover(self.store, self.account, info)
                self.problem("writer", None, "the last writing session did not finish; what it left is "
                             "removed and usage recounted, as its next writer would")
            else:
                self.unfinished = info.last_object_id
        self.read_objects()
        highest = self.max_id
        self.max_id = max(highest, info.last_object_id)  # a new lost+found never reuses an id
        self.check_chains()
        reached: set[int] = set()
        self.root()
        self.walk(ROOT_DIRECTORY_ID, reached)
        if self.set_aside(reached):
            highest = max([info.last_object_id, *self.dirs, *self.files])
        self.reattach(reached)
        self.links()
        self.write(info)
        counts = self.report.counts
        wrong = [f"{k} {getattr(info, k)} (counted {v})" for k, v in counts.items() if getattr(info, k) != v]
        if wrong and not any(p.kind == "info" for p in self.report.problems):
            self.problem("usage", None, "usage counts are wrong: " + ", ".join(wrong))
        if info.last_object_id < highest:
            self.problem("info", None, f"last object id {info.last_object_id:#x} is below the highest object "
                         f"{highest:#x}")
        self.report.directories = len(self.dirs)
        self.report.files = len(self.files)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _info(self) -> AccountInfo:
        try:
            return self.store.read_info(self.account)
        except (NotFound, FormatError, IntegrityError) as e:
            state = read_state(self.store, self.account)
            source = "the housekeeping state" if state is not None else "nothing (limits set to 0: use setlimit)"
            self.problem("info", None, f"the info file is unreadable ({e}); rebuilt with limits from {source}")
            if state is None:
                return AccountInfo(self.account, True, 0, 0)
            return AccountInfo(self.account, True, state.soft_limit, state.hard_limit,
                               keep_versions_days=state.keep_days, keep_min_versions=state.keep_min)


def check_account(store: Store, account: int, fix: bool = False, scrub: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Check (and with `fix`, repair) one account; holds it alone (InUse if a client writes to it;
    a housekeeping pass on it is asked to stop and awaited).

    Every object is read whole through raidfile, which verifies both data stripes' checksums
    and notices missing or damaged stripes; such an object then has all its stripes verified
    (and rebuilt with `fix`). `scrub` verifies every stripe of every object first, parity
    included, so corruption in a parity stripe no read needed is found too (~2.5x slower).
    """
    hk_lock = store.take_from_housekeeping(account)
    try:
        with store.write_lock(account):
            return _Check(store, account, fix, scrub, progress).run()
    finally:
        hk_lock.release()


def scrub_account(store: Store, account: int) -> tuple[int, int, list[str]]:
    """Verify every stripe of every object of ACCOUNT and rebuild damaged ones: (keys, repaired, failures).

    Only redundancy is touched (no tree repairs), so the server can run it on a schedule
    beside clients: a raidfile repair is atomic per stripe and readers never see a mix.
    """
    backend = store.backend(account)
    keys = repaired = 0
    failed: list[str] = []
    for key in backend.list(account_prefix(account)):
        keys += 1
        try:
            v = backend.verify(key, True)
        except NotFound:
            continue  # deleted meanwhile
        repaired += v.repaired
        if not v.ok and not v.repaired:
            failed.append(v.detail)
    return keys, repaired, failed
