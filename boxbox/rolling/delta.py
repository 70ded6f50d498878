"""Delta search: turn a new file into "copy old block k" / "new bytes" instructions.

The finder never sees the old data, only its `Signature`. Its order of work:

1. **Fast path.** Hash the new data where the next old block would sit (right after the
   last match) and look the digest up; an unchanged file costs one strong hash per block
   (~1 GB/s here, against `rdiff`'s ~450 MB/s). If that block misses, the next one and
   the one after are looked for where they would sit, then within NEAR_SHIFT bytes of
   there by a rolling Adler-32 (`_resync`): an overwrite or a small insertion or
   deletion costs no search, nor the search's tables (built on the first search).
2. **Search on a miss**, in windows of candidate start offsets that grow (the expected
   block's size, then 2x, 4x ... up to WINDOW_MAX) so that a local edit costs a small search
   and all-new data a few large ones. Candidates come from
   - the anchors (`anchors.py`): one 8-byte word per residue mod 8 per block, looked up at
     every eighth offset with `memoryview.cast('Q')` and a set, at C speed;
   - `bytes.find` for blocks made of one repeated byte (zero padding), which have no
     selective anchors;
   - for signatures without anchors, the rolling Adler-32 itself, offset by offset.
   Candidates are confirmed by the other anchors, the weak rolling checksum, then the
   strong hash; the earliest confirmed start wins (largest block, then lowest index, on a
   tie). After a match the fast path resumes right behind it, so one match re-aligns
   everything after an insertion or deletion.
3. **Budget.** Past `deadline` (a `time.monotonic()` value) everything not yet matched is
   sent as literal bytes; `keepalive` is called about every `KEEPALIVE_INTERVAL` seconds.

Pathological inputs stay linear: a candidate word that keeps failing is retired after
`FAIL_LIMIT` misses, and so is a weak value in the rolling fallback; runs are found
by `bytes.find`, which is linear for any needle.

Blocks shorter than `MIN_SEARCH` are only matched where expected (they cannot carry an
anchor in every residue, and a copy of them saves next to nothing).

Memory: the new data is read in `READ_SIZE` pieces into one reused buffer and only the
part still needed is kept (at most ~LITERAL_MAX + WINDOW_MAX + largest block + anchor
span + READ_SIZE), whatever the file size.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from boxbox.errors import ProgrammingError
from boxbox.rolling import anchors as anchors_mod
from boxbox.rolling.checksum import ADLER_MOD, strong_many
from boxbox.rolling.signature import Signature
from boxbox.rolling.tables import MIN_SEARCH, Tables, tables_for

#: largest literal yielded (bytes); with WINDOW_MAX, READ_SIZE and BATCH_BYTES it bounds the
#: finder's buffer: 1 MiB / 1 MiB / 1 MiB / 2 MiB -> 128 KiB each and 256 KiB took the traced peak
#: of a 50 MB file in 64 KiB blocks with 1 MiB rewritten from 8.3 to 1.25 MiB, at the same CPU
#: time (all-new /usr/lib 16 MiB, 4 KiB blocks: 112 -> 109 ms; unchanged 50 MB: 33 -> 32 ms)
LITERAL_MAX = 128 << 10
#: largest search window (candidate start offsets per search step)
WINDOW_MAX = 128 << 10
#: bytes read from the new file per read call
READ_SIZE = 128 << 10
#: failed candidates a word (or weak value) may propose before it is retired (64 -> 16: all-new
#: real data, 64 MiB in 16 KiB blocks, delta 1.25 -> 1.07 s CPU, no delta grew)
FAIL_LIMIT = 16
#: shifts tried for the block after a missed one before searching (see _Finder._near)
NEAR_SHIFT = 256
#: seconds between keepalive calls during long work
KEEPALIVE_INTERVAL = 0.5
#: most expected blocks the fast path hashes in one step, and most bytes they may span
#: (the batch is buffered whole: this bounds memory for big blocks)
BATCH_MAX = 64
BATCH_BYTES = 256 << 10
#: the fast path reads the clock (deadline, keepalive) once per this many bytes
TICK_BYTES = 1 << 20
#: words of a search window intersected with the anchor words at a time; the hits are
#: then placed by bytes.find within their piece (all-new /usr/lib, delta CPU time: 16 MiB
#: in 4 KiB blocks 240 -> 134 ms, 64 MiB in 16 KiB blocks 1.07 -> 0.72 s; 64K words: 3.8 s)
PIECE_WORDS = 512

Op = int | bytes


def delta(sig: Signature, new: BinaryIO, *, deadline: float | None = None,
          keepalive: Callable[[], None] | None = None) -> Iterator[Op]:
    """Yield `int` k (copy old block k) or `bytes` (new data, <= LITERAL_MAX each), in order.

    Joining old block k for each int and the bytes as they are gives exactly the new file.
    """
    if not isinstance(sig, Signature):
        raise ProgrammingError(f"delta() needs a Signature, got {type(sig).__name__}")
    return _Finder(tables_for(sig), new, deadline, keepalive).run()


_unpack_q = struct.Struct("<Q").unpack_from


class _Finder:
    """One delta run: the read buffer, the position, retired candidates."""

    def __init__(self, index: Tables, new: BinaryIO, deadline: float | None,
                 keepalive: Callable[[], None] | None) -> None:
        self.ix = index
        self.new = new
        self.readinto = getattr(new, "readinto", None)
        self.deadline = deadline
        self.keepalive = keepalive
        self.next_keepalive = time.monotonic() + KEEPALIVE_INTERVAL
        self.buf = bytearray()  # valid up to self.end - self.base only (see _fill)
        self.mv = memoryview(self.buf)
        self.base = 0  # file offset of buf[0]
        self.end = 0  # file offset just past the buffered data
        self.eof = False
        self.akeys: set[int] = set()  # anchor words still trusted in this run (see _prepare)
        self.fkeys: set[int] = set()  # those placed past TRY_SPAN in their block
        self.rkeys: dict[int, set[int]] = {}
        self.fails: dict[int, int] = {}  # failed candidates per anchor word
        self.rfails: dict[tuple[int, int], int] = {}  # failed strong checks per (size, weak) (rolling fallback)
        self.lookahead = -1  # bytes a search window needs beyond its last candidate start

    def _prepare(self) -> None:
        """The search's state, before its first search."""
        if self.lookahead >= 0:
            return
        ix = self.ix
        ix.search_tables()
        self.akeys = set(ix.amap)
        self.fkeys = self.akeys & ix.far_words
        self.rkeys = {s: set(table) for s, table in ix.rolling.items()}
        self.lookahead = ix.max_size + ix.jmax + 8

    # -- input -----------------------------------------------------------------
    def _fill(self, need_end: int, keep_from: int) -> None:
        """Buffer the file up to `need_end` (or its end), dropping what lies before `keep_from`.

        Reads with `readinto` into one reused bytearray, right behind the bytes kept, so
        each byte is copied once (read + join copied it twice: _fill took 10 ms of a
        16 MiB delta, measured). The array only grows (to what a window needs); views
        of it taken before a fill are stale afterwards.
        """
        if self.end >= need_end or self.eof:
            return
        keep = self.end - keep_from
        drop = keep_from - self.base
        target = keep + max(need_end - self.end, READ_SIZE)
        store = self.buf
        if target > len(store):
            # sized at once for the largest window: a regrown array coexisted with the views
            # still holding the old one
            store = bytearray(max(target + READ_SIZE, LITERAL_MAX + WINDOW_MAX + 2 * (self.ix.max_size + READ_SIZE)))
            store[:keep] = self.buf[drop:drop + keep]
        elif keep and drop:
            store[:keep] = store[drop:drop + keep]
        view = memoryview(store)
        got = keep
        while got < target:
            if self.readinto is not None:
                try:
                    n = self.readinto(view[got:])
                except NotImplementedError:  # io.RawIOBase subclasses that define read only
                    self.readinto = None
                    continue
            else:
                data = self.new.read(len(store) - got)
                n = len(data)
                view[got:got + n] = data
            if not n:
                self.eof = True
                break
            got += n
        self.buf = store
        self.base = keep_from
        self.end = keep_from + got
        self.mv = view[:got]

    def _literals(self, lo: int, hi: int) -> Iterator[bytes]:
        mv = self.mv
        base = self.base
        while lo < hi:
            n = hi - lo if hi - lo < LITERAL_MAX else LITERAL_MAX
            yield bytes(mv[lo - base:lo - base + n])
            lo += n

    def _rest(self, lit: int) -> Iterator[bytes]:
        """Everything from `lit` to the end of the file, as literals."""
        while True:
            if self.end - lit < LITERAL_MAX and not self.eof:
                self._fill(lit + LITERAL_MAX, lit)
            hi = self.end if self.end - lit < LITERAL_MAX else lit + LITERAL_MAX
            if hi <= lit:
                return
            yield from self._literals(lit, hi)
            lit = hi

    def _tick(self) -> bool:
        """Keepalive when due; True once the deadline has passed."""
        now = time.monotonic()
        if self.keepalive is not None and now >= self.next_keepalive:
            self.keepalive()
            self.next_keepalive = now + KEEPALIVE_INTERVAL
        return self.deadline is not None and now > self.deadline

    # -- the search --------------------------------------------------------------
    def run(self) -> Iterator[Op]:
        ix = self.ix
        if ix.n == 0:
            yield from self._rest(0)
            return
        sizes = ix.sizes
        strongs = ix.strongs
        by_strong = ix.by_strong
        strong = ix.strong
        n = ix.n
        max_size = ix.max_size
        main_size = ix.main_size
        min_search = ix.min_search
        pos = lit = 0  # next byte to place; start of the pending literal
        e = 0  # the old block expected at pos
        tick_at = 0  # the fast path looks at the clock once per TICK_BYTES
        batch = 2  # expected blocks hashed per step; doubles while they all match
        batch_max = max(2, min(BATCH_MAX, BATCH_BYTES // max_size))
        strong_all = strong_many(ix.hash_name)
        end = self.end
        base = self.base
        mv = self.mv
        while True:
            if pos >= tick_at:
                if self._tick():
                    yield from self._rest(lit)
                    return
                tick_at = pos + TICK_BYTES
            if batch > 1 and e < n:
                # a run of expected blocks, hashed in one C-level map and compared as a list
                stop = e + batch if e + batch <= n else n
                span = sum(sizes[e:stop])
                if pos + span > end:
                    self._fill(pos + span, lit)
                    end = self.end
                    base = self.base
                    mv = self.mv
                if pos + span <= end:
                    o = pos - base
                    views = []
                    for s in sizes[e:stop]:
                        views.append(mv[o:o + s])
                        o += s
                    ds = list(strong_all(views))
                    del views
                    if ds == strongs[e:stop]:
                        if lit < pos:
                            yield from self._literals(lit, pos)
                        yield from range(e, stop)
                        pos = lit = pos + span
                        e = stop
                        batch = batch * 2 if batch < batch_max else batch_max
                        continue
                    # the matching blocks, and any block rewritten in place between two of them
                    # (the rule _resync applies first, here on digests at hand: 10% of the
                    # blocks of 16 MiB of /usr/lib rewritten, delta 41 -> 36 ms)
                    e0 = e
                    while True:
                        m = e
                        while m < stop and ds[m - e0] == strongs[m]:
                            m += 1
                        if m > e:
                            if lit < pos:
                                yield from self._literals(lit, pos)
                            yield from range(e, m)
                            pos = lit = pos + sum(sizes[e:m])
                            e = m
                        if m + 1 < stop and ds[m + 1 - e0] == strongs[m + 1]:
                            yield from self._literals(lit, pos + sizes[m])
                            yield m + 1
                            pos = lit = pos + sizes[m] + sizes[m + 1]
                            e = m + 2
                            if e < stop:
                                continue
                        break
                    if e == stop:
                        continue
                    batch = 1
                    if e > e0:
                        continue
                else:
                    batch = 1
            s = sizes[e] if e < n else main_size
            if pos + s > end:
                self._fill(pos + s, lit)
                end = self.end
                base = self.base
                mv = self.mv
            if pos + s <= end:
                # fast path: the expected block where it would sit
                d = strong(mv[pos - base:pos - base + s])
                if e < n and strongs[e] == d:
                    k = e
                else:
                    k = -1
                    if e + 1 < n:
                        q, k = self._resync(e, pos, lit)
                        end = self.end
                        base = self.base
                        mv = self.mv
                        if k >= 0:
                            yield from self._literals(lit, q)
                            yield k
                            pos = lit = q + sizes[k]
                            e = k + 1
                            batch = 2
                            continue
                    if s == max_size and s >= MIN_SEARCH:
                        k = by_strong.get(d, -1)
                        if k >= 0 and sizes[k] != s:
                            k = -1
                if k >= 0:
                    if lit < pos:
                        yield from self._literals(lit, pos)
                    yield k
                    pos += s
                    lit = pos
                    e = k + 1
                    batch = 2
                    continue
            elif self.eof and pos >= end:
                break
            if min_search == 0:
                yield from self._rest(lit)
                return
            # search windows of growing size
            a = pos
            width = s
            found = None
            # expected blocks further on (in place if only the data before changed):
            # probed by strong hash where they would sit, however far the search goes
            xp = pos + s
            xk = e + 1
            self._prepare()
            while True:
                if self._tick():
                    yield from self._rest(lit)
                    return
                b = a + width
                need = b + self.lookahead
                if self.end < need:
                    self._fill(need, lit)
                if self.eof:
                    last = self.end - min_search + 1  # no block fits past this start
                    if b > last:
                        b = last
                    if b <= a:
                        break
                probe = None
                while xk < n and xp <= b:  # b itself too: a hit there saves a window
                    s2 = sizes[xk]
                    if s2 >= MIN_SEARCH and xp >= a and xp + s2 <= self.end:
                        o = xp - self.base
                        k = by_strong.get(strong(self.mv[o:o + s2]), -1)
                        if k >= 0 and sizes[k] == s2:
                            probe = (xp, k)
                            b = xp + 1  # only earlier starts can beat it
                            break
                    xp += s2
                    xk += 1
                found = self._search(a, b, probe)
                if found is not None:
                    break
                a = b
                while a - lit >= LITERAL_MAX:
                    yield from self._literals(lit, lit + LITERAL_MAX)
                    lit += LITERAL_MAX
                width = width * 2 if width < WINDOW_MAX // 2 else WINDOW_MAX
            if found is None:
                break
            p, k = found
            if lit < p:
                yield from self._literals(lit, p)
            yield k
            pos = p + sizes[k]
            lit = pos
            e = k + 1
            end = self.end
            base = self.base
            mv = self.mv
        yield from self._rest(lit)

    def _search(self, a: int, b: int, probe: tuple[int, int] | None) -> tuple[int, int] | None:
        """The earliest match starting in [a, b): (start, block), or None.

        `probe` is a match already confirmed in [a, b) by the strong hash where an expected
        block would sit; it wins unless something starts earlier (or at the same offset
        and is larger).
        """
        ix = self.ix
        mv = self.mv
        base = self.base
        end = self.end
        sizes = ix.sizes
        cands: list[tuple[int, int, int, int]] = []
        akeys = self.akeys
        if akeys:
            qa = (a + 7) & -8
            qlast = b - 1 + ix.jmax
            if qlast > end - 8:
                qlast = end - 8
            if qlast >= qa:
                off = qa - base
                nw = (qlast - qa) // 8 + 1
                near = (b - 1 + ix.jnear - qa) // 8 + 1  # words any anchor can be at; past them, far ones only
                fkeys = self.fkeys
                buf = self.buf
                at: dict[int, list[int]] = {}  # hit word -> its aligned positions (word indices)
                common = []  # words found too often here
                words = mv[off:off + 8 * nw].cast("Q")
                # pieces of PIECE_WORDS words: one set intersection each, then bytes.find of
                # each hit word within its piece; a pass over every word of the window to
                # place the hits cost more than the intersection itself (all-new /usr/lib),
                # and so did finds over the whole window
                for c0 in range(0, nw, PIECE_WORDS):
                    c1 = c0 + PIECE_WORDS if c0 + PIECE_WORDS < nw else nw
                    if c1 <= near:
                        hits = akeys.intersection(words[c0:c1])
                    elif c0 < near:
                        hits = akeys.intersection(words[c0:near])
                        if fkeys:
                            hits.update(fkeys.intersection(words[near:c1]))
                    elif fkeys:
                        hits = fkeys.intersection(words[c0:c1])
                    else:
                        break
                    stop = off + 8 * c1
                    for w in hits:
                        found = at.get(w)
                        if found is None:
                            found = at[w] = []
                        elif len(found) > FAIL_LIMIT:
                            continue
                        needle = w.to_bytes(8, "little")
                        i = buf.find(needle, off + 8 * c0, stop)
                        tries = 0
                        while i >= 0:
                            if (i - off) & 7 == 0:
                                found.append((i - off) >> 3)
                                if len(found) > FAIL_LIMIT:
                                    break
                            tries += 1
                            if tries > 8 * FAIL_LIMIT:  # mostly unaligned, but everywhere
                                common.append(w)
                                break
                            i = buf.find(needle, i + 1, stop)
                words.release()
                for w in common:
                    at[w] = []
                    akeys.discard(w)
                    fkeys.discard(w)
                if at:
                    amap = ix.amap
                    amulti = ix.amulti
                    ts = ix.ts
                    for w, found in at.items():
                        if len(found) > FAIL_LIMIT:
                            akeys.discard(w)  # common here, so not selective: retire it
                            self.fkeys.discard(w)
                            continue
                        slots = amulti.get(w)
                        for i in found:
                            q = qa + 8 * i
                            for slot in (amap[w],) if slots is None else slots:
                                p = q - (slot & 7) - 8 * ts[slot]
                                if a <= p < b:
                                    k = slot >> 3
                                    cands.append((p, -sizes[k], k, w))
        buf = self.buf
        for s, run, k in ix.uniform:
            i = buf.find(run, a - base, min(b - 1 + s, end) - base)
            if i >= 0:
                cands.append((i + base, -s, k, -1))
        best = None
        if probe is not None:
            cands.append((probe[0], -sizes[probe[1]], probe[1], -2))
        if cands:
            cands.sort()
            best = self._confirm(cands)
        if ix.rolling:
            limit = best[0] + 1 if best is not None else b
            for s, table in ix.rolling.items():
                hit = self._roll(s, table, a, limit)
                if hit is not None and (best is None or (hit[0], -s, hit[1]) < (best[0], -sizes[best[1]], best[1])):
                    best = hit
                    limit = hit[0] + 1
        return best

    def _confirm(self, cands: list[tuple[int, int, int, int]]) -> tuple[int, int] | None:
        """The first candidate whose anchors, weak and strong checksums all match."""
        ix = self.ix
        buf = self.buf
        mv = self.mv
        base = self.base
        end = self.end
        weaks = ix.weaks
        strongs = ix.strongs
        strong = ix.strong
        adler = zlib.adler32
        ts = ix.ts
        ws = ix.ws
        no_anchor = anchors_mod.NO_ANCHOR
        for p, negsize, k, w in cands:
            if w == -2:
                return p, k  # an expected block, already confirmed
            s = -negsize
            if p + s > end:
                continue
            o = p - base
            ok = True
            if w >= 0:  # the block's other anchors first: two 8-byte compares cost ~0.3 us
                for i in range(8 * k, 8 * k + 8):
                    t = ts[i]
                    j = (i & 7) + 8 * t
                    if t != no_anchor and j + 8 <= s and _unpack_q(buf, o + j)[0] != ws[i]:
                        ok = False
                        break
            if ok and adler(mv[o:o + s]) == weaks[k] and strong(mv[o:o + s]) == strongs[k]:
                return p, k
            if w >= 0:
                fails = self.fails.get(w, 0) + 1
                self.fails[w] = fails
                if fails >= FAIL_LIMIT:
                    self.akeys.discard(w)
                    self.fkeys.discard(w)
        return None

    def _resync(self, e: int, pos: int, lit: int) -> tuple[int, int]:
        """Block e missed at `pos`: the next block or the one after it where it would sit,
        else within NEAR_SHIFT bytes of there (an overwrite, a small insertion or deletion,
        over up to two blocks): (start, block), or (-1, -1) for a search. The reference
        has the same rule.

        Measured on 16 MiB of /usr/lib: 10% of blocks rewritten, delta 77 -> 42 ms; 10
        small edits, 31 -> 17 ms (no search, so no search tables either).
        """
        ix = self.ix
        sizes = ix.sizes
        places = []
        at = pos + sizes[e]
        for j in (e + 1, e + 2)[:ix.n - e - 1]:
            s = sizes[j]
            self._fill(at + NEAR_SHIFT + s, lit)
            if at + s <= self.end and ix.strong(self.mv[at - self.base:at - self.base + s]) == ix.strongs[j]:
                return at, j
            places.append((j, at))
            at += s
        for j, at in places:  # in place first: cheap, and the usual case (rewrites)
            if sizes[j] >= MIN_SEARCH:
                q = self._near(j, at, pos, lit)
                if q >= 0:
                    return q, j
        return -1, -1

    def _near(self, k: int, at: int, lo: int, keep: int) -> int:
        """The first start in [max(lo, at - NEAR_SHIFT), at + NEAR_SHIFT] where block k
        matches (rolling Adler-32, then the strong hash), or -1; `keep`: where the pending
        literal starts.

        After a small insertion or deletion in the block expected at `lo`, the one after
        it sits near `at`: 513 offsets rolled in Python (~0.2 ms) find it without the
        search and its tables, whatever its anchors (some blocks have none usable at some
        shifts: 1-2 of the benchmark's 10 small edits in /usr/lib cost a second block
        when only the search looked).
        """
        ix = self.ix
        s = ix.sizes[k]
        self._fill(at + NEAR_SHIFT + s, keep)
        base = self.base
        i = (at - NEAR_SHIFT if at - NEAR_SHIFT > lo else lo) - base
        stop = (at + NEAR_SHIFT if at + NEAR_SHIFT < self.end - s else self.end - s) - base
        if i > stop:
            return -1
        buf = self.buf
        mv = self.mv
        weak = ix.weaks[k]
        digest = ix.strongs[k]
        strong = ix.strong
        x = zlib.adler32(mv[i:i + s])
        lo16 = x & 0xFFFF
        hi16 = x >> 16
        mod = ADLER_MOD
        while True:
            if (hi16 << 16) | lo16 == weak and strong(mv[i:i + s]) == digest:
                return i + base
            if i >= stop:
                return -1
            out = buf[i]
            i += 1
            lo16 = (lo16 - out + buf[i + s - 1]) % mod
            hi16 = (hi16 - s * out + lo16 - 1) % mod

    def _roll(self, s: int, table: dict[int, dict[bytes, int]], a: int, b: int) -> tuple[int, int] | None:
        """Rolling Adler-32 over starts [a, b) for blocks of size s: the first confirmed match."""
        buf = self.buf
        mv = self.mv
        base = self.base
        i = a - base
        stop = b - base
        last = self.end - base - s  # last start whose window is buffered
        if stop > last + 1:
            stop = last + 1
        if i >= stop:
            return None
        keys = self.rkeys[s]
        if not keys:
            return None
        strong = self.ix.strong
        x = zlib.adler32(mv[i:i + s])
        lo = x & 0xFFFF
        hi = x >> 16
        mod = ADLER_MOD
        fails = self.rfails
        while True:
            w = (hi << 16) | lo
            if w in keys:
                k = table[w].get(strong(mv[i:i + s]), -1)
                if k >= 0:
                    return i + base, k
                f = fails.get((s, w), 0) + 1
                fails[(s, w)] = f
                if f >= FAIL_LIMIT:
                    keys.discard(w)
                    if not keys:
                        return None
            i += 1
            if i >= stop:
                return None
            out = buf[i - 1]
            lo = (lo - out + buf[i + s - 1]) % mod
            hi = (hi - s * out + lo - 1) % mod
