"""Walk one location and yield only the directories whose listing changed since the last run.

The walk uses directory file descriptors (`os.listdir(fd)` + `os.stat(name, dir_fd=fd,
follow_symlinks=False)`: ~340k entries/s warm, PERFORMANCE.md; listdir rather than scandir
because every entry is lstat'ed anyway), so path length never matters, symlinks are never
followed (only the configured location path itself may be one), and a directory swapped for
a symlink mid-scan is caught by comparing (st_dev, st_ino) before and after opening it.
Another filesystem is never entered: a mount point stays an (empty) entry of its parent.

Per directory it hashes its own attributes and its sorted listing (name, mode, owner, size,
mtime, ctime, inode of every included entry; for a subdirectory only name, mode, owner and
inode, so that new content in a directory does not make its parent change too) into a
16-byte checksum kept in a packed record (`records.Records`), never a Python object per file.
A directory whose checksum and store id match its previous record is not yielded, so a run
where nothing changed yields nothing and the daemon never connects. A changed directory is
yielded as a `Change` carrying its entries; the daemon syncs it with the store, fills in
store ids, and sets `done` — only then is the new checksum recorded, so a directory that
failed to sync is retried next run. Nor is it recorded when something in the directory
changed within `FINE_WINDOW` of reading the directory (or while it was read), or within `RACY_WINDOW`
of it for an entry whose timestamps are whole seconds (a filesystem with coarse timestamps): a
second edit in the same timestamp tick would look unchanged.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from boxbox.backup.records import NO_CHECKSUM, Records, digest16
from boxbox.backup.rules import Rules
from boxbox.errors import NotFound, PermissionDenied, ProgrammingError

log = logging.getLogger(__name__)

# Per entry, hashed in name order: mode, uid, gid, size, mtime ns, ctime ns, inode.
ENTRY = struct.Struct("<IIIQqqQ")
assert ENTRY.size == 44

#: keep every directory's fd open down to this depth; below it only every KEEP_EVERY-th level,
#: opening the others by a relative path of at most KEEP_EVERY names (< PATH_MAX even at 255 each)
KEEP_ALL_DEPTH = 64
KEEP_EVERY = 8
PROGRESS_EVERY = 4096  # entries between `on_progress` calls
#: timestamps are coarse (a kernel tick on ext4, 2 s on FAT): an entry whose ctime is this close
#: to the scan could change again unseen, so its directory is not recorded as in sync yet
RACY_WINDOW = 2.0
#: the same for an entry with sub-second timestamps (ext4, xfs, btrfs, tmpfs: one kernel tick,
#: 1-10 ms), measured from when its directory is read. With RACY_WINDOW for every entry, a tree
#: written up to 2 s before a backup made the next run connect although nothing had changed
FINE_WINDOW = 0.1
_SECOND = 1_000_000_000

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class EntryStat:
    """The fields of an `os.stat_result` that the uploader reads, for the entries of changed directories.

    A stat_result holds 19 values, most of them separate int and float objects (~650 bytes an
    entry); the uploader holds up to `LOOKAHEAD_ENTRIES` of them while their listings are on
    the way, and this keeps ~40% of that (measured: the incremental's peak RSS -0.8 MiB).
    """

    __slots__ = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns",
                 "st_ctime_ns", "st_rdev")

    def __init__(self, st: os.stat_result) -> None:
        self.st_mode = st.st_mode
        self.st_ino = st.st_ino
        self.st_dev = st.st_dev
        self.st_nlink = st.st_nlink
        self.st_uid = st.st_uid
        self.st_gid = st.st_gid
        self.st_size = st.st_size
        self.st_mtime_ns = st.st_mtime_ns
        self.st_ctime_ns = st.st_ctime_ns
        self.st_rdev = st.st_rdev

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    @property
    def st_ctime(self) -> float:
        return self.st_ctime_ns / 1e9


class Entry(NamedTuple):
    """One included entry of a changed directory, for the uploader."""

    name: bytes
    st: EntryStat


class Change:
    """A directory to sync with the store: new, changed since its record, or without a store id."""

    __slots__ = ("path", "entries", "store_id", "parent_store_id", "inode", "new", "racy", "subdir_ids", "done")

    def __init__(self, path: bytes, entries: list[Entry], store_id: int, parent_store_id: int, inode: int, new: bool,
                 racy: bool = False) -> None:
        self.path = path  # inside the location; b"" is the location root
        self.entries = entries
        self.store_id = store_id  # 0: not on the store yet; the daemon creates it and sets this
        self.parent_store_id = parent_store_id
        self.inode = inode
        self.new = new  # no previous record (a new directory, or one moved here)
        #: something here changed within `racy_window` of the scan: a second change in the same
        #: timestamp tick would look identical, so the directory is yielded again next run
        self.racy = racy
        #: set by the daemon: store ids of subdirectories it created or moved (by name)
        self.subdir_ids: dict[bytes, int] = {}
        #: set by the daemon once the store matches `entries`; only then is the checksum recorded
        self.done = False


class ScanError(NamedTuple):
    path: bytes  # inside the location
    message: str


class _Frame:
    """A directory being walked: its open fd (or None), record, and subdirectories to visit."""

    __slots__ = ("fd", "name", "rel", "index", "old", "store_id", "subdirs", "next", "old_children", "subdir_ids",
                 "ino", "checksum")

    def __init__(self, fd: int | None, name: str, rel: str, index: int, old: int | None, store_id: int,
                 subdirs: list[tuple[str, os.stat_result]], ino: int) -> None:
        self.fd = fd
        self.name = name
        self.rel = rel
        self.index = index
        self.old = old
        self.store_id = store_id
        self.subdirs = subdirs
        self.next = 0
        self.old_children: dict[bytes, int] | None = None
        self.subdir_ids: dict[bytes, int] = {}
        self.ino = ino
        self.checksum = NO_CHECKSUM


class Scanner:
    """One pass over one location: iterate it for the `Change`s, then read the results.

    After the iteration: `complete`, `records` (the new directory records), `files`, `directories`,
    `changed`, `excluded`, `vanished` counts, `errors` (unreadable entries, skipped) and
    `mount_points` (directories on another filesystem: kept as entries, not entered).
    """

    def __init__(self, root: str | os.PathLike[str], rules: Rules | None = None, previous: Records | None = None,
                 on_progress: Callable[[], None] | None = None, racy_window: float = RACY_WINDOW,
                 fine_window: float = FINE_WINDOW) -> None:
        self.root = os.fspath(root)
        self.racy_window = racy_window
        self.fine_window = min(fine_window, racy_window)
        self.rules = rules
        self.previous = previous if previous is not None and len(previous) else None
        self.on_progress = on_progress
        self.records = Records()
        self.files = 0
        self.directories = 0
        self.changed = 0
        self.excluded = 0
        self.vanished = 0
        self.errors: list[ScanError] = []
        self.mount_points: list[bytes] = []
        #: True once the walk reached its end: only then may `records` replace the previous ones
        self.complete = False
        self._started = False
        self._dev = 0
        self._ticks = PROGRESS_EVERY

    def __iter__(self) -> Iterator[Change]:
        if self._started:
            raise ProgrammingError("a Scanner walks its location once; make a new one for the next run")
        self._started = True
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"location {self.root}: no such directory") from None
        except PermissionError:
            raise PermissionDenied(f"location {self.root}: cannot open directory") from None
        except OSError as e:
            raise NotFound(f"location {self.root}: {e.strerror}") from None
        st = os.fstat(fd)
        self._dev = st.st_dev
        prev = self.previous
        old = 0 if prev is not None else None
        store_id = prev.store_id(0) if prev is not None else 0
        stack: list[_Frame] = []
        try:
            frame, change = self._enter(fd, "", "", st, store_id, 0, old, stack)
            if frame is None:
                raise PermissionDenied(f"location {self.root}: {self.errors[-1].message}")
            stack.append(frame)  # before yielding, so that closing the generator closes its fd
            if change is not None:
                yield change
                self._settle(frame, change)
            while stack:
                top = stack[-1]
                if top.next == len(top.subdirs):
                    self.records.close(top.index)
                    if top.fd is not None:
                        os.close(top.fd)
                    stack.pop()
                    continue
                name, cst = top.subdirs[top.next]
                top.next += 1
                bname = os.fsencode(name)
                rel = f"{top.rel}/{name}" if top.rel else name
                old_index = self._old_child(top, bname)
                store_id = top.subdir_ids.get(bname) or (prev.store_id(old_index) if old_index is not None else 0)
                if old_index is None and store_id and prev is not None:
                    # the daemon moved an old directory here: keep its records if the ids agree
                    moved = prev.by_inode(cst.st_ino)
                    if moved is not None and prev.store_id(moved) == store_id:
                        old_index = moved
                child_fd = self._open(stack, name, rel, cst)
                frame, change = (None, None) if child_fd is None else \
                    self._enter(child_fd, name, rel, cst, store_id, top.store_id, old_index, stack)
                if frame is None:
                    self._keep_unreadable(bname, cst, store_id, old_index)
                    continue
                stack.append(frame)
                if change is not None:
                    yield change
                    self._settle(frame, change)
            self.complete = True
        finally:
            for frame in stack:
                if frame.fd is not None:
                    os.close(frame.fd)

    def _old_child(self, top: _Frame, bname: bytes) -> int | None:
        """The previous record of subdirectory `bname` of `top`, matched by name."""
        prev = self.previous
        if top.old is None or prev is None:
            return None
        if top.old_children is None:
            top.old_children = {prev.name(c): c for c in prev.children(top.old)}
        return top.old_children.get(bname)

    def _open(self, stack: list[_Frame], name: str, rel: str, cst: os.stat_result) -> int | None:
        """Open subdirectory `name` of the top frame; None (error recorded) if it cannot be read."""
        parts = [name]
        k = len(stack) - 1
        while stack[k].fd is None:
            parts.append(stack[k].name)
            k -= 1
        try:
            fd = os.open("/".join(reversed(parts)), _OPEN_DIR, dir_fd=stack[k].fd)
        except FileNotFoundError:
            self.vanished += 1
            return None
        except OSError as e:
            if e.errno == errno.ELOOP or e.errno == errno.ENOTDIR:
                self._error(rel, "replaced during the scan, skipped")
            else:
                self._error(rel, f"cannot open directory: {e.strerror}")
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (cst.st_dev, cst.st_ino):
            os.close(fd)
            self._error(rel, "replaced during the scan, skipped")
            return None
        return fd

    def _enter(self, fd: int, name: str, rel: str, dst: os.stat_result, store_id: int, parent_store_id: int,
               old: int | None, stack: list[_Frame]) -> tuple[_Frame | None, Change | None]:
        """List one directory, append its record; return its frame and its Change if it changed."""
        try:
            names = os.listdir(fd)
        except OSError as e:
            os.close(fd)
            self._error(rel, f"cannot list directory: {e.strerror}")
            return None, None
        rules = self.rules if self.rules is not None and self.rules.active else None
        base = rules.full_path(rel) if rules is not None else ""
        every = rules is not None and rules.tests_every_entry(base)
        forced_inos = rules.forced_inos if rules is not None else set()
        base = "/" if base == "/" else base + "/"
        lstat = os.stat
        pack = ENTRY.pack
        fsencode = os.fsencode
        is_dir = stat.S_ISDIR
        dev = self._dev
        # The directory's own attributes, then for each included entry in name order its packed
        # stat, then the NUL-joined names (NUL cannot occur in a name; each stat is 44 bytes).
        # Its parent hashes only a subdirectory's name, mode, owner and inode, so new content
        # here is not a change there.
        packed = [pack(dst.st_mode, dst.st_uid, dst.st_gid, 0, dst.st_mtime_ns, dst.st_ctime_ns, dst.st_ino)]
        kept: list[str] = []
        stats: list[os.stat_result] = []
        subdirs: list[tuple[str, os.stat_result]] = []
        ancestors = {f.ino for f in stack}
        ancestors.add(dst.st_ino)
        # racy: changed within the window before this directory was read, or while it was; a ctime
        # further ahead is a wrong clock, not a race (it would make the directory racy forever)
        now = time.time_ns()
        window = int(self.racy_window * 1e9)
        racy_after, racy_before, fine_after = now - window, now + window, now - int(self.fine_window * 1e9)
        c = dst.st_ctime_ns
        racy = racy_after <= c <= racy_before and (c >= fine_after or not (c % _SECOND and dst.st_mtime_ns % _SECOND))
        names.sort()
        for entry_name in names:
            try:
                st = lstat(entry_name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                self.vanished += 1
                continue
            except OSError as e:
                os.close(fd)
                self._error(rel, f"cannot read directory entries: {e.strerror}")
                return None, None
            mode = st.st_mode
            if (every or st.st_ino in forced_inos) and rules is not None \
                    and rules.excluded(base + entry_name, is_dir(mode), (st.st_dev, st.st_ino)):
                self.excluded += 1
                continue
            kept.append(entry_name)
            stats.append(st)
            c = st.st_ctime_ns
            if racy_after <= c <= racy_before and (c >= fine_after or not (c % _SECOND and st.st_mtime_ns % _SECOND)):
                racy = True
            if not is_dir(mode):
                packed.append(pack(mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
            else:
                packed.append(pack(mode, st.st_uid, st.st_gid, 0, 0, 0, st.st_ino))
                sub_rel = f"{rel}/{entry_name}" if rel else entry_name
                if st.st_dev != dev:
                    self.mount_points.append(fsencode(sub_rel))
                    log.debug("not crossing into another filesystem at %r", sub_rel)
                elif st.st_ino in ancestors:
                    self._error(sub_rel, "directory loop (a bind mount?), not entered")
                else:
                    subdirs.append((entry_name, st))
        packed.append(fsencode("\0".join(kept)))
        checksum = digest16(b"".join(packed))
        self.files += len(kept) - len(subdirs)
        self.directories += 1
        if self.on_progress is not None:
            self._ticks -= len(names)
            if self._ticks <= 0:
                self._ticks = PROGRESS_EVERY
                self.on_progress()
        depth = len(stack)
        keep = depth < KEEP_ALL_DEPTH or depth % KEEP_EVERY == 0
        if not keep or not subdirs:
            os.close(fd)
        frame = _Frame(fd if keep and subdirs else None, name, rel, -1, old, store_id, subdirs, dst.st_ino)
        prev = self.previous
        bname = fsencode(name)
        unchanged = store_id != 0 and old is not None and prev is not None and prev.get(old).checksum == checksum
        frame.index = self.records.append(bname, dst.st_ino, store_id, checksum if unchanged else NO_CHECKSUM)
        if unchanged:
            return frame, None
        self.changed += 1
        entries = [Entry(fsencode(n), EntryStat(s)) for n, s in zip(kept, stats)]
        change = Change(fsencode(rel), entries, store_id, parent_store_id, dst.st_ino, old is None, racy)
        frame.checksum = checksum
        return frame, change

    def _settle(self, frame: _Frame, change: Change) -> None:
        """Take the daemon's answers for a yielded directory into its record."""
        frame.store_id = change.store_id
        frame.subdir_ids = change.subdir_ids
        self.records.set_store_id(frame.index, change.store_id)
        if change.done and change.store_id and not change.racy:
            self.records.set_checksum(frame.index, frame.checksum)

    def _keep_unreadable(self, bname: bytes, cst: os.stat_result, store_id: int, old: int | None) -> None:
        """A subdirectory that could not be read keeps its old records, so the store is left alone."""
        if old is not None and self.previous is not None:
            self.records.copy_subtree(self.previous, old, bname)
        else:
            self.records.close(self.records.append(bname, cst.st_ino, store_id))

    def _error(self, rel: str, message: str) -> None:
        log.debug("scan error at %r: %s", rel, message)
        self.errors.append(ScanError(os.fsencode(rel), message))


def upload_due(mtime: float, ctime: float, now: float, pending_since: float | None, *, minimum_file_age: float,
               max_upload_wait: float, max_file_time_in_future: float) -> bool:
    """Lazy mode: is a new or changed file old enough to upload now, or has it waited long enough?

    The file's age is taken from the later of mtime and ctime (an attribute change counts).
    A time further ahead than `max_file_time_in_future` is a broken clock: upload at once,
    since waiting for it would never end. `pending_since` is when the daemon first saw the
    file waiting (None: not seen before); after `max_upload_wait` it goes up regardless.
    """
    changed = max(mtime, ctime)
    if changed > now + max_file_time_in_future:
        return True
    if now - changed >= minimum_file_age:
        return True
    return pending_since is not None and now - pending_since >= max_upload_wait
