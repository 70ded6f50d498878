"""Restore a remote directory tree (or one file) to local disc: streamed, verified, never outside.

Order of work, chosen for speed and safety:

1. the remote tree is listed breadth first, LIST_BATCH directories in one pipelined batch;
   every name is checked (`target.check_name`) and every directory id visited once (a store
   that makes a directory its own descendant cannot loop us);
2. the batch's directories are created (mode 0700 until the end, so the restore can write
   into them), then
3. the batch's regular files are downloaded, and forgotten, before the next batch is listed:
   the restore holds the entries of LIST_BATCH directories, not of the whole tree (10,000
   files held ~8 MB, a fifth of the client's peak RSS). `--at` lists the whole tree first
   (which directories existed is known only then). Downloads keep WINDOW requests in flight:
   while one file streams through verify -> decrypt -> write into its temporary file, the
   next requests are already on their way, so small files do not cost a round trip each.
   A file that fails its checks
   is discarded (its temporary file removed) and never gets its name;
   Hard links: names whose attributes carry the same link id (one inode at backup time, and
   the same version: mtime and size agree) form a group; only its first name is downloaded,
   every later one is `link(2)`ed to it afterwards, through directory descriptors, never
   following a symlink. A name whose first name could not be restored is downloaded as a
   file of its own (and reported), becoming the first name of the rest of its group;
4. symlinks, fifos, sockets and devices (from their entries' attributes, nothing to download;
   hard-linked ones are linked the same way);
5. directory modes, owners and times, deepest first, so nothing written later changes them;
6. one `sync()` makes everything durable (see `_sync`).

`resume`: a file whose name exists as a finished restore leaves it (right type and mtime; a
name is only ever given to a complete, verified file with its metadata) is not downloaded
again, and serves as the first name of its link group; stray temporary files are removed.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator

from boxbox.errors import BoxboxError, IntegrityError, UsageError
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.file import decode_file
from boxbox.restore import target
from boxbox.restore.progress import Progress
from boxbox.restore.remote import Listing, Remote, RemoteEntry, select
from boxbox.restore.names import check_name, describe
from boxbox.restore.target import TempFile, Writer
from boxbox.wire import messages as m
from boxbox.wire.client import Pending

#: download requests in flight (topped up half a window at a time); 16 hides the round trip for
#: small files, deeper gained nothing here
WINDOW = 16
#: directories listed per pipelined batch, whose files are restored before the next batch is
#: listed: it bounds the entries held (1,094 of vs_boxbackup's 10,156 files; 38.7 MiB RSS with 64, 36.5 with 16)
LIST_BATCH = 16
#: directory descriptors kept open (LRU); the rest are reopened one component at a time
FD_CACHE = 64
#: link(2) errors that mean "no hard link possible here" (file system, link count), not "refused"
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV)


@dataclass
class Options:
    deleted: bool = False
    resume: bool = False
    continue_on_error: bool = False
    at_ns: int | None = None
    window: int = WINDOW


@dataclass
class Summary:
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    directories: int = 0
    nodes: int = 0
    downloaded: int = 0
    links: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self, verb: str = "restored") -> str:
        from boxbox.restore.progress import human_bytes, human_seconds

        rate = self.bytes / self.seconds if self.seconds > 0 else 0.0
        text = (f"{verb} {self.files} files ({human_bytes(self.bytes)}), {self.directories} directories, "
                f"{self.nodes} links and special files in {human_seconds(self.seconds)} "
                f"({human_bytes(rate)}/s); {len(self.errors)} errors")
        if self.links:
            text += f"; {self.links} names made as hard links"
        if self.skipped:
            text += f"; {self.skipped} files already restored"
        return text


class _Dir:
    __slots__ = ("path", "parent", "name", "dir_id", "attrs", "names")

    def __init__(self, path: bytes, parent: int, name: bytes, dir_id: int) -> None:
        self.path = path
        self.parent = parent
        self.name = name
        self.dir_id = dir_id
        self.attrs: Attributes | None = None
        self.names: set[bytes] = set()


class _Fds:
    """Directory descriptors by directory index, opened O_NOFOLLOW one component at a time."""

    def __init__(self, dirs: list[_Dir], root_fd: int) -> None:
        self.dirs = dirs
        self.root_fd = root_fd
        self.cache: OrderedDict[int, int] = OrderedDict()

    def get(self, i: int) -> int:
        if i == 0:
            return self.root_fd
        fd = self.cache.get(i)
        if fd is not None:
            self.cache.move_to_end(i)
            return fd
        path = []  # up to the nearest open ancestor, then down again (no recursion: trees may be deep)
        while i and i not in self.cache:
            path.append(i)
            i = self.dirs[i].parent
        fd = self.get(i)
        for j in reversed(path):
            fd = target.open_dir(fd, self.dirs[j].name)
            self.put(j, fd)
        return fd

    def put(self, i: int, fd: int) -> None:
        self.cache[i] = fd
        while len(self.cache) > FD_CACHE:
            os.close(self.cache.popitem(last=False)[1])

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()


class Restore:
    """One restore of remote directory `dir_id` (named `name` in its parent) into `local`."""

    def __init__(self, remote: Remote, options: Options, progress: Progress | None = None,
                 writer: Writer | None = None) -> None:
        self.remote = remote
        self.options = options
        self.progress = progress or Progress(None)
        self.writer = writer or Writer()
        self.summary = Summary()
        self.dirs: list[_Dir] = []
        self.files: list[tuple[int, RemoteEntry]] = []
        self.nodes: list[tuple[int, RemoteEntry]] = []
        #: (directory index, name) of each link group's first name -> restored (or found restored)
        self.leaders: dict[tuple[int, bytes], bool] = {}
        #: each link group's first name (across batches), and the later names waiting for `_link_all`
        self.link_first: dict[tuple[int, int, int], tuple[int, bytes]] = {}
        self.links: list[tuple[int, RemoteEntry, tuple[int, bytes]]] = []
        self.link_notes: list[str] = []
        self.done_files = 0
        self.total_files = 0
        self.total_bytes = 0
        self._counted: set[tuple[int, int, int]] = set()  # link groups in total_bytes
        #: most regular-file entries held at once (one listed batch; the whole tree with --at)
        self.held_files = 0

    def fail(self, path: bytes, error: BaseException) -> None:
        """Record a problem with one item; without --continue-on-error it ends the restore."""
        text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        message = f"{describe(path)}: {text}"
        if not self.options.continue_on_error:
            cls = type(error) if isinstance(error, BoxboxError) else BoxboxError
            raise cls(message, hint="--continue-on-error restores the rest and lists every problem")
        self.summary.errors.append(message)

    # ------------------------------------------------------------ 1. walk
    def walk(self, dir_id: int, name: bytes) -> None:
        """List the whole tree at once (compare, and restores at a point in time, need all of it)."""
        for _ in self._batches(dir_id, name):
            pass
        if self.options.at_ns is not None:
            self._prune_empty_at()
        self.total_files = self.total_bytes = 0
        self._counted.clear()
        self._count(self.files)
        self.progress.total_files, self.progress.total_bytes = self.total_files, self.total_bytes

    def _batches(self, dir_id: int, name: bytes) -> Iterator[list[int]]:
        """List the tree breadth first, LIST_BATCH directories a round trip; yield each listed batch.

        After each yield, `self.files` holds the regular files of that batch only: the caller
        restores them and clears the list before the next batch is listed, so the restore holds
        the entries of LIST_BATCH directories, not of the whole tree (10,000 files held ~8 MB).
        """
        self.dirs = [_Dir(b"", -1, name, dir_id)]
        seen = {dir_id}
        todo: deque[int] = deque([0])
        held = 0
        while todo:
            batch = [todo.popleft() for _ in range(min(LIST_BATCH, len(todo)))]
            results = self.remote.list_many([(self.dirs[i].dir_id, self.dirs[i].name) for i in batch])
            for i, listing in zip(batch, results):
                if isinstance(listing, BoxboxError):
                    self.fail(self.dirs[i].path, listing)
                    continue
                todo.extend(self._take(i, listing, seen))
            self._count(self.files[held:])
            held = len(self.files)  # (with --at nobody clears them between batches)
            self.held_files = max(self.held_files, held)
            if not todo:  # the whole tree is listed: now the progress line can show totals and an ETA
                self.progress.total_files = self.total_files
                self.progress.total_bytes = self.total_bytes
            yield batch
            held = len(self.files)

    def _count(self, files: list[tuple[int, RemoteEntry]]) -> None:
        """Totals for the progress line: every name, the bytes of each link group once."""
        self.total_files += len(files)
        for _, e in files:
            link_id = e.attributes.link_id if e.attributes is not None else 0
            if link_id:
                group = (link_id, e.mtime_ns, e.size_blocks)
                if group in self._counted:
                    continue
                self._counted.add(group)
            self.total_bytes += e.size_blocks * 4096

    def _take(self, i: int, listing: Listing, seen: set[int]) -> list[int]:
        d = self.dirs[i]
        d.attrs = listing.attributes
        for error in listing.errors:
            self.fail(d.path, IntegrityError(error))
        children = []
        for e in select(listing, at_ns=self.options.at_ns, deleted=self.options.deleted):
            path = d.path + b"/" + e.name if d.path else e.name
            try:
                check_name(e.name, f"directory {describe(d.path)}")
                if e.name in d.names:
                    raise IntegrityError(f"the store lists {e.name[:80]!r} twice; only the first is restored")
                if e.is_dir and e.object_id in seen:
                    raise IntegrityError(f"directory {e.object_id:#x} appears twice in the tree (a loop); skipped")
            except IntegrityError as err:
                self.fail(d.path, err)
                continue
            d.names.add(e.name)
            if e.is_dir:
                seen.add(e.object_id)
                self.dirs.append(_Dir(path, i, e.name, e.object_id))
                children.append(len(self.dirs) - 1)
            elif e.attributes is None or e.attributes.file_type is FileType.REGULAR:
                self.files.append((i, e))
            else:
                self.nodes.append((i, e))
        return children

    def _prune_empty_at(self) -> None:
        """At a point in time, drop directories changed after it that hold nothing from before it.

        A directory's mtime moves with its contents, so it cannot say when it was made; one
        with nothing restorable and a later mtime most likely did not exist yet.
        """
        at = self.options.at_ns or 0
        used = {i for i, _ in self.files} | {i for i, _ in self.nodes}
        keep = [True] * len(self.dirs)
        for i in range(len(self.dirs) - 1, 0, -1):
            d = self.dirs[i]
            if i not in used and d.attrs is not None and d.attrs.mtime_ns > at:
                keep[i] = False
            else:
                used.add(d.parent)
        if not all(keep):
            index = {}
            kept = []
            for i, d in enumerate(self.dirs):
                if keep[i] and (i == 0 or d.parent in index):
                    index[i] = len(kept)
                    if i:
                        d.parent = index[d.parent]
                    kept.append(d)
            self.dirs = kept
            self.files = [(index[i], e) for i, e in self.files if i in index]
            self.nodes = [(index[i], e) for i, e in self.nodes if i in index]

    # ------------------------------------------------------------ 2-5. write
    def run(self, dir_id: int, name: bytes, local: str | os.PathLike[str]) -> Summary:
        bytes_before = self.remote.client.conn.bytes_in
        batches: Iterator[list[int]] = self._batches(dir_id, name)
        if self.options.at_ns is None:
            first = [next(batches)]  # the top is listed before LOCAL_DIR is made: a bad path makes nothing
        else:  # which directories to leave out is known only once the whole tree is listed
            self.walk(dir_id, name)
            first, batches = [list(range(len(self.dirs)))], iter(())
        root_fd = target.open_target(local, self.options.resume)
        fds = _Fds(self.dirs, root_fd)
        try:
            for batch in itertools.chain(first, batches):
                self._make_dirs(fds, batch)
                self._download(fds)
            self._link_all(fds)
            self._make_nodes(fds)
            self._finish_dirs(fds)
            self._sync()
        finally:
            self.writer.close()
            fds.close()
            os.close(root_fd)
            self.progress.clear()
            self.summary.downloaded = self.remote.client.conn.bytes_in - bytes_before
            self.summary.seconds = self.progress.elapsed()
            self.summary.warnings = self.writer.warnings + self.link_notes
        return self.summary

    def _sync(self) -> None:
        """Make the restore durable with one sync(2) at the end, not an fsync per file.

        fsync per file cost 0.55 ms each here (11 s for 20,000 files, more than the whole
        restore); fsync of the directories alone would not do on ext4 with delayed allocation,
        where a name and its mtime can reach the disc before the data, and `--resume` trusts a
        name with the right mtime. sync() after 60 MB took 40 ms here. A crash before it leaves
        at most files a `--resume` rewrites: nothing is lost that the store does not still hold.
        """
        if self.summary.files or self.summary.nodes:
            os.sync()

    def _make_dirs(self, fds: _Fds, batch: list[int]) -> None:
        for i in batch:
            d = self.dirs[i]
            if i:
                try:
                    fd = self.writer.make_dir(fds.get(d.parent), d.name, self.options.resume)
                except OSError as e:
                    self.fail(d.path, e)
                    d.dir_id = 0  # nothing goes into it
                    continue
                fds.put(i, fd)
            if self.options.resume:
                fd = fds.get(i)
                os.fchmod(fd, 0o700)  # an earlier run may have finished it read-only
                self.writer.remove_strays(fd, d.names)
            d.names = set()  # only needed while its listing was taken, and for the strays
            self.summary.directories += 1

    def _download(self, fds: _Fds) -> None:
        """The files of one listed batch, then forget them.

        Current versions by GetObject (the server skips its directory check; we check the
        object against the entry anyway); old versions, and any GetObject that fails, by
        GetFile, which rebuilds a version from its patch chain. Later names of a link group
        wait for `_link_all`, after every batch."""
        files = self._link_groups(self.files, self.link_first, self.links)
        self.files = []
        retry: list[tuple[int, RemoteEntry]] = []
        self.done_files = self._pipeline(fds, files, retry, self.done_files, whole=True)
        self.done_files = self._pipeline(fds, retry, None, self.done_files, whole=False)

    def _link_all(self, fds: _Fds) -> None:
        """Link the later names of each group; a link whose first name failed goes round again
        as a file of its own."""
        links, self.links = self.links, []
        while True:
            orphans, self.done_files = self._link_names(fds, links, self.done_files)
            if not orphans:
                return
            links = []
            files = self._link_groups(orphans, {}, links)
            retry: list[tuple[int, RemoteEntry]] = []
            self.done_files = self._pipeline(fds, files, retry, self.done_files, whole=True)
            self.done_files = self._pipeline(fds, retry, None, self.done_files, whole=False)

    def _link_groups(self, entries: list[tuple[int, RemoteEntry]], first: dict[tuple[int, int, int], tuple[int, bytes]],
                     links: list[tuple[int, RemoteEntry, tuple[int, bytes]]]) -> list[tuple[int, RemoteEntry]]:
        """The names to download; later names of a link group go to `links` with their first name's key.

        `first` maps each group seen so far to its first name (it lives across batches). A
        group is one link id in one version (mtime and size): names of one inode always
        agree, so names that do not (a backup that caught the file between two changes, an
        inode number reused in a `-d` or `--at` restore) are never linked to content that is
        not their own.
        """
        download: list[tuple[int, RemoteEntry]] = []
        for job in entries:
            i, e = job
            link_id = e.attributes.link_id if e.attributes is not None else 0
            if link_id:
                group = (link_id, e.mtime_ns, e.size_blocks)
                lead = first.get(group)
                if lead is not None:
                    links.append((i, e, lead))
                    continue
                first[group] = self._leader(i, e)
            download.append(job)
        return download

    def _leader(self, i: int, e: RemoteEntry) -> tuple[int, bytes]:
        """Register (directory index, name) as the first name of a link group, not restored yet."""
        key = (i, e.name)
        self.leaders[key] = False
        return key

    def _link_names(self, fds: _Fds, links: list[tuple[int, RemoteEntry, tuple[int, bytes]]], done_files: int
                    ) -> tuple[list[tuple[int, RemoteEntry]], int]:
        """Link each later name of a group to its first name; those whose first name failed are returned."""
        orphans: list[tuple[int, RemoteEntry]] = []
        for i, e, (li, lname) in links:
            d = self.dirs[i]
            if not d.dir_id:
                continue
            path = d.path + b"/" + e.name if d.path else e.name
            if not self.leaders.get((li, lname)):
                lead = self.dirs[li].path + b"/" + lname if self.dirs[li].path else lname
                self.link_notes.append(f"{describe(path)}: a hard link of {describe(lead)}, which was not restored; "
                                       "restored as a separate file")
                orphans.append((i, e))
                continue
            try:
                dst_fd = fds.get(i)
                if self.options.resume and self.writer.already_restored(dst_fd, e.name, e.attributes):
                    self.summary.skipped += 1
                else:
                    src_fd = os.dup(fds.get(li))  # its own descriptor: opening dst_fd's path may evict the cached one
                    try:
                        self.writer.link(src_fd, lname, fds.get(i), e.name)
                    finally:
                        os.close(src_fd)
                    self.summary.files += 1
                    self.summary.links += 1
            except OSError as err:
                if err.errno in _NO_LINKS:
                    self.link_notes.append(f"{describe(path)}: cannot be a hard link here ({err.strerror}); "
                                           "restored as a separate file")
                    orphans.append((i, e))
                else:
                    self.fail(path, err)
                continue
            done_files += 1
            self.progress.update(done_files, self.summary.bytes)
        return orphans, done_files

    def _pipeline(self, fds: _Fds, files: list[tuple[int, RemoteEntry]], retry: list[tuple[int, RemoteEntry]] | None,
                  done_files: int, whole: bool) -> int:
        client = self.remote.client
        queue: deque[tuple[int, RemoteEntry, Pending, bool, Future[tuple[TempFile, bytes]] | None]] = deque()
        jobs = iter(files)

        def refill() -> None:
            nonlocal done_files
            while len(queue) < self.options.window:
                job = next(jobs, None)
                if job is None:
                    return
                i, e = job
                d = self.dirs[i]
                if not d.dir_id:
                    continue
                if self.options.resume and self.writer.already_restored(fds.get(i), e.name, e.attributes):
                    self.summary.skipped += 1
                    done_files += 1
                    if (i, e.name) in self.leaders:
                        self.leaders[(i, e.name)] = True
                    continue
                raw = whole and not e.old and retry is not None
                request = m.GetObject(e.object_id) if raw else m.GetFile(d.dir_id, e.object_id)
                try:
                    temp = self.writer.create_temp_ahead(fds.get(i))
                except OSError:
                    temp = None  # (made, or failed with its path named, by _one_file)
                queue.append((i, e, client.submit(request, download=True), raw, temp))

        refill()
        try:
            while queue:
                i, e, pending, raw, temp = queue.popleft()
                if len(queue) < self.options.window // 2:
                    # half a window at a time: one write (and one wake-up of the server) per 8 requests
                    # rather than per file; they go out with the flush inside pending.result()
                    refill()
                if not self._one_file(fds, i, e, pending, raw, temp) and retry is not None:
                    retry.append((i, e))
                    continue
                done_files += 1
                self.progress.update(done_files, self.summary.bytes)
        finally:
            for i, _, _, _, temp in queue:  # cut short: remove the temps made ahead for the rest
                made = _made(temp)
                if made is not None:
                    with contextlib.suppress(OSError):
                        self.writer.discard_temp(fds.get(i), *made)
        return done_files

    def _one_file(self, fds: _Fds, i: int, e: RemoteEntry, pending: Pending, may_retry: bool,
                  temp: Future[tuple[TempFile, bytes]] | None) -> bool:
        """Decode one reply into a temporary file (made ahead, or now) and give it its name; False: try again
        with GetFile."""
        d = self.dirs[i]
        path = d.path + b"/" + e.name if d.path else e.name
        try:
            dir_fd = fds.get(i)
            made = _made(temp)
            f, tmp = made if made is not None else self.writer.create_temp(dir_fd)
        except OSError as err:
            self.fail(path, err)  # its reply is drained when the next one is read
            return True
        try:
            _, stream = pending.result()
            decoded = decode_file(self.remote.keys, stream, f, label=describe(path), container_id=d.dir_id,
                                  name=e.name)
        except BoxboxError as err:
            self.writer.discard_temp(dir_fd, f, tmp)
            if may_retry:
                return False
            self.fail(path, err)
            return True
        except BaseException:
            self.writer.discard_temp(dir_fd, f, tmp)
            raise
        attrs = e.attributes or decoded.attributes
        if attrs.file_type is not FileType.REGULAR:  # an entry without attributes: the object says what it is
            self.writer.discard_temp(dir_fd, f, tmp)
            self.nodes.append((i, RemoteEntry(e.object_id, e.flags, e.name, attrs, e.mtime_ns, e.size_blocks,
                                              e.newer, e.older)))
            return True
        try:
            self.writer.commit_file(dir_fd, f, tmp, e.name, attrs)
        except OSError as err:
            self.fail(path, err)
            return True
        self.summary.files += 1
        self.summary.bytes += decoded.size
        if (i, e.name) in self.leaders:
            self.leaders[(i, e.name)] = True
        return True

    def _make_nodes(self, fds: _Fds) -> None:
        """Symlinks and special files; a later name of a hard-linked one is linked to the first."""
        first: dict[tuple[int, int, int, bytes, int], tuple[int, bytes]] = {}  # group -> node made or found
        for i, e in self.nodes:
            d = self.dirs[i]
            attrs = e.attributes
            if not d.dir_id or attrs is None:
                continue
            path = d.path + b"/" + e.name if d.path else e.name
            # one inode in one version, as for files (see _link_groups)
            group = (attrs.link_id, attrs.file_type, attrs.mtime_ns, attrs.symlink_target, attrs.rdev)
            lead = first.get(group) if attrs.link_id else None
            try:
                fd = fds.get(i)
                if self.options.resume and self.writer.already_restored(fd, e.name, attrs):
                    made = True
                elif lead is not None:
                    src_fd = os.dup(fds.get(lead[0]))  # as in _link_names
                    try:
                        self.writer.link(src_fd, lead[1], fds.get(i), e.name)
                    finally:
                        os.close(src_fd)
                    self.summary.nodes += 1
                    self.summary.links += 1
                    continue
                else:
                    made = self.writer.make_node(fd, e.name, attrs)
                    self.summary.nodes += made
            except (OSError, IntegrityError) as err:
                self.fail(path, err)
                continue
            if made and attrs.link_id and lead is None:
                first[group] = (i, e.name)

    def _finish_dirs(self, fds: _Fds) -> None:
        for i in range(len(self.dirs) - 1, -1, -1):
            d = self.dirs[i]
            if not d.dir_id or d.attrs is None:
                continue
            try:
                self.writer.set_dir_metadata(fds.get(i), d.attrs)
            except OSError as err:
                self.fail(d.path, err)


def _made(temp: "Future[tuple[TempFile, bytes]] | None") -> tuple[TempFile, bytes] | None:
    """The temp file made ahead, or None if there is none (not asked for, or its name was taken)."""
    if temp is None:
        return None
    try:
        return temp.result()
    except OSError:
        return None


def get_file(remote: Remote, dir_id: int, entry: RemoteEntry, local: str | os.PathLike[str]) -> int:
    """Download one version of one file to `local` (which must not exist); returns its size.

    The local path is the user's; only its last component is created, exclusively.
    """
    head, tail = os.path.split(os.fsencode(local))
    if not tail:
        raise UsageError(f"{os.fsdecode(local)}: expected a file name, not a directory")
    try:
        dir_fd = os.open(head or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"{os.fsdecode(head)}: {e.strerror}") from None
    writer = Writer(as_root=False)
    try:
        if os.path.lexists(os.path.join(head or b".", tail)):
            raise UsageError(f"{os.fsdecode(local)} already exists; not overwritten")
        f, tmp = writer.create_temp(dir_fd)
        try:
            stream = remote.client.get_file(dir_id, entry.object_id)
            decoded = decode_file(remote.keys, stream, f, label=os.fsdecode(entry.name), container_id=dir_id,
                                  name=entry.name)
        except BaseException:
            writer.discard_temp(dir_fd, f, tmp)
            raise
        try:
            writer.commit_file(dir_fd, f, tmp, tail, entry.attributes or decoded.attributes)
        except FileExistsError:
            raise UsageError(f"{os.fsdecode(local)} already exists; not overwritten") from None
        return decoded.size
    finally:
        os.close(dir_fd)


def restore(remote: Remote, chain: list[tuple[bytes, int]], local: str | os.PathLike[str], options: Options,
            progress: Progress | None = None) -> Summary:
    """Restore the remote directory at the end of `chain` (from `Remote.resolve`) into `local`."""
    job = Restore(remote, options, progress)
    name, dir_id = chain[-1]
    return job.run(dir_id, name, local)
