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

Nothing is ever written in place to a committed stripe: writes, repairs, deletes and
renames all go through temps that the writer holds an flock on (`boxbox.raidfile.claims`).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from types import TracebackType

from boxbox.atomic import fsync_dir
from boxbox.errors import ProgrammingError
from boxbox.raidfile import claims
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
    xor_bytes,
)
from boxbox.raidfile.reader import CHUNK_BYTES, MAX_RECORDS


def run_parallel(fn, args: list) -> None:  # type: ignore[no-untyped-def]
    """Call fn(arg) for each arg at once (fsyncs on different discs overlap); re-raise the first error."""
    errors: list[BaseException] = []

    def call(arg: object) -> None:
        try:
            fn(arg)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(a,)) for a in args[1:]]
    for t in threads:
        t.start()
    if args:
        call(args[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _writev_all(fd: int, iov: list) -> None:  # type: ignore[type-arg]
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
        self._chunk = max(1, min(MAX_RECORDS, CHUNK_BYTES // unit)) * unit
        self._unit = unit
        self._buf = bytearray()  # a partial chunk waiting for more data
        per = self._chunk // unit  # records per stripe in a whole chunk
        self._crc = bytearray(4 * per)
        self._crcviews = [memoryview(self._crc)[i : i + 4] for i in range(0, 4 * per, 4)]
        self._units_done = 0
        self.length = 0
        self._open = True
        for t in self._targets:
            os.ftruncate(t.fd, 0)
            os.lseek(t.fd, HEADER.size, os.SEEK_SET)

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

    def tell(self) -> int:
        return self.length

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self._open:
            raise ProgrammingError(f"{self.label}: write after commit or abort")
        mv = memoryview(data).cast("B")
        n = len(mv)
        self.length += n
        try:
            if self._buf:
                take = min(n, self._chunk - len(self._buf))
                self._buf += mv[:take]
                mv = mv[take:]
                if len(self._buf) == self._chunk:
                    self._flush()
            whole = len(mv) - len(mv) % self._chunk
            for o in range(0, whole, self._chunk):
                self._emit(mv[o : o + self._chunk])
            self._buf += mv[whole:]
        except BaseException:
            self.abort()
            raise
        return n

    def _flush(self) -> None:
        with memoryview(self._buf) as view:
            self._emit(view)
        self._buf = bytearray()

    def _emit(self, mv: memoryview) -> None:
        """Write whole units of clear data (the tail may be partial) to the stripe temps."""
        B, n, first = self._B, len(mv), self._units_done
        if not self._raid:
            self._put(WHOLE, [mv[o : o + B] for o in range(0, n, B)], first)
            self._units_done += -(-n // B)
            return
        slots1 = [mv[o : o + B] for o in range(0, n, 2 * B)]
        slots2 = [mv[o : o + B] for o in range(B, n, 2 * B)]
        if STRIPE1 in self._by_role:
            self._put(STRIPE1, slots1, first)
        if STRIPE2 in self._by_role:
            self._put(STRIPE2, slots2, first)
        if PARITY in self._by_role:
            pv = memoryview(xor_bytes(b"".join(slots1), b"".join(slots2)))
            self._put(PARITY, [pv[o : o + B] for o in range(0, len(pv), B)], first)
        self._units_done += len(slots1)

    def _put(self, role: int, slots: list[memoryview], first: int) -> None:
        k = len(slots)
        if k == 0:
            return
        seed = self._seeds[role] + first
        struct.pack_into(f"<{k}I", self._crc, 0, *map(zlib.crc32, slots, range(seed, seed + k)))
        iov: list[memoryview | None] = [None] * (2 * k)
        iov[0::2] = slots
        iov[1::2] = self._crcviews[:k]
        _writev_all(self._by_role[role], iov)

    def commit(self) -> None:
        """Publish the new content atomically and durably (see the module docstring for the order)."""
        if not self._open:
            raise ProgrammingError(f"{self.label}: commit after commit or abort")
        try:
            if self._buf:
                self._flush()
            for t in self._targets:
                os.pwrite(t.fd, pack_header(Header(t.role, self._shift, self.write_id, self.length)), 0)
            run_parallel(os.fsync, [t.fd for t in self._targets])
            for t in self._targets:
                os.replace(t.temp, t.final)
            run_parallel(fsync_dir, sorted({os.path.dirname(t.final) for t in self._targets}))
        except BaseException:
            self.abort()
            raise
        self._close()

    @property
    def usage_blocks(self) -> int:
        """Blocks of block_size the committed stripes take (what quotas count)."""
        return Geometry(self.length, self._B).usage_blocks(self._raid, self._B)

    def abort(self) -> None:
        """Drop everything written; the committed file (if any) is untouched. Safe to call twice."""
        if self._open:
            for t in self._targets:
                claims.release(t.fd, t.temp)
            self._targets = []
            self._close()

    def _close(self) -> None:
        for t in self._targets:
            os.close(t.fd)
        for fd, temp in self._extra:
            claims.release(fd, temp)
        self._targets, self._extra = [], []
        self._open = False
        self._buf = bytearray()
