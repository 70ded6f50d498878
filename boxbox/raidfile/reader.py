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
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

from boxbox.errors import FormatError, IntegrityError, NotFound, ProgrammingError
from boxbox.raidfile import stats, xorproc
from boxbox.raidfile.layout import (
    HEADER,
    PARITY,
    RAID_ROLES,
    RECORD_OVERHEAD,
    ROLE_NAMES,
    STRIPE1,
    STRIPE2,
    WHOLE,
    Geometry,
    Header,
    crc_seed,
    parse_header,
)
from boxbox.raidfile.kernels import OK, OP_DECODE, XOR_PIECE, fetch_records, verify_records, xor_bytes

log = logging.getLogger(__name__)

MAX_RECORDS = 512  # records per preadv/writev: two iovecs each, IOV_MAX is 1024 on Linux
CHUNK_BYTES = 2 << 20  # clear bytes decoded at once when reading ahead
# A degraded reader lets its helper go for the rest of the file once the helper was late this many times in a row
# (its chunk took over twice as long as ours: it gets no core on a busy machine, and two processes then only add work).
HELPER_LATE = 3
# zlib.crc32(block + its stored CRC, seed) of every intact record, whatever the block and the seed: the CRC's residue
RESIDUE = 0x2144DF1C


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
    """Read and verify records first.. of one stripe into `slots`."""
    if not slots:
        return set(), None
    if fd is None:
        return set(range(len(slots))), "unavailable"
    return verify_records(fetch_records(fd, geo.record_offset(first), slots, crcviews), first, slots, seed, crcbuf)


class _Buffers:
    """Where a chunk is read to: its clear bytes, and the CRCs of each data stripe."""

    __slots__ = ("out", "crc", "crcviews", "full")

    def __init__(self, size: int, units: int, roles: tuple[int, ...]) -> None:
        self.out = bytearray(size)
        self.crc = {r: bytearray(4 * units) for r in roles}
        self.crcviews = {r: [memoryview(c)[i : i + 4] for i in range(0, len(c), 4)] for r, c in self.crc.items()}
        self.full: tuple[memoryview, dict[int, list[memoryview]]] | None = None  # slots of a whole chunk

    def layout(self, n: int, raid: bool, B: int) -> tuple[memoryview, dict[int, list[memoryview]]]:
        """The first n bytes of `out` cut into the block slots of each stripe (cached for whole chunks)."""
        if self.full is not None and len(self.full[0]) == n:
            return self.full
        out = memoryview(self.out)[:n]
        if raid:
            slots = {STRIPE1: [out[o : o + B] for o in range(0, n, 2 * B)],
                     STRIPE2: [out[o : o + B] for o in range(B, n, 2 * B)]}
        else:
            slots = {WHOLE: [out[o : o + B] for o in range(0, n, B)]}
        if n == len(self.out):
            self.full = (out, slots)
        return out, slots


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
        self._data_roles = (STRIPE1, STRIPE2) if self._raid else (WHOLE,)
        self._chunk_size = min(self._max_units * unit, h.length)
        self._bufs = _Buffers(self._chunk_size, self._max_units, self._data_roles)
        self._pbuf = bytearray()
        self._pcrc = bytearray(4 * self._max_units)
        self._pcrcviews = [memoryview(self._pcrc)[i : i + 4] for i in range(0, len(self._pcrc), 4)]
        self._fds = {role: finals.fds[i] for role, i in finals.by_role.items()}
        self._seeds = {role: crc_seed(h.write_id, role) for role in (*RAID_ROLES, WHOLE)}
        self._pos = 0
        self._cache: memoryview | None = None
        self._cache_start = 0
        self._next_unit = -1
        # the data stripe that is missing (-1: none): its blocks are rebuilt by XOR, which holds the GIL
        self._lost = next((r for r in (STRIPE1, STRIPE2) if r not in self._fds), -1) if self._raid else -1
        self._helper: xorproc.Helper | None = None  # decodes every other chunk of a long degraded sequential read
        self._helper_wanted = self._lost >= 0 and xorproc.AVAILABLE and self._chunk_size <= xorproc.SLOT_BYTES
        # read() of whole rows of a RAID file with both data stripes: `_decode_joined` (False once it found anything wrong)
        self._joined = self._raid and self._lost < 0
        self._raw: dict[int, memoryview] = {}  # per data stripe: its records of one chunk, read in one piece
        self._raw_cut: tuple[int, int, list[memoryview], list[memoryview], list[memoryview]] | None = None
        self._ahead: tuple[int, int, int] | None = None  # units a, b the helper is decoding, at this slot
        self._last_decode = 0.0  # seconds our last sequential chunk took
        self._late = 0  # chunks in a row the helper was late with
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
            if not self.damage:
                stats.bump("degraded_reads")  # metrics hook: once per file read
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
            self._let_helper_go()
            self._f.close()
        super().close()

    def _fetch(self, bufs: _Buffers, a: int, b: int) -> dict[int, int | OSError]:
        """Read the data stripes' records of units a..b-1 into `bufs`: one preadv per stripe."""
        _, slots = bufs.layout(min(self.size, b * self._unit) - a * self._unit, self._raid, self._geo.block_size)
        return {r: fetch_records(fd, self._geo.record_offset(a), slots[r], bufs.crcviews[r])
                for r in self._data_roles if (fd := self._fds.get(r)) is not None and slots[r]}

    def _verify(self, role: int, got: int | OSError | None, first: int, slots: list[memoryview],
                crcbuf: bytearray) -> set[int]:
        if not slots:
            return set()
        if got is None:
            return set(range(len(slots)))  # the stripe is missing; noted when the reader opened
        bad, why = verify_records(got, first, slots, self._seeds[role], crcbuf)
        if why is not None:
            self._note(f"{ROLE_NAMES[role]} (directory {self._f.by_role[role]}): {why}")
        return bad

    def _decode(self, a: int, b: int) -> memoryview:
        """Clear bytes of units a..b-1 (rows of two blocks, or blocks for a whole file), verified."""
        bufs = self._bufs
        results = self._fetch(bufs, a, b)
        out, slots = bufs.layout(min(self.size, b * self._unit) - a * self._unit, self._raid, self._geo.block_size)
        bad = {r: self._verify(r, results.get(r), a, slots[r], bufs.crc[r]) for r in self._data_roles}
        if not self._raid:
            if bad[WHOLE]:
                raise IntegrityError(f"{self.label}: block {a + min(bad[WHOLE])} is damaged and a non-RAID set "
                                     "has no other copy")
        elif bad[STRIPE1] or bad[STRIPE2]:
            self._rebuild(a, slots[STRIPE1], slots[STRIPE2], bad[STRIPE1], bad[STRIPE2])
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
            self._pbuf = bytearray(self._chunk_size // 2 + B)
        pv = memoryview(self._pbuf)
        pslots = [pv[(j - lo) * B : (j - lo) * B + len(slots1[j])] for j in range(lo, hi)]
        badp, why = read_records(self._fds.get(PARITY), self._geo, a + lo, pslots, self._seeds[PARITY],
                                 self._pcrc, self._pcrcviews)
        if why is not None and why != "unavailable":
            self._note(f"parity (directory {self._f.by_role[PARITY]}): {why}")
        lost = sorted(j for j in rows if j - lo in badp)
        if lost:
            j = a + lost[0]
            which = 2 * j if lost[0] in bad1 else 2 * j + 1
            raise IntegrityError(f"{self.label}: block {which} is unusable and so is its parity")
        # XOR only the XOR_PIECE pieces that hold a bad row (all of them when a stripe is gone), parity straight
        # from where it was read to. 64 MiB read with stripe 1 gone: 455 MB/s (1 MiB pieces, parity joined
        # first) -> 640 MB/s here
        g = max(1, XOR_PIECE // B)
        for bad, good, fix in ((bad1, slots2, slots1), (bad2, slots1, slots2)):
            for s in sorted({lo + (j - lo) // g * g for j in bad}):
                e = min(s + g, hi)
                rebuilt = memoryview(xor_bytes(pv[(s - lo) * B : (e - 1 - lo) * B + len(slots1[e - 1])],
                                               b"".join(good[s:e])))
                for j in range(s, e):
                    if j in bad:
                        o = (j - s) * B
                        fix[j][:] = rebuilt[o : o + len(fix[j])]

    def _decode_joined(self, a: int, b: int) -> memoryview | None:
        """Clear bytes of rows a..b-1 as a new `bytes` (for read() to return as it is), or None if anything is wrong.

        Each data stripe's records are read in one piece (one iovec: no 4-byte CRC iovecs, no strided copy), each
        record checked by its CRC residue, and the blocks joined in clear order: one copy from the page cache and
        one into the result, as in `_decode` + read(), for less work in the kernel. Anything short, unreadable or
        failing its CRC: None, and the caller decodes the rows with `_decode`, which notes and rebuilds the damage."""
        B = self._geo.block_size
        R = B + RECORD_OVERHEAD
        n = min(self.size, b * self._unit) - a * self._unit
        blocks = -(-n // B)
        k1, k2 = (blocks + 1) // 2, blocks // 2
        t1 = (k1 - 1) * R + min(B, n - (2 * k1 - 2) * B) + RECORD_OVERHEAD
        t2 = (k2 - 1) * R + min(B, n - (2 * k2 - 1) * B) + RECORD_OVERHEAD if k2 else 0
        cut = self._raw_cut
        if cut is None or cut[:2] != (t1, t2):
            if not self._raw:
                self._raw = {r: memoryview(bytearray(self._max_units * R)) for r in (STRIPE1, STRIPE2)}
            r1, r2 = self._raw[STRIPE1][:t1], self._raw[STRIPE2][:t2]
            recs1, recs2 = [r1[o : o + R] for o in range(0, t1, R)], [r2[o : o + R] for o in range(0, t2, R)]
            order: list[memoryview] = [r1] * (k1 + k2)
            order[0::2] = [rec[:-RECORD_OVERHEAD] for rec in recs1]
            order[1::2] = [rec[:-RECORD_OVERHEAD] for rec in recs2]
            cut = self._raw_cut = (t1, t2, recs1, recs2, order)
        off = self._geo.record_offset(a)
        for role, total, recs in ((STRIPE1, t1, cut[2]), (STRIPE2, t2, cut[3])):
            if not recs:
                continue
            seed = self._seeds[role] + a
            try:
                if os.preadv(self._fds[role], [self._raw[role][:total]], off) != total:
                    return None
            except OSError:
                return None
            if tuple(map(zlib.crc32, recs, range(seed, seed + len(recs)))).count(RESIDUE) != len(recs):
                return None
        return memoryview(b"".join(cut[4]))

    def _decode_sequential(self, a: int, b: int) -> memoryview:
        """Like `_decode`, for a sequential read: chunks alternate between the helper process (if there is one:
        a degraded read) and this one. The helper is always a chunk ahead: it decodes chunk k+1 while we
        decode chunk k, and chunk k+3 while the caller copies chunk k+1 out and we decode chunk k+2."""
        U = self._max_units
        if self._ahead is not None and self._ahead[:2] == (a, b):
            t = time.perf_counter()
            got = self._from_helper()
            # late: it started on this chunk as we started on ours; only a run of late chunks (no core for the
            # helper) lets it go, since on a long read a few late ones come from any passing load
            self._late = self._late + 1 if time.perf_counter() - t > self._last_decode else 0
            if got is not None:
                if b + U < self._units and self._late < HELPER_LATE:
                    self._ask_helper(b + U, min(b + 2 * U, self._units))
                return got
        elif self._ahead is not None and self._ahead[0] != b:
            self._from_helper()  # not what this read needs next: collected, dropped
        if self._late >= HELPER_LATE and self._helper is not None:
            self._let_helper_go()  # its slot that is our cache is being replaced: the caller is done with it
        if self._helper is None and self._helper_wanted and self.size >= xorproc.MIN_BYTES:
            self._start_helper()
        if self._ahead is None and b < self._units:
            self._ask_helper(b, min(b + U, self._units))
        t = time.perf_counter()
        out = self._decode(a, b)
        self._last_decode = time.perf_counter() - t
        return out

    def _start_helper(self) -> None:
        self._helper_wanted = False  # one try per reader
        h = xorproc.acquire()
        if h is None:
            return
        self._helper = h
        try:
            for role, fd in self._fds.items():
                h.open(role, fd, writable=False)
        except (OSError, EOFError):
            self._let_helper_go()

    def _ask_helper(self, a: int, b: int) -> None:
        """Have the helper decode units a..b into a free slot of the shared buffer."""
        h = self._helper
        if h is None:
            return
        try:
            slot = h.free_slot()
            if slot is None:
                return
            s = self._seeds
            h.send(OP_DECODE, slot, min(self.size, b * self._unit) - a * self._unit, self._geo.block_size, a,
                   self._geo.record_offset(a), self._lost, s[STRIPE1], s[STRIPE2], s[PARITY])
        except EOFError:
            self._let_helper_go()
            return
        self._ahead = (a, b, slot)

    def _from_helper(self) -> memoryview | None:
        """The clear bytes of the units the helper was asked for if it decoded them without finding anything
        wrong, else None (we decode them ourselves then, noting the damage)."""
        if self._ahead is None or self._helper is None:
            return None
        try:
            ok = self._helper.reply() == OK
        except OSError:
            ok = False
        except EOFError:
            self._let_helper_go()
            return None
        (a, b, slot), self._ahead = self._ahead, None
        return self._helper.view[slot : slot + min(self.size, b * self._unit) - a * self._unit] if ok else None

    def _let_helper_go(self) -> None:
        h, self._helper, self._ahead = self._helper, None, None
        if h is not None:
            xorproc.release(h)

    def _chunk(self, pos: int, end: int, joined: bool = False) -> tuple[memoryview, int]:
        """Decoded bytes covering `pos`; reads ahead a whole chunk when access is sequential. `joined` (read()):
        whole rows from `pos` on are decoded into a new `bytes` covering as much of pos..end as they can."""
        c = self._cache
        if c is not None and self._cache_start <= pos < self._cache_start + len(c):
            return c, self._cache_start
        a = pos // self._unit
        if joined and self._joined and pos == a * self._unit and (end == self.size or end - pos >= self._unit):
            b = min(a + self._max_units, -(-end // self._unit) if end == self.size else end // self._unit)
            out = self._decode_joined(a, b)
            if out is not None:
                self._cache, self._cache_start, self._next_unit = out, pos, b
                return out, pos
            self._joined = False  # something is wrong with this file: `_decode` finds, notes and rebuilds it
        if a == self._next_unit:  # sequential: a whole chunk
            b = a + self._max_units
        else:  # random access: only what was asked for
            b = min(-(-end // self._unit), a + self._max_units)
        b = min(max(b, a + 1), self._units)
        self._cache = self._decode_sequential(a, b) if a == self._next_unit else self._decode(a, b)
        self._cache_start, self._next_unit = a * self._unit, b
        return self._cache, self._cache_start

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
            view, start = self._chunk(pos, end, joined=True)
            take = min(end, start + len(view)) - pos
            if take == len(view) and isinstance(view.obj, bytes):
                parts.append(view.obj)  # made for this read by `_decode_joined`
            else:
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
