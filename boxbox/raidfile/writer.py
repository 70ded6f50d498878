"""Writing a raidfile: stream into three temps, then commit them with an atomic switch.

Why an overwrite of three files is atomic. Each write draws a fresh random 16-byte write
id and puts it in the header of each of its stripes; a reader uses only stripes that agree
on one id (`boxbox.raidfile.reader`). Commit is:

  1. write the headers (length and write id, now known) at offset 0 of the three temps
  2. fsync the three temps (in parallel: they are normally on three discs)
  3. rename the temps into place in role order: stripe 1, stripe 2, parity
  4. fsync the three directories

Before the 2nd rename at least two committed files carry the old write id, so every reader
gets the old content; from the 2nd rename on at least two carry the new id, so every reader
gets the new content. No moment has two ids each held by two files (there are only three),
so a reader never mixes old and new blocks; the 2nd rename is the commit point. A kill
between renames leaves one file of the losing write: it is "stale", readers ignore it, and
`repair`/`scrub` rewrite it. Temps the dead writer left are recovered on the next open,
check or scrub (`boxbox.raidfile.check.recover_stale`): completed if they belong to the
write the committed files agree on (or make up, with them, the only complete write after
the commit point), otherwise removed. A reader that already holds the old files open keeps
reading the old content (POSIX keeps renamed-over inodes alive while open).

Group commit: `commit(durable=False)` does 1 and 3 only and leaves the writer owing 2 and 4,
which `sync_all` then does for many writers at once (each directory fsynced once). Only for
new names nothing durable refers to before `sync_all` returns: a power cut in between can
leave such a name unreadable (never wrong bytes), which the store's recovery deletes.

Group overwrite: `commit_all(writers)` runs the four steps once for many writers - all temps
sealed, all fsynced together on the pool, then each writer's renames, then each directory
fsynced once - so every name is still old or new after a power cut. `sync_and_commit(owed,
writers)` does `sync_all(owed)` in the same round of fsyncs as the writers' temps, before any
of their renames: a store's sync (new objects, then the directories listing them) waits for the
disc twice instead of four times.

Nothing is ever written in place to a committed stripe: writes, repairs, deletes and
renames all go through temps that the writer holds an flock on (`boxbox.raidfile.claims`).

Speed: per 2 MiB chunk of clear data the Python work is a few list comprehensions of block
views, one `map(zlib.crc32, ...)` and one writev per stripe, and the XOR in 32 KiB pieces
(`kernels.xor_blocks`). Those two primitives hold the GIL (zlib releases it only above 5 KiB)
and are most of the time: ~65 ms XOR + ~27 ms CRC per 64 MiB here. So once a write has passed
`xorproc.MIN_BYTES`, each chunk's parity (XOR, CRCs, its pwritev) is handed to a helper
process on another core (`xorproc.ParityWriter`) while this one writes the data stripes; a
chunk the helper is still too busy to take is done here, so the two cores share the work
whatever their speeds. A writer thread was tried instead: the GIL made it save nothing (median
ratio 0.32 vs 0.33 over 5 interleaved runs) for ~20 ms more CPU per 64 MiB.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from types import TracebackType
from typing import Any, Callable

from boxbox.atomic import fsync_dir
from boxbox.errors import ProgrammingError
from boxbox.raidfile import claims, xorproc
from boxbox.raidfile.kernels import record_iov, split_rows, write_parity
from boxbox.raidfile.layout import (
    HEADER,
    PARITY,
    RAID_ROLES,
    STRIPE1,
    STRIPE2,
    WHOLE,
    Geometry,
    Header,
    crc_seed,
    pack_header,
)
from boxbox.raidfile.reader import CHUNK_BYTES, MAX_RECORDS

# A write at least this big is cut into records straight from the caller's buffer; smaller ones are
# gathered into a chunk first. 32 MiB in 64 KiB writes: 226 MB/s cut directly, 421 MB/s gathered;
# in 1 MiB writes: 497 MB/s directly, 481 MB/s gathered (without commit).
DIRECT_BYTES = 1 << 20
# Start the disc writing every 4 MiB of a stripe (posix_fadvise DONTNEED submits the dirty pages
# without waiting for them, as PostgreSQL's pg_flush_data does where sync_file_range is missing),
# so the disc works while the next rows are computed instead of all at commit: 64 MiB commit's
# fsyncs took 49 ms without it, 9 ms with it.
WRITEBACK_BYTES = 4 << 20
HAVE_FADVISE = hasattr(os, "posix_fadvise")  # not on macOS: there all writeback waits for commit's fsync
# A write at least this big frees the stripes it replaces on a pool thread: the last close of a renamed-over
# inode frees its pages and blocks (ext4: ~40 ms of the ~160 ms commit of 64 MiB replacing 64 MiB, in the
# rename), which the caller need not wait for.
FREE_LATER_BYTES = 1 << 20


# The pool's size: a group's fsyncs go out in this many slices, not one task per file. More slices keep
# more flushes in the disc's queue at once: a barrier of 64 small objects (192 stripes) took 12 ms with 8,
# 9 ms with 24, 11 ms with 64 (3,000 pipelined uploads through a session, ext4 on a virtual disc).
SYNC_THREADS = 24
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """Long-lived workers, made as needed (up to SYNC_THREADS, shared by concurrent sessions).

    Starting fresh threads per commit cost 28 s in Thread.start over 10,300 objects (51,000
    threads) in benchmarks/vs_boxbackup.py's first backup.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="raidfile-sync")
        return _POOL


def run_parallel(fn, args: list) -> None:  # type: ignore[no-untyped-def]
    """Call fn(arg) for each arg at once (fsyncs on different discs overlap); re-raise the first error."""
    futures = [_pool().submit(fn, a) for a in args[1:]]
    first: BaseException | None = None
    if args:
        try:
            fn(args[0])
        except BaseException as e:  # noqa: BLE001 - raised below once the others are done
            first = e
    for f in futures:
        err = f.exception()
        first = first or err
    if first is not None:
        raise first


def _open_existing(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _writev_all(fd: int, iov: list[memoryview]) -> None:
    total = sum(map(len, iov))
    done = os.writev(fd, iov)
    if done < total:
        rest = memoryview(b"".join(iov))[done:]
        while rest:
            rest = rest[os.write(fd, rest):]


class Target:
    """One stripe being written: its role, claimed temp, and the committed name it will take."""

    __slots__ = ("role", "fd", "temp", "final")

    def __init__(self, role: int, fd: int, temp: str, final: str) -> None:
        self.role, self.fd, self.temp, self.final = role, fd, temp, final


class RaidWriter:
    """Streams data into stripe temps without holding the file; commit() publishes it atomically."""

    def __init__(self, label: str, targets: list[Target], block_size: int, write_id: bytes | None = None,
                 extra_claims: list[tuple[int, str]] | None = None) -> None:
        self.label = label
        self._targets = sorted(targets, key=lambda t: t.role)  # rename order: stripe 1, stripe 2, parity
        self._by_role = {t.role: t.fd for t in self._targets}
        self._raid = WHOLE not in self._by_role
        self._extra = extra_claims or []  # temp names held only to keep other changes out
        self._B = block_size
        self._shift = block_size.bit_length() - 1
        self.write_id = write_id if write_id is not None else os.urandom(16)
        self._seeds = {r: crc_seed(self.write_id, r) for r in (*RAID_ROLES, WHOLE)}
        unit = 2 * block_size if self._raid else block_size
        self._chunk = max(1, min(MAX_RECORDS, CHUNK_BYTES // unit)) * unit  # clear bytes per writev
        self._unit = unit
        self._buf = bytearray()  # small writes collected, or the part of a row a big write left over
        self._written = {t.fd: (HEADER.size, 0) for t in self._targets}  # fd -> (end, handed to writeback)
        self._units_done = 0
        self.length = 0
        self._open = True
        self._owed = False  # committed with durable=False, fsyncs not yet done (see sync_all)
        self._parity: xorproc.ParityWriter | None = None  # the helper process writing parity on another core
        self._helper_wanted = self._raid and PARITY in self._by_role and xorproc.AVAILABLE and \
            self._chunk <= xorproc.SLOT_BYTES
        for t in self._targets:
            os.ftruncate(t.fd, 0)

    def __enter__(self) -> RaidWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            self.abort()
        elif getattr(self, "_owed", False):
            self._close()

    def tell(self) -> int:
        return self.length

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Take `data`; whole rows of a big write go to the stripes without being copied first."""
        if not self._open:
            raise ProgrammingError(f"{self.label}: write after commit or abort")
        mv = memoryview(data).cast("B")
        n = len(mv)
        self.length += n
        buf, unit = self._buf, self._unit
        try:
            if buf or n < DIRECT_BYTES:
                # collect small writes into a chunk; a big one only completes the buffered row
                take = min(n, self._chunk - len(buf)) if n < DIRECT_BYTES else -len(buf) % unit
                buf += mv[:take]
                mv = mv[take:]
                if len(buf) == self._chunk or (mv and len(buf) % unit == 0):
                    self._emit(memoryview(buf))
                    buf = self._buf = bytearray()
            whole = len(mv) - len(mv) % unit if len(mv) >= DIRECT_BYTES else 0
            if whole:
                self._emit(mv[:whole])
            buf += mv[whole:]
        except BaseException:
            self.abort()
            raise
        return n

    def _emit(self, mv: memoryview, heads: dict[int, bytes] | None = None) -> None:
        """Write whole rows of clear data (the last row may be partial) to the stripe temps, a chunk per writev;
        the parity of a chunk goes to the helper process first (if this writer has one) to overlap with ours.
        `heads`: headers for the data stripes (by fd) that go out in the same writes (a file written whole at
        commit: one syscall per stripe fewer); the ones used are taken out."""
        B, seeds = self._B, self._seeds
        for o in range(0, len(mv), self._chunk):
            c = mv[o : o + self._chunk]
            first = self._units_done
            if not self._raid:
                self._units_done += -(-len(c) // B)
                self._put(self._by_role[WHOLE], record_iov([c[i : i + B] for i in range(0, len(c), B)],
                                                           seeds[WHOLE] + first), heads)
                continue
            slots1, slots2 = split_rows(c, B)
            self._units_done += len(slots1)
            pfd = self._by_role.get(PARITY)
            if pfd is not None:
                if self._helper_wanted and self.length >= xorproc.MIN_BYTES:
                    self._helper_wanted = False  # one try per writer
                    self._parity = xorproc.ParityWriter.start(pfd, self.label)
                offset, advise = self._advance(pfd, sum(map(len, slots1)) + 4 * len(slots1))
                if self._parity is not None:
                    self._parity.write(c, B, seeds[PARITY] + first, offset, advise)
                else:
                    write_parity(pfd, c, B, seeds[PARITY] + first, offset, advise)
            for role, slots in ((STRIPE1, slots1), (STRIPE2, slots2)):
                if slots and role in self._by_role:
                    self._put(self._by_role[role], record_iov(slots, seeds[role] + first), heads)

    def _put(self, fd: int, iov: list[memoryview], heads: dict[int, bytes] | None = None) -> None:
        n = sum(map(len, iov))
        offset, advise = self._advance(fd, n)
        if offset == HEADER.size:  # the stripe's first write; a claim's fresh descriptor is at offset 0
            head = heads.pop(fd, None) if heads else None
            if head is None:
                os.lseek(fd, HEADER.size, os.SEEK_SET)
            else:
                iov = [memoryview(head), *iov]
        _writev_all(fd, iov)
        if advise:
            os.posix_fadvise(fd, offset + n - advise, advise, os.POSIX_FADV_DONTNEED)

    def _advance(self, fd: int, n: int) -> tuple[int, int]:
        """Account n bytes appended to stripe `fd`: (their offset, bytes before the end to hand to writeback)."""
        end, flushed = self._written[fd]
        advise = 0
        if end + n - flushed >= WRITEBACK_BYTES and HAVE_FADVISE:
            advise, flushed = end + n - flushed, end + n
        self._written[fd] = (end + n, flushed)
        return end, advise

    def commit(self, durable: bool = True) -> None:
        """Publish the new content atomically and durably (see the module docstring for the order).

        With `durable=False` the fsyncs are left owed: the content is visible at once and
        `sync_all([...this writer...])` makes it durable later, together with other writers'
        (group commit). Only for a name with no committed content, that nothing durable
        refers to until that sync: a power loss before it may leave the name unreadable.
        (Overwrites that should share fsyncs use `commit_all`.)
        """
        try:
            self._seal()
            if durable:
                run_parallel(os.fsync, [t.fd for t in self._targets])
        except BaseException:
            self.abort()
            raise
        self._rename(durable)
        if durable:
            try:
                run_parallel(fsync_dir, self.directories())
            except BaseException:
                self.abort()
                raise
            self._close()
        else:
            self._open, self._owed, self._buf = False, True, bytearray()  # the buffer is not held while owed

    def _seal(self) -> None:
        """Step 1: the last buffered rows and the headers into the temps (nothing renamed yet)."""
        if not self._open:
            raise ProgrammingError(f"{self.label}: commit after commit or abort")
        heads = {t.fd: pack_header(Header(t.role, self._shift, self.write_id, self.length)) for t in self._targets}
        if self._buf:
            self._emit(memoryview(self._buf), heads)
            self._buf = bytearray()
        if self._parity is not None:
            self._parity, parity = None, self._parity
            parity.finish()
        for fd, head in heads.items():  # stripes written before (a big file), and parity
            os.pwrite(fd, head, 0)

    def _rename(self, fsynced: bool) -> None:
        """Step 3: rename the temps into place in role order (their data fsynced already if `fsynced`).
        On an error the writer is aborted, the old content kept or the new completed (see below)."""
        renamed = 0
        big = self.length >= FREE_LATER_BYTES
        keep_first = len(self._targets) > 2 and fsynced  # to undo the 1st rename if the 2nd fails (see _undo_first)
        olds: list[int | None] = []  # the stripes being replaced, held open
        try:
            for i, t in enumerate(self._targets):
                olds.append(_open_existing(t.final) if big or (i == 0 and keep_first) else None)
            for t in self._targets:
                os.replace(t.temp, t.final)
                renamed += 1
        except BaseException:
            try:
                if renamed == 1 and len(self._targets) > 2:
                    self._undo_first(olds[0] if olds else None)
                elif 2 <= renamed < len(self._targets):
                    self._leave_for_recovery(renamed)
            finally:
                self.abort()
            raise
        finally:
            for fd in olds:
                if fd is not None:
                    _pool().submit(os.close, fd) if big else os.close(fd)

    def directories(self) -> list[str]:
        """The directories the stripes are (or will be) named in."""
        return sorted({os.path.dirname(t.final) for t in self._targets})

    def _undo_first(self, old_fd: int | None) -> None:
        """The 1st rename went through, the 2nd failed: the old write still holds two stripes, so put
        its stripe 1 back (copied from the renamed-over inode, still open), or remove the new one if
        there was no old file. If that rename fails too, the copy is left as a dead writer's temp,
        which recovery (`recover_stale`) renames into place on the next open."""
        t = self._targets[0]
        if old_fd is None:
            try:
                claims.unlink_if_ours(t.fd, t.final)
            except OSError:
                pass
            return
        fd = claims.claim(t.temp, self.label)
        try:
            size = os.fstat(old_fd).st_size
            off = 0
            while off < size:
                data = os.pread(old_fd, min(CHUNK_BYTES, size - off), off)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                off += len(data)
            os.fsync(fd)
        except BaseException:
            claims.release(fd, t.temp)
            return
        try:
            os.replace(t.temp, t.final)
            fsync_dir(os.path.dirname(t.final))
        except OSError:
            pass  # left for recovery: the claim is dropped without unlinking the temp
        claims.release(fd, None)

    def _leave_for_recovery(self, renamed: int) -> None:
        """A rename after the commit point failed: the new write is in effect. Its remaining temps are
        left (intact, unlocked) for recovery to rename into place on the next open, not unlinked."""
        for t in self._targets[renamed:]:
            claims.release(t.fd, None)
        self._targets = self._targets[:renamed]

    @property
    def usage_blocks(self) -> int:
        """Blocks of block_size the committed stripes take (what quotas count)."""
        return Geometry(self.length, self._B).usage_blocks(self._raid, self._B)

    def abort(self) -> None:
        """Drop everything written; the committed file (if any) is untouched. Safe to call twice."""
        if self._open:
            if self._parity is not None:
                self._parity, parity = None, self._parity
                parity.drop()
            for t in self._targets:
                claims.release(t.fd, t.temp)
            self._targets = []
            self._close()

    def _close(self) -> None:
        self._owed = False
        for t in self._targets:
            os.close(t.fd)
        for fd, temp in self._extra:
            claims.release(fd, temp)
        self._targets, self._extra = [], []
        self._open = False
        self._buf = bytearray()


def _fsync_each(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)


def _run_job(job: tuple[Callable[[Any], None], Any]) -> None:
    job[0](job[1])


def _flush_round(fds: list[int], directories: list[str]) -> None:
    """Fsync the files (in SYNC_THREADS slices) and the directories, all at once on the pool: one wait
    for the disc, not one for the files and then one for the directories."""
    slices = [fds[i::SYNC_THREADS] for i in range(min(SYNC_THREADS, len(fds)))]
    run_parallel(_run_job, [(_fsync_each, s) for s in slices] + [(fsync_dir, d) for d in directories])


def commit_all(writers: list[RaidWriter]) -> None:
    """Commit many writers durably as one group; overwrites allowed (each stays atomic).

    The module docstring's four steps, each for the whole group: seal every writer; fsync every
    stripe temp at once on the pool; rename each writer's temps in role order; fsync each
    directory once. No rename happens before every temp of the group is on disc, so after a
    power cut each name holds its old or its new complete content, never a renamed temp whose
    data was lost, and recovery's rule (a write that reached its first rename had all its temps
    fsynced) holds. Durable when this returns. On an error every writer is done with; those
    renamed before it are in effect (their data fsynced), the rest keep their old content.
    """
    sync_and_commit([], writers)


def sync_and_commit(owed: list[RaidWriter], writers: list[RaidWriter]) -> None:
    """`sync_all(owed)`, then `commit_all(writers)`, with one wait for the disc fewer: the owed stripes,
    the directories they were renamed in and the writers' temps are fsynced in one round, and only then
    is any of the writers renamed. So a writer that names an owed one (a directory listing new objects)
    is renamed only once that one is durable. Any error before the renames fails the whole group: the
    owed writers are done with (nothing may treat them as durable), every writer keeps its old content.
    """
    owed = [w for w in owed if w._owed]
    done = 0
    try:
        try:
            for w in writers:
                w._seal()
            _flush_round([t.fd for w in (*owed, *writers) for t in w._targets],
                         sorted({d for w in owed for d in w.directories()}))
        finally:
            for w in owed:
                w._close()
        for w in writers:
            w._rename(fsynced=True)  # aborts w itself on an error
            done += 1
        run_parallel(fsync_dir, sorted({d for w in writers for d in w.directories()}))
    except BaseException:
        for w in writers[done:]:
            w.abort()
        for w in writers[:done]:
            w._close()
        raise
    for w in writers:
        w._close()


def sync_all(writers: list[RaidWriter]) -> None:
    """Make writers committed with `durable=False` durable, as one group: every stripe and each
    directory they were renamed in (once, not once per file) fsynced in one round on the pool. The
    names are new, so nothing durable refers to them until this returns, and the order of the two
    does not matter.

    The writers are done with whether or not this raises; on an error nothing may yet treat
    their content as durable.
    """
    sync_and_commit(writers, [])
