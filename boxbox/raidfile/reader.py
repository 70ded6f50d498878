"""Reading a raidfile: pick the stripes of one write, verify every block, rebuild what is bad.

A reader opens the committed stripe files of all directories at once and keeps those file
descriptors, so a concurrent overwrite (which renames new files into place) never changes
what it reads. Of the files it opened it uses those whose headers agree on one write id:
three of them normally, two when a stripe is missing, stale (left by an interrupted
overwrite) or has a broken header. Normal reads use the two data stripes; a block that is
short, unreadable (EIO) or fails its CRC is rebuilt from the other data stripe and parity,
block by block, and the damage is logged. Two bad blocks in one row (or a bad block with
no parity to rebuild it from) is an IntegrityError naming the file; never wrong bytes.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field

from boxbox.errors import FormatError, IntegrityError, NotFound, ProgrammingError
from boxbox.raidfile.layout import (
    HEADER,
    PARITY,
    RAID_ROLES,
    ROLE_NAMES,
    STRIPE1,
    STRIPE2,
    WHOLE,
    Geometry,
    Header,
    crc_seed,
    parse_header,
    xor_bytes,
)

log = logging.getLogger(__name__)

_fadvise = getattr(os, "posix_fadvise", None)  # Linux and BSD; a no-op elsewhere
MAX_RECORDS = 512  # records per preadv/writev: two iovecs each, IOV_MAX is 1024 on Linux
CHUNK_BYTES = 2 << 20  # clear bytes decoded at once when reading ahead


@dataclass
class Finals:
    """The committed stripe files of one raidfile, opened together, and the write chosen from them."""

    label: str
    paths: list[str]
    fds: list[int | None]
    headers: list[Header | None]
    problems: list[str | None]  # per directory: why its file is not used, None if it is
    chosen: Header | None = None  # length, block size and write id of the readable write
    by_role: dict[int, int] = field(default_factory=dict)  # role -> directory index

    @property
    def raid(self) -> bool:
        return WHOLE not in self.by_role

    def close(self) -> None:
        for i, fd in enumerate(self.fds):
            if fd is not None:
                os.close(fd)
                self.fds[i] = None


def open_finals(paths: list[str], label: str) -> Finals:
    """Open every committed stripe of a raidfile and choose the write to read; NotFound if none exists."""
    n = len(paths)
    f = Finals(label, paths, [None] * n, [None] * n, ["missing"] * n)
    for i, p in enumerate(paths):
        try:
            f.fds[i] = fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as e:
            f.problems[i] = f"cannot open: {e.strerror}"
            continue
        try:
            f.headers[i] = parse_header(os.pread(fd, HEADER.size, 0))
            f.problems[i] = None
        except FormatError as e:
            f.problems[i] = str(e)
        except OSError as e:
            f.problems[i] = f"read error: {e.strerror}"
    if all(fd is None for fd in f.fds) and all(p == "missing" for p in f.problems):
        raise NotFound(label)
    _choose(f)
    return f


def _choose(f: Finals) -> None:
    """Use the write that at least two stripes agree on (one whole file for a non-RAID write)."""
    valid = [(i, h) for i, h in enumerate(f.headers) if h is not None]
    votes = Counter(h.write_id for _, h in valid if h.role in RAID_ROLES)
    if votes and votes.most_common(1)[0][1] >= 2:
        wid = votes.most_common(1)[0][0]
        for i, h in valid:
            if h.write_id != wid or h.role not in RAID_ROLES:
                f.problems[i] = "stale: left by an interrupted write"
            elif h.role in f.by_role:
                f.problems[i] = f"duplicate {ROLE_NAMES[h.role]}"
            else:
                f.by_role[h.role] = i
        members = [f.headers[i] for i in f.by_role.values()]
        if len(f.by_role) >= 2 and len({(h.length, h.block_shift) for h in members if h}) == 1:
            f.chosen = members[0]
            return
        f.by_role.clear()
    for i, h in valid:
        if h.role == WHOLE:
            f.chosen, f.by_role = h, {WHOLE: i}
            return


def read_records(fd: int | None, geo: Geometry, first: int, slots: list[memoryview], seed: int,
                 crcbuf: bytearray, crcviews: list[memoryview]) -> tuple[set[int], str | None]:
    """Read records first.. of one stripe into `slots`; the indexes (relative) that are bad, and why."""
    k = len(slots)
    if k == 0:
        return set(), None
    if fd is None:
        return set(range(k)), "unavailable"
    iov: list[memoryview | None] = [None] * (2 * k)
    iov[0::2] = slots
    iov[1::2] = crcviews[:k]
    try:
        got = os.preadv(fd, iov, geo.record_offset(first))  # type: ignore[arg-type]
    except OSError as e:
        return set(range(k)), f"read error: {e.strerror}"
    actual = tuple(map(zlib.crc32, slots, range(seed + first, seed + first + k)))
    expected = struct.unpack_from(f"<{k}I", crcbuf)
    total = sum(map(len, slots)) + 4 * k
    if actual == expected and got == total:
        return set(), None
    bad = {j for j in range(k) if actual[j] != expected[j]}
    why = f"checksum mismatch in record {first + min(bad)}" if bad else None
    if got < total:
        end = 0
        for j, s in enumerate(slots):
            end += len(s) + 4
            if end > got:
                bad.update(range(j, k))
                why = f"short: ends inside record {first + j}"
                break
    return bad, why


class RaidReader(io.RawIOBase):
    """File-like reader of one committed raidfile: read, readinto, seek, tell, size."""

    def __init__(self, finals: Finals) -> None:
        super().__init__()
        if finals.chosen is None:
            raise ProgrammingError("RaidReader needs a readable write")
        self._f = finals
        self.label = finals.label
        h = finals.chosen
        self.size = h.length
        self._geo = geo = Geometry(h.length, h.block_size)
        self._raid = finals.raid
        self._unit = unit = 2 * h.block_size if self._raid else h.block_size
        self._units = geo.rows if self._raid else geo.blocks
        self._max_units = max(1, min(MAX_RECORDS, CHUNK_BYTES // unit, self._units))
        self._out = bytearray(min(self._max_units * unit, h.length))
        self._crc = bytearray(4 * self._max_units)
        cv = memoryview(self._crc)
        self._crcviews = [cv[i : i + 4] for i in range(0, len(self._crc), 4)]
        self._pbuf = bytearray()
        self._fds = {role: finals.fds[i] for role, i in finals.by_role.items()}
        self._seeds = {role: crc_seed(h.write_id, role) for role in (*RAID_ROLES, WHOLE)}
        self._pos = 0
        self._cache: memoryview | None = None
        self._cache_start = 0
        self._next_unit = -1
        self.damage: list[str] = []  # what was found wrong, for the caller to log or repair
        for i, why in enumerate(finals.problems):
            if why is not None and (self._raid or finals.fds[i] is not None):
                self._note(f"directory {i}: {why}")

    @property
    def degraded(self) -> bool:
        """True if a stripe is missing or damaged: the file is readable but `repair` should run."""
        return bool(self.damage)

    def _note(self, what: str) -> None:
        if what not in self.damage:
            self.damage.append(what)
            log.warning("%s: %s; read from the other stripes", self.label, what)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None or base + offset < 0:
            raise ProgrammingError(f"{self.label}: bad seek (offset {offset}, whence {whence})")
        self._pos = base + offset
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()

    def _records(self, role: int, first: int, slots: list[memoryview]) -> set[int]:
        bad, why = read_records(self._fds.get(role), self._geo, first, slots, self._seeds[role],
                                self._crc, self._crcviews)
        if why is not None and why != "unavailable":
            self._note(f"{ROLE_NAMES[role]} (directory {self._f.by_role[role]}): {why}")
        return bad

    def _decode(self, a: int, b: int) -> memoryview:
        """Clear bytes of units a..b-1 (rows of two blocks, or blocks for a whole file), verified."""
        B = self._geo.block_size
        start = a * self._unit
        out = memoryview(self._out)[: min(self.size, b * self._unit) - start]
        if not self._raid:
            slots = [out[o : o + B] for o in range(0, len(out), B)]
            bad = self._records(WHOLE, a, slots)
            if bad:
                raise IntegrityError(f"{self.label}: block {a + min(bad)} is damaged and a non-RAID set "
                                     "has no other copy")
            return out
        slots1 = [out[o : o + B] for o in range(0, len(out), 2 * B)]
        slots2 = [out[o : o + B] for o in range(B, len(out), 2 * B)]
        bad1 = self._records(STRIPE1, a, slots1)
        bad2 = self._records(STRIPE2, a, slots2)
        if bad1 or bad2:
            self._rebuild(a, slots1, slots2, bad1, bad2)
        return out

    def _rebuild(self, a: int, slots1: list[memoryview], slots2: list[memoryview], bad1: set[int],
                 bad2: set[int]) -> None:
        """Replace bad data blocks of rows a.. with parity XOR the other data block."""
        B = self._geo.block_size
        both = bad1 & bad2
        if both:
            j = a + min(both)
            raise IntegrityError(f"{self.label}: blocks {2 * j} and {2 * j + 1} are both unusable")
        rows = bad1 | bad2
        lo, hi = min(rows), max(rows) + 1
        if len(self._pbuf) < (hi - lo) * B:
            self._pbuf = bytearray(len(self._out) // 2 + B)
        pv = memoryview(self._pbuf)
        pslots = [pv[(j - lo) * B : (j - lo) * B + len(slots1[j])] for j in range(lo, hi)]
        badp = self._records(PARITY, a + lo, pslots)
        lost = sorted(j for j in rows if j - lo in badp)
        if lost:
            j = a + lost[0]
            which = 2 * j if lost[0] in bad1 else 2 * j + 1
            raise IntegrityError(f"{self.label}: block {which} is unusable and so is its parity")
        parity = b"".join(pslots)
        for bad, good, fix in ((bad1, slots2, slots1), (bad2, slots1, slots2)):
            if bad:
                rebuilt = xor_bytes(parity, b"".join(good[lo:hi]))
                rv = memoryview(rebuilt)
                for j in bad:
                    o = (j - lo) * B
                    fix[j][:] = rv[o : o + len(fix[j])]

    def _chunk(self, pos: int, end: int) -> tuple[memoryview, int]:
        """Decoded bytes covering `pos`; reads ahead a whole chunk when access is sequential."""
        c = self._cache
        if c is not None and self._cache_start <= pos < self._cache_start + len(c):
            return c, self._cache_start
        a = pos // self._unit
        sequential = a == self._next_unit
        b = a + self._max_units if sequential else min(-(-end // self._unit), a + self._max_units)
        b = min(max(b, a + 1), self._units)
        if sequential and b < self._units:
            self._read_ahead(b)
        self._cache = self._decode(a, b)
        self._cache_start, self._next_unit = a * self._unit, b
        return self._cache, self._cache_start

    def _read_ahead(self, a: int) -> None:
        """Ask the kernel to fetch the next chunk of each stripe we will need while we decode this one."""
        if _fadvise is None:
            return
        roles = [r for r in self._fds if r != PARITY or STRIPE1 not in self._fds or STRIPE2 not in self._fds]
        span = self._max_units * (self._geo.block_size + 4)
        for r in roles:
            fd = self._fds[r]
            if fd is not None:
                _fadvise(fd, self._geo.record_offset(a), span, os.POSIX_FADV_WILLNEED)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ProgrammingError(f"{self.label}: read after close")
        mv = memoryview(buffer).cast("B")
        pos, done = self._pos, 0
        end = min(self.size, pos + len(mv))
        while pos < end:
            view, start = self._chunk(pos, end)
            take = min(end, start + len(view)) - pos
            mv[done : done + take] = view[pos - start : pos - start + take]
            done += take
            pos += take
        self._pos = pos
        return done

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ProgrammingError(f"{self.label}: read after close")
        pos = self._pos
        end = self.size if size is None or size < 0 else min(self.size, pos + size)
        parts: list[bytes] = []
        while pos < end:
            view, start = self._chunk(pos, end)
            take = min(end, start + len(view)) - pos
            parts.append(bytes(view[pos - start : pos - start + take]))
            pos += take
        self._pos = pos
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pread(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (fewer at the end) without moving the position."""
        pos = self._pos
        try:
            self.seek(offset)
            return self.read(size)
        finally:
            self._pos = pos

    def readall(self) -> bytes:
        return self.read(-1)
