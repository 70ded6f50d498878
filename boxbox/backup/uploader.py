"""Make the store match one changed directory at a time, pipelined, for one backup run.

`StoreSession` wraps a logged-in `wire.client.Client` for one run: it keeps uploads and
directory operations in flight (replies are read when the window fills, not per file),
counts what it sent, and knows whether the store is full or refuses diffs.

`LocationSync.sync(change)` is called for each `scan.Change` (parents first). A directory
whose subdirectories the scan already knows (by name, from the previous records) is held back:
its listing is asked for at once and it is synced with up to LOOKAHEAD others in `flush`, so
the listings and block indexes of many directories are read before any of their uploads go
out (a listing behind uploads waits for the store's durability barrier). A directory whose
subdirectories need ids from this sync (new, moved) flushes the held-back ones, its
subdirectories made first. Each directory is listed once, then for each local entry
(mtime, attribute hash) is compared with the store's entry by sealed name, and:
- uploads new or changed files: as a diff when an older version is there and the file is
  above `diffing_upload_size_threshold` (whole if the server refuses diffs), else whole;
- sends only re-sealed attributes for an attribute-only change (a MoveObject onto itself);
- creates or moves subdirectories (a directory whose inode had a store id is moved);
- leaves files whose inode had a store id (renamed?) for `finish`.
Entries on the store that are gone locally are remembered; `finish` first moves the
remembered renamed files onto their new names (a move instead of an upload), then marks
the rest deleted — deletions last, so moves win.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from boxbox.backup.outcome import RunStats, Settings, Stopped
from boxbox.backup.records import NO_CHECKSUM
from boxbox.backup.scan import Change, EntryStat, Scanner, upload_due
from boxbox.backup.state import LocationState
from boxbox.backup.streams import FileChanged, LocalReadError, RateLimit, diff_file, whole_file
from boxbox.crypto import seal as sealing
from boxbox.crypto.keys import Keys
from boxbox.errors import BoxboxError, LimitExceeded, NotFound, ProtocolError, UsageError
from boxbox.objects.attributes import Attributes, attributes_from_path
from boxbox.objects.directory import DELETED, DIR, FILE, OLD, Directory, Entry, entry_attribute_hash, \
    make_entry, seal_directory_attributes
from boxbox.objects.file import HEADER as FILE_HEADER, open_index, seal_place
from boxbox.wire import messages as m
from boxbox.wire.client import Client, Pending

log = logging.getLogger(__name__)

ROOT_DIRECTORY_ID = 1
#: replies left unread before the oldest are collected (the client caps at 256 itself)
WINDOW = 128
#: directories with a longer path are reached through an fd (PATH_MAX is 4096 on Linux)
LONG_PATH = 3072
#: changed directories whose listings (and block indexes) are all asked for before any of their
#: uploads: a listing asked for behind uploads waits for the store to save them first
LOOKAHEAD = 64
#: ...and at most this many of their entries, which bounds the listings held at once (~70 bytes an entry)
LOOKAHEAD_ENTRIES = 16384


class StoreSession:
    """One logged-in connection for a run: the pipeline window, store-full and diff state."""

    def __init__(self, client: Client, keys: Keys, settings: Settings, *, store_full: bool = False,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.should_stop = should_stop
        self.keys = keys
        self.settings = settings
        self.stats = RunStats()
        self.store_full = store_full
        self.accepts_diffs = True
        self.limit = RateLimit(settings.max_upload_rate)
        self._inflight: deque[tuple[Pending, Callable[[Any], None] | None, Callable[[BoxboxError], None] | None]] \
            = deque()
        self._last_sent = time.monotonic()

    @property
    def bytes_sent(self) -> int:
        return self.client.conn.bytes_out

    def submit(self, request_fn: Callable[[], Pending], on_ok: Callable[[Any], None] | None = None,
               on_error: Callable[[BoxboxError], None] | None = None) -> None:
        """Send without waiting; the callbacks run when the reply is read."""
        pending = request_fn()
        self._last_sent = time.monotonic()
        self._inflight.append((pending, on_ok, on_error))
        while len(self._inflight) > WINDOW:
            self._collect_one()

    def _collect_one(self) -> None:
        pending, on_ok, on_error = self._inflight.popleft()
        try:
            value = pending.result()
        except (ProtocolError, OSError):
            raise  # the connection is gone: the run fails and is retried
        except BoxboxError as e:
            if isinstance(e, LimitExceeded):
                self.store_full = True
            if on_error is None:
                raise
            on_error(e)
            return
        if on_ok is not None:
            on_ok(value)

    def drain(self) -> None:
        """Read every outstanding reply (running the callbacks)."""
        while self._inflight:
            self._collect_one()

    def keep_alive(self) -> None:
        """Called between entries and during long scans: stop if asked; a KeepAlive when the line was quiet."""
        if self.should_stop():
            raise Stopped()
        if time.monotonic() - self._last_sent >= self.settings.keep_alive_time:
            self.submit(self.client.keep_alive)


def _join(*parts: bytes) -> bytes:
    return b"/".join(p for p in parts if p)


class LocationSync:
    """Syncs one location's changed directories during one run; `finish` does moves and deletions."""

    def __init__(self, session: StoreSession, name: str, root: str, state: LocationState, *,
                 force: bool = False, now: float | None = None) -> None:
        self.session = session
        self.keys = session.keys
        self.settings = session.settings
        self.name = name
        self.root = os.fsencode(os.path.abspath(root))
        self.state = state
        self.force = force
        self.now = time.time() if now is None else now
        #: store entries gone locally: object id -> (directory id, entry)
        self.vanished: dict[int, tuple[int, Entry]] = {}
        #: new names whose inode had a store id: (old id, directory id, name, stat, path in location)
        self.renamed: list[tuple[int, int, bytes, EntryStat, bytes]] = []
        self.moved_ids: set[int] = set()
        #: directories this run created where no current entry had the name: empty, attributes set
        self.fresh: set[int] = set()
        #: block indexes of this directory's diff bases, fetched together (sealed name -> index or error)
        self._indexes: dict[bytes, tuple[int, bytes] | BoxboxError] = {}
        #: diff uploads the server refused, uploaded whole by `finish`: (directory id, name, sealed, stat, path)
        self._refused: list[tuple[int, bytes, bytes, EntryStat, bytes]] = []
        self.failed_paths: set[bytes] = set()
        self.pending: dict[bytes, float] = {}
        self._base = b""
        #: changed directories held back by `sync`, their listings asked for: (change, listing or None,
        #: subdirectory ids the scan used); the last may be one that is not held back (ids None)
        self._queue: list[tuple[Change, Pending | None, dict[bytes, int] | None]] = []
        self._queued_entries = 0
        #: store ids the previous records gave subdirectories that the store does not have there,
        #: and every directory below them: not synced; their paths lose their store ids in `settle`
        self._stale: set[int] = set()
        self._stale_paths: list[bytes] = []

    # ------------------------------------------------------------ helpers
    def _full(self, path: bytes, name: bytes = b"") -> bytes:
        return _join(self.root, path, name) if self.root != b"/" else b"/" + _join(path, name)

    def _read_error(self, path: bytes, message: str) -> None:
        text = f"{self.name}:{os.fsdecode(path) or '/'}: {message}"
        log.warning("%s", text)
        self.session.stats.read_errors.append(text)

    def _fail(self, path: bytes, directory: bytes | None = None) -> Callable[[BoxboxError], None]:
        """An error callback naming `path`; its directory (`path` itself unless given) is retried next run."""
        def on_error(e: BoxboxError) -> None:
            text = f"{self.name}:{os.fsdecode(path) or '/'}: {e}"
            log.warning("upload failed: %s", text)
            self.session.stats.upload_errors.append(text)
            self.failed_paths.add(path if directory is None else directory)
        return on_error

    def _open_base(self, path: bytes) -> tuple[bytes, int | None]:
        """How to name entries of directory `path`: its full path, or past LONG_PATH bytes an fd of it
        opened name by name (no symlink followed) and named through /proc/self/fd."""
        full = self._full(path)
        if len(full) < LONG_PATH:
            return full, None
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in filter(None, path.split(b"/")):
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError:
            os.close(fd)
            raise
        return b"/proc/self/fd/%d/." % fd, fd

    def _dir_attributes(self, path: bytes, full: bytes, st: EntryStat | os.stat_result) -> Attributes | None:
        try:
            return attributes_from_path(full, st)
        except (OSError, BoxboxError) as e:
            self._read_error(path, f"cannot read attributes: {getattr(e, 'strerror', None) or e}")
            return None

    # ------------------------------------------------------------ one directory
    def sync(self, change: Change) -> None:
        """Make the store directory match `change.entries`; set store ids and `done`.

        A directory whose subdirectories the scan will enter with the store ids of the previous
        records needs nothing from the store before the scan goes on: its listing is asked for
        now and the directory is synced later, with up to LOOKAHEAD others (`flush`), so that
        no listing waits behind uploads. It is counted as done at once; a failure puts its path
        into `failed_paths`, which `settle` takes out of the records again.
        """
        expected = self._can_defer(change)
        if expected is not None:
            listing = None
            if change.store_id not in self.fresh:
                listing = self.session.client.submit(
                    m.ListDirectory(change.store_id, 0, OLD | DELETED, 0), download=True)
            change.done = True
            self._queue.append((change, listing, expected))
            self._queued_entries += len(change.entries)
            if len(self._queue) >= LOOKAHEAD or self._queued_entries >= LOOKAHEAD_ENTRIES:
                self.flush()
            return
        if change.parent_store_id in self._stale:
            self.flush()
            self._mark_stale(change, "below a directory that is not on the store")
            return
        if change.store_id and change.store_id not in self.fresh:
            # listed ahead of the held-back uploads too; its subdirectories are made before them
            self._queue.append((change, self.session.client.submit(
                m.ListDirectory(change.store_id, 0, OLD | DELETED, 0), download=True), None))
            self.flush()
            return
        self.flush()
        self._sync_open(change, None)

    def _can_defer(self, change: Change) -> dict[bytes, int] | None:
        """The store ids the scan gives this directory's subdirectories (from the previous records, by
        name) if it needs none from this sync; None if the sync must come first (a directory to create,
        a new or moved subdirectory)."""
        if change.store_id == 0 or change.store_id in self._stale or change.parent_store_id in self._stale:
            return None
        subdirs = [name for name, st in change.entries if stat.S_ISDIR(st.st_mode)]
        if not subdirs:
            return {}
        if change.new or change.store_id in self.fresh:
            return None
        prev = self.state.records
        index = prev.find(change.path) if len(prev) else None
        if index is None or prev.store_id(index) != change.store_id:
            return None
        known = {prev.name(c): prev.store_id(c) for c in prev.children(index)}
        expected = {name: known.get(name, 0) for name in subdirs}
        return expected if all(expected.values()) else None

    def flush(self) -> None:
        """Sync the held-back directories: their listings are read, then every block index they
        need is asked for and read, then their uploads go out, all pipelined. A directory that was
        not held back (the scan needs its subdirectories' ids) comes last: its subdirectories are
        created or moved before the held-back uploads, its files after them."""
        queue, self._queue = self._queue, []
        self._queued_entries = 0
        if not queue:
            return
        planned: list[tuple[Change, Directory | None, list[tuple[bytes, Pending]], bool]] = []
        for change, pending, expected in queue:
            listing = None
            if pending is not None:
                try:
                    listing = Directory.parse(pending.result()[1].read())
                except (ProtocolError, OSError):
                    raise
                except BoxboxError as e:
                    if expected is None:
                        raise  # as when listed alone: the run fails
                    self._mark_stale(change, f"not on the store ({e})")  # the records' store id
                    continue
            current = _current(listing)
            for name, subdir_id in (expected or {}).items():
                e = current.get(sealing.seal_entry_name(self.keys, change.store_id, name))
                if e is None or not e.flags & DIR or e.object_id != subdir_id:
                    # the scan went into it with the records' id: the store changed behind our back
                    self._mark_stale(Change(_join(change.path, name), [], subdir_id, change.store_id, 0, False),
                                     "its recorded store id is not on the store there")
            wanted = self._wanted_indexes(change.store_id, change.entries, current)
            planned.append((change, listing, self._ask_indexes(change.store_id, wanted), expected is not None))
        fetched = [(change, listing, self._read_indexes(asked), held) for change, listing, asked, held in planned]
        last = None
        if fetched and not fetched[-1][3]:
            change, listing, indexes, _ = fetched.pop()
            last = (change, listing, indexes)

        def held_back() -> None:
            for change, listing, indexes, _ in fetched:
                if change.store_id in self._stale or change.parent_store_id in self._stale:
                    self._mark_stale(change, "below a directory that is not on the store")
                    continue
                change.done = False
                self._sync_open(change, (listing, indexes))
                if not change.done:
                    self.failed_paths.add(change.path)

        if last is None:
            held_back()
        else:
            self._sync_open(last[0], (last[1], last[2]), between=held_back)

    def _mark_stale(self, change: Change, why: str) -> None:
        log.warning("%s:%s: %s: skipped; the next run creates it again", self.name,
                    os.fsdecode(change.path) or "/", why)
        self._stale.add(change.store_id)
        self._stale_paths.append(change.path)
        self.failed_paths.add(change.path)

    def _sync_open(self, change: Change, prefetched: tuple[Directory | None, dict[bytes, Any]] | None,
                   between: Callable[[], None] | None = None) -> None:
        """`_sync` with the directory opened; `between` runs after its subdirectories, before its files."""
        path = change.path
        try:
            self._base, fd = self._open_base(path)
        except OSError as e:
            self._read_error(path, f"cannot open directory: {e.strerror}")
            if between is not None:
                between()
            return
        try:
            self._sync(change, prefetched, between)
        finally:
            if fd is not None:
                os.close(fd)

    def _sync(self, change: Change, prefetched: tuple[Directory | None, dict[bytes, Any]] | None = None,
              between: Callable[[], None] | None = None) -> None:
        s = self.session
        client = s.client
        path = change.path
        try:
            dst = os.stat(self._base, follow_symlinks=False)
        except OSError as e:
            self._read_error(path, f"cannot stat directory: {e.strerror}")
            if between is not None:
                between()
            return
        dattrs = self._dir_attributes(path, self._base, dst)
        listing = prefetched[0] if prefetched is not None else None
        if change.store_id == 0:
            if path and not change.parent_store_id:
                return  # its parent is not on the store (failed): retried next run
            parent = change.parent_store_id or ROOT_DIRECTORY_ID
            name = os.path.basename(path) if path else self.name.encode("utf-8")
            sealed_attrs = seal_directory_attributes(self.keys, parent, name, dattrs) if dattrs else b""
            s.drain()
            # idempotent: after a lost state this finds the directory already there, so list it
            change.store_id = client.create_directory(parent, sealing.seal_entry_name(self.keys, parent, name),
                                                      sealed_attrs, dattrs.mtime_ns if dattrs else 0)
            listing = self._list(change.store_id)
        elif change.store_id in self.fresh:
            listing = None  # nothing to list or to change: the pipeline does not wait here
        else:
            if prefetched is None:
                listing = self._list(change.store_id)
            if listing is not None and dattrs is not None:
                parent = listing.container_id
                name = os.path.basename(path) if path else self.name.encode("utf-8")
                sealed_attrs = seal_directory_attributes(self.keys, parent, name, dattrs)
                s.submit(lambda: client.submit(m.ChangeDirAttributes(change.store_id, dattrs.mtime_ns, sealed_attrs)),
                         on_error=self._fail(path))
        dir_id = change.store_id
        current = _current(listing)
        complete = True
        if prefetched is not None:
            self._indexes = prefetched[1]
        else:
            self._indexes = self._read_indexes(
                self._ask_indexes(dir_id, self._wanted_indexes(dir_id, change.entries, current)))
        new_dirs: list[tuple[bytes, Pending]] = []
        # Subdirectories first: their ids are needed before the scan goes down into them, and waiting for
        # replies sent ahead of this directory's uploads leaves those uploads in flight.
        entries = sorted(change.entries, key=lambda e: not stat.S_ISDIR(e[1].st_mode))
        files = next((i for i, (_, st) in enumerate(entries) if not stat.S_ISDIR(st.st_mode)), len(entries))
        for i, (name, st) in enumerate(entries):
            if i == files and between is not None:
                base, indexes = self._base, self._indexes  # the held-back syncs set their own
                between()
                between = None
                self._base, self._indexes = base, indexes
            sealed = sealing.seal_entry_name(self.keys, dir_id, name)
            existing = current.pop(sealed, None)
            if stat.S_ISDIR(st.st_mode):
                pending = self._sync_subdir(change, dir_id, name, sealed, st, existing)
                if pending is not None:
                    new_dirs.append((name, pending))
            elif not self._sync_file(change, dir_id, name, sealed, st, existing):
                complete = False
            s.keep_alive()
        if between is not None:
            between()
        for sealed, e in current.items():
            self.vanished[e.object_id] = (dir_id, e)
        for name, pending in new_dirs:
            try:
                change.subdir_ids[name] = new_id = pending.result().object_id
                self.fresh.add(new_id)
                s.stats.directories_created += 1
            except (ProtocolError, OSError):
                raise
            except BoxboxError as e:
                self._fail(path)(e)
                complete = False
        change.done = complete

    def _wanted_indexes(self, dir_id: int, entries: list[tuple[bytes, EntryStat]],
                        current: dict[bytes, Entry]) -> list[bytes]:
        """Sealed names of the changed files that will be diffed: their block indexes are fetched
        together (one wait per directory, or per `flush`, not one per file)."""
        s = self.session
        if not s.accepts_diffs or s.store_full:
            return []
        threshold = self.settings.diffing_upload_size_threshold
        wanted = []
        for name, st in entries:
            if not stat.S_ISREG(st.st_mode) or st.st_size < threshold:
                continue
            sealed = sealing.seal_entry_name(self.keys, dir_id, name)
            e = current.get(sealed)
            if e is not None and e.flags & FILE and e.mtime_ns != st.st_mtime_ns:
                wanted.append(sealed)
        return wanted

    def _ask_indexes(self, dir_id: int, wanted: list[bytes]) -> list[tuple[bytes, Pending]]:
        return [(sealed, self.session.client.submit(m.GetBlockIndexByName(dir_id, sealed), download=True))
                for sealed in wanted]

    @staticmethod
    def _read_indexes(asked: list[tuple[bytes, Pending]]) -> dict[bytes, tuple[int, bytes] | BoxboxError]:
        indexes: dict[bytes, tuple[int, bytes] | BoxboxError] = {}
        for sealed, pending in asked:  # in order: each reply's stream is read before the next reply
            try:
                reply, stream = pending.result()
                indexes[sealed] = (reply.object_id, stream.read())
            except (ProtocolError, OSError):
                raise
            except BoxboxError as e:
                indexes[sealed] = e
        return indexes

    def _list(self, dir_id: int) -> Directory:
        # Not drained first: the store runs requests in order, so the listing includes every change
        # sent before it; the callbacks of earlier replies run when the window collects them.
        # without the entries' sealed attributes (half a listing's bytes): the attribute hash is enough
        return Directory.parse(self.session.client.list_directory(dir_id, flags_not_set=OLD | DELETED,
                                                                  attributes=False))

    def _sync_subdir(self, change: Change, dir_id: int, name: bytes, sealed: bytes, st: EntryStat,
                     existing: Entry | None) -> Pending | None:
        s = self.session
        client = s.client
        path = _join(change.path, name)
        if existing is not None and existing.flags & DIR:
            change.subdir_ids[name] = existing.object_id
            return None
        if existing is not None:  # a file became a directory
            s.submit(lambda: client.submit(m.DeleteFile(dir_id, sealed)), on_error=self._fail(change.path))
        attrs = self._dir_attributes(path, self._base + b"/" + name, st)
        if attrs is None:
            return None
        sealed_attrs = seal_directory_attributes(self.keys, dir_id, name, attrs)
        old_id = None
        previous = self.state.records
        if len(previous):
            old_id = previous.store_id_by_inode(st.st_ino)
        if old_id and old_id not in self.moved_ids and old_id != dir_id:
            try:
                s.drain()
                old = Directory.parse(client.list_directory(old_id, attributes=False))
                if old.container_id:
                    client.move_object(old_id, old.container_id, dir_id, sealed, place=sealed_attrs)
                    self.moved_ids.add(old_id)
                    self.vanished.pop(old_id, None)
                    change.subdir_ids[name] = old_id
                    s.stats.moved += 1
                    log.info("%s:%s: moved on the store (directory renamed)", self.name, os.fsdecode(path))
                    return None
            except (ProtocolError, OSError):
                raise
            except BoxboxError as e:
                log.info("%s:%s: not moved (%s); creating it", self.name, os.fsdecode(path), e)
        # No current entry has the name (it was not in the listing, or was just deleted above), so the
        # server makes a new, empty directory: the caller marks it fresh and never lists it.
        return client.submit(m.CreateDirectory(dir_id, attrs.mtime_ns, sealed, sealed_attrs))

    def _sync_file(self, change: Change, dir_id: int, name: bytes, sealed: bytes, st: EntryStat,
                   existing: Entry | None) -> bool:
        """One non-directory entry; False if it is left for a later run (too young, failed)."""
        s = self.session
        client = s.client
        path = _join(change.path, name)
        full = self._base + b"/" + name
        try:
            attrs = attributes_from_path(full, st)
        except (OSError, BoxboxError) as e:
            self._read_error(path, f"cannot read attributes: {getattr(e, 'strerror', None) or e}")
            return True  # not retried until it changes: the notify script reports it
        if existing is not None and existing.flags & DIR:  # a directory became a file
            if existing.object_id not in self.moved_ids:  # (not one this run moved elsewhere)
                s.submit(lambda: client.submit(m.DeleteDirectory(existing.object_id)), on_error=self._fail(change.path))
            existing = None
        tracked = stat.S_ISREG(st.st_mode) and st.st_size >= self.settings.file_tracking_size_threshold
        if existing is not None and existing.mtime_ns == st.st_mtime_ns:
            if tracked:
                self.state.inodes.set(st.st_ino, existing.object_id)
            if existing.attr_hash == entry_attribute_hash(self.keys, name, attrs):
                return True
            entry = make_entry(self.keys, dir_id, name, existing.object_id, FILE, attrs)
            s.submit(lambda: client.submit(_move(existing.object_id, dir_id, dir_id, sealed, entry)),
                     lambda _: _count(s.stats, "attributes_changed"), self._fail(change.path))
            return True
        if tracked and existing is None and not s.store_full:
            # a rename is sorted out at the end of the run (before any lazy-mode wait: the old name
            # is deleted at the end of this run, so the new one must not wait hours to appear)
            old_id = self.state.inodes.get(st.st_ino)
            if old_id:
                self.renamed.append((old_id, dir_id, name, st, path))
                return True
        if self.settings.lazy and not self.force:
            since = self.state.pending.get(path)
            if not upload_due(st.st_mtime, st.st_ctime, self.now, since, minimum_file_age=self.settings.minimum_file_age,
                              max_upload_wait=self.settings.max_upload_wait,
                              max_file_time_in_future=self.settings.max_file_time_in_future):
                self.pending[path] = self.now if since is None else since
                s.stats.waiting += 1
                return False
        if s.store_full:
            return False
        return self._upload(dir_id, name, sealed, st, attrs, existing, path, full, tracked)

    def _upload(self, dir_id: int, name: bytes, sealed: bytes, st: EntryStat, attrs: Attributes,
                existing: Entry | None, path: bytes, full: bytes, tracked: bool) -> bool:
        s = self.session
        client = s.client
        entry = make_entry(self.keys, dir_id, name, 0, FILE, attrs)
        f = None
        if stat.S_ISREG(st.st_mode):
            try:
                f = open(full, "rb", buffering=0)
            except OSError as e:
                self._read_error(path, f"cannot read: {e.strerror}")
                return True
        try:
            source = None
            diff_stats: dict[str, int] = {}
            if (f is not None and existing is not None and s.accepts_diffs
                    and st.st_size >= self.settings.diffing_upload_size_threshold):
                source = self._diff_source(dir_id, name, sealed, f, st, attrs, diff_stats)
            diff_from = source[0] if source else 0
            stream = source[1] if source else whole_file(self.keys, f, st, container_id=dir_id, name=name,
                                                         attributes=attrs, cipher=self.settings.cipher,
                                                         limit=s.limit)
            request = _store_file(dir_id, sealed, entry, diff_from)

            def on_ok(reply: Any) -> None:
                s.stats.files_uploaded += 1
                s.stats.file_bytes += st.st_size
                s.stats.new_bytes += diff_stats.get("new_bytes", st.st_size) if diff_from else st.st_size
                s.stats.diffs += bool(diff_from)
                if tracked:
                    self.state.inodes.set(st.st_ino, reply.object_id)

            failed = self._fail(path, os.path.dirname(path))

            def on_error(e: BoxboxError) -> None:
                """A diff is pipelined like any upload; one the server refuses is sent whole by `finish`."""
                if not (diff_from and isinstance(e, UsageError) and "diff" in str(e)):
                    failed(e)
                    return
                if s.accepts_diffs:
                    log.info("the server refuses diff uploads (%s): uploading whole files", e)
                s.accepts_diffs = False
                self._refused.append((dir_id, name, sealed, st, path))

            try:
                s.submit(lambda: client.submit(request, upload=stream), on_ok, on_error)
            except FileChanged as e:
                log.info("%s:%s: %s; retried next run", self.name, os.fsdecode(path), e)
                self.failed_paths.add(os.path.dirname(path))
                return False
            except LocalReadError as e:
                self._read_error(path, str(e))
                return True
            except (ProtocolError, OSError):
                raise
            except BoxboxError as e:
                self._fail(path, os.path.dirname(path))(e)
                return False
        finally:
            if f is not None:
                f.close()
        return True

    def _diff_source(self, dir_id: int, name: bytes, sealed: bytes, f: Any, st: EntryStat, attrs: Attributes,
                     stats: dict[str, int]) -> tuple[int, Any] | None:
        s = self.session
        try:
            fetched = self._indexes.pop(sealed, None)
            if isinstance(fetched, BoxboxError):
                raise fetched
            if fetched is None:  # not fetched with its directory (a renamed file, in finish)
                s.drain()
                object_id, stream = s.client.get_block_index_by_name(dir_id, sealed)
                fetched = (object_id, stream.read())
            object_id, blob = fetched
            index = open_index(self.keys, blob, container_id=dir_id, name=name)
        except (ProtocolError, OSError):
            raise
        except BoxboxError as e:
            log.info("no usable older version to diff against (%s): uploading whole", e)
            return None
        deadline = time.monotonic() + self.settings.maximum_diffing_time
        return object_id, diff_file(self.keys, f, st, index, object_id, container_id=dir_id, name=name,
                                    attributes=attrs, cipher=self.settings.cipher, limit=s.limit,
                                    deadline=deadline, stats=stats)

    # ------------------------------------------------------------ end of run
    def finish(self) -> None:
        """Refused diffs are uploaded whole; renamed files become moves where their old entry vanished,
        the rest are uploaded; then deletions."""
        s = self.session
        client = s.client
        self.flush()
        s.drain()
        threshold = self.settings.file_tracking_size_threshold
        for dir_id, name, sealed, st, path in self._refused:
            full = self._full(os.path.dirname(path), name)
            try:
                attrs = attributes_from_path(full, st)
            except (OSError, BoxboxError) as e:
                self._read_error(path, f"cannot read attributes: {getattr(e, 'strerror', None) or e}")
                continue
            self._upload(dir_id, name, sealed, st, attrs, None, path, full, st.st_size >= threshold)
        self._refused = []
        for old_id, dir_id, name, st, path in self.renamed:
            full = self._full(os.path.dirname(path), name)
            sealed = sealing.seal_entry_name(self.keys, dir_id, name)
            try:
                attrs = attributes_from_path(full, st)
            except (OSError, BoxboxError) as e:
                self._read_error(path, f"cannot read attributes: {getattr(e, 'strerror', None) or e}")
                continue
            old = self.vanished.get(old_id)
            if old is not None and old[1].mtime_ns == st.st_mtime_ns and old[1].flags & FILE:
                try:
                    self._move_file(old_id, old[0], dir_id, name, sealed, attrs)
                    del self.vanished[old_id]
                    self.state.inodes.set(st.st_ino, old_id)
                    s.stats.moved += 1
                    continue
                except (ProtocolError, OSError):
                    raise
                except BoxboxError as e:
                    log.info("%s:%s: not moved (%s); uploading", self.name, os.fsdecode(path), e)
            if s.store_full:
                self.failed_paths.add(os.path.dirname(path))  # its directory is retried next run
            else:
                self._upload(dir_id, name, sealed, st, attrs, None, path, full, True)
        s.drain()
        for object_id, (dir_id, e) in self.vanished.items():
            if object_id in self.moved_ids:
                continue
            request = m.DeleteDirectory(object_id) if e.flags & DIR else m.DeleteFile(dir_id, e.sealed_name)
            s.submit(lambda r=request: client.submit(r), lambda _: _count(s.stats, "deleted"),
                     lambda err: log.info("delete of %#x failed: %s", object_id, err))
        s.drain()

    def _move_file(self, object_id: int, from_dir: int, to_dir: int, name: bytes, sealed: bytes,
                   attrs: Attributes) -> None:
        """Move a stored file to a new name: re-sealed entry attributes and a new place for the object."""
        client = self.session.client
        blob = client.get_block_index(object_id).read()
        if len(blob) < FILE_HEADER.size:
            raise NotFound(f"file {object_id:#x}: index of {len(blob)} bytes")
        uid = blob[8:24]
        entry = make_entry(self.keys, to_dir, name, object_id, FILE, attrs)
        place = seal_place(self.keys, uid, to_dir, name, attrs)
        client.move_object(object_id, from_dir, to_dir, sealed, entry_attributes=entry.sealed_attributes,
                           attributes_hash=entry.attr_hash, place=place)
        log.info("moved %#x on the store (file renamed)", object_id)

    def settle(self, scanner: Scanner) -> None:
        """After a complete scan: directories with a failed upload are not recorded as in sync."""
        for path in self.failed_paths:
            index = scanner.records.find(path)
            if index is not None:
                scanner.records.set_checksum(index, NO_CHECKSUM)
        for path in self._stale_paths:  # created again next run (the parent is not deferred then)
            index = scanner.records.find(path)
            if index is not None:
                scanner.records.set_store_id(index, 0)
        self.state.pending = self.pending


def _current(listing: Directory | None) -> dict[bytes, Entry]:
    """A listing's current entries by sealed name."""
    return {e.sealed_name: e for e in listing.entries if not e.flags & (OLD | DELETED)} if listing is not None else {}


def _count(stats: RunStats, name: str) -> None:
    setattr(stats, name, getattr(stats, name) + 1)


def _store_file(dir_id: int, sealed: bytes, entry: Entry, diff_from: int) -> m.StoreFile:
    return m.StoreFile(dir_id, entry.mtime_ns, entry.attr_hash, diff_from, sealed, entry.sealed_attributes)


def _move(object_id: int, from_dir: int, to_dir: int, sealed: bytes, entry: Entry) -> m.MoveObject:
    """An attribute-only change: the entry moved onto itself with re-sealed attributes (the place is unchanged)."""
    return m.MoveObject(object_id, from_dir, to_dir, 0, entry.attr_hash, sealed, entry.sealed_attributes, b"")
