"""Candidate filter: eight 8-byte "anchor" words per block, one per offset residue mod 8.

Why: testing the rolling checksum at every offset of new data costs a set lookup per
byte (25-40 MB/s at best, 13 MB/s with the sum itself), and `rdiff` does 64-67 MB/s on
all-new data. If block k sits at any offset p of the new file, exactly one of its anchors
(the one at block offset j with p + j = 0 mod 8) lands on an 8-aligned word of the new
file, so the finder looks up only every eighth offset: one `memoryview.cast('Q')` and a
set test per 8 bytes (~250 MB/s for `set.isdisjoint`). A hit proposes p = q - j; the other
anchors, then the weak rolling checksum, then the strong hash decide.

Where: the eight anchors of a block are the eight overlapping words of one 15-byte
*window* starting at an 8-aligned block offset 8u (word r at 8u + r: residue r, t_r = u),
so one choice per block covers every residue. Rarity matters: a word like eight zero
bytes would propose a candidate at every aligned offset of a zero region (200x slower in
the measurement that motivated the filter), so a window is scored by its *penalty*, the
number of zero bytes plus the number of adjacent equal bytes among its 15 (runs,
zero-padded integers, indentation: the words that recur everywhere). The window is the
first of TRIES fixed positions (within TRY_SPAN) with penalty <= MAX_PENALTY; else the
first such window inside a run of 22 bytes other than 0x00, 0x20 and 0xff (a third of the
blocks of binaries under /usr/lib are 93% zero bytes); else the least penalized window
seen, whose words with a word penalty over MAX_WORD_PENALTY are dropped (NO_ANCHOR): the
finder looks for such blocks near where it expects them instead (`delta._Finder._near`).

The choice depends on the block's own bytes only (not on other blocks), so `picks` over a
batch, `record_of` of each block on its own (the plain rule, which the property tests
compare with `picks`) and the object index's batches agree whatever the batching; the
finder copes with words shared by several blocks. Blocks made of one repeated byte get no
anchors at all (`record_of` blanks them, callers of `picks` do): the finder finds those
with `bytes.find` of the run.

In memory the anchors are two flat arrays, 8 positions t_r and 8 words per block: the anchor
of residue r sits at block offset j = r + 8 * t_r, and t_r == NO_ANCHOR means none. Since
the eight words of a block are the overlapping words of one window at 8u (t_r = u for every
kept r; a block shorter than a window has u = 0 and keeps the words that fit), a block's
`RECORD` (little-endian) is the window itself: u16 u, the 15 window bytes, u8 mask (bit r
set: anchor r kept) - 18 bytes, where the eight (t_r, word_r) took 80. A record crosses
the network twice per block of a diffed file (the old index down, the new one up), so this
cut a diff's index traffic from 124 to 62 bytes a block. A signature's anchors are the
records of its blocks, concatenated; `to_bytes` / `from_bytes` convert with `bytes` slicing
at C speed (a block that lacks some anchors is done on its own), and `to_bytes` refuses
arrays no window explains. `V2_RECORD` is the 80-byte form that version 2 block indexes
hold (`from_v2_bytes`).
"""

from __future__ import annotations

import struct
import sys
from array import array
from functools import lru_cache
from itertools import compress, count

from boxbox.errors import ProgrammingError

SLOTS = 8
#: anchors lie within the first SPAN bytes of a block, so a search window needs to look
#: only SPAN bytes past its end to see every candidate that starts inside it
SPAN = 4096
#: the TRIES windows lie within the first TRY_SPAN bytes (only run windows lie further), so
#: the finder's lookahead for most anchor words is short (see tables.Tables.jnear)
TRY_SPAN = 2048
NO_ANCHOR = 0xFFFF
#: bytes a window spans: eight overlapping 8-byte words
WINDOW = SLOTS + 7
RECORD = struct.Struct(f"<H{WINDOW}sB")
assert RECORD.size == 18
EMPTY_RECORD = RECORD.pack(0, bytes(WINDOW), 0)
#: serialized bytes per block
RECORD_SIZE = RECORD.size
#: the record of version 2 block indexes: 8 x u16 t_r, then 8 x u64 word_r
V2_RECORD = struct.Struct("<8H8Q")
assert V2_RECORD.size == 80
_ALL = (1 << SLOTS) - 1
#: fixed window positions tried per block before looking for a run of other bytes
TRIES = 8
#: most zero bytes + adjacent equal bytes a window may have to be taken at once; 2 keeps
#: the all-zero and zero-padded words out of the anchors (16 MiB of /usr/lib, 4 KiB blocks:
#: the previous picker's words hit 411k times in the next 16 MiB, 388k of them the all-zero
#: word; these hit 6k times)
MAX_PENALTY = 2
#: runs of other bytes tried in a block whose TRIES windows were all refused
RUN_TRIES = 4
#: most zero bytes + adjacent equal bytes of a word kept from a refused window
MAX_WORD_PENALTY = 5
#: up to this many blocks `to_bytes` packs one record at a time (the sliced path has a fixed cost)
FEW_BLOCKS = 3
#: while more blocks than this still need a window, the next try runs for a whole batch
#: at once (big-integer arithmetic); fewer are tried one at a time
VECTOR_MIN = 16

_MASK = (1 << 64) - 1
_B7F = 0x7F7F7F7F7F7F7F7F
_B80 = 0x8080808080808080
_LOW7 = 0x00FFFFFFFFFFFFFF
_ONES = 0x0101010101010101


def _record(t: array, w: array) -> bytes:
    """One block's RECORD from its 8 positions and words; ProgrammingError if no window explains them."""
    mask = 0
    u = 0
    window = bytearray(WINDOW)
    for r in range(SLOTS):
        if t[r] == NO_ANCHOR:
            continue
        if mask and t[r] != u:
            raise ProgrammingError(f"anchors at positions {list(t)} are not the words of one window")
        mask |= 1 << r
        u = t[r]
        window[r:r + 8] = w[r].to_bytes(8, "little")
    record = RECORD.pack(u, bytes(window), mask)
    if mask and _words(record) != (list(t), list(w)):
        raise ProgrammingError("anchor words that overlap disagree: they are not the words of one window")
    return record


def _words(record: bytes) -> tuple[list[int], list[int]]:
    """The 8 positions and words of one RECORD."""
    u, window, mask = RECORD.unpack(record)
    ts = [u if mask >> r & 1 else NO_ANCHOR for r in range(SLOTS)]
    ws = [int.from_bytes(window[r:r + 8], "little") if mask >> r & 1 else 0 for r in range(SLOTS)]
    return ts, ws


def unpack_record(record: bytes) -> tuple[list[int], list[int]]:
    """The 8 positions and 8 words of one block's RECORD (what a reference carries)."""
    return _words(record)


def to_bytes(ts: array, ws: array) -> bytes:
    """Per-block records from the two arrays (8 positions and 8 words per block)."""
    n = len(ts) // SLOTS
    if n <= FEW_BLOCKS:  # most files: one record each costs 7 us, the sliced path with its check 40 us
        return b"".join([_record(ts[SLOTS * k:SLOTS * k + SLOTS], ws[SLOTS * k:SLOTS * k + SLOTS]) for k in range(n)])
    tb, wb = _little(ts), _little(ws)
    out = bytearray(RECORD_SIZE * n)
    out[0::RECORD_SIZE] = tb[0::2 * SLOTS]  # u, from slot 0 (blocks missing it are redone below)
    out[1::RECORD_SIZE] = tb[1::2 * SLOTS]
    for i in range(8):  # window bytes 0-7: word 0; 8-14: bytes 1-7 of word 7
        out[2 + i::RECORD_SIZE] = wb[i::8 * SLOTS]
    for i in range(8, WINDOW):
        out[2 + i::RECORD_SIZE] = wb[8 * (SLOTS - 1) + i - (SLOTS - 1)::8 * SLOTS]
    out[RECORD_SIZE - 1::RECORD_SIZE] = bytes([_ALL]) * n
    partial = sorted({i // SLOTS for i in compress(count(), map(NO_ANCHOR.__eq__, ts))})
    for k in partial:
        out[RECORD_SIZE * k:RECORD_SIZE * (k + 1)] = _record(ts[SLOTS * k:SLOTS * k + SLOTS],
                                                             ws[SLOTS * k:SLOTS * k + SLOTS])
    got = bytes(out)
    if from_bytes(got, n) != (ts, ws):
        raise ProgrammingError("anchors that are not the words of one window per block cannot be serialized")
    return got


def from_bytes(data: bytes, count_: int) -> tuple[array, array]:
    """The two arrays from `count_` records (the caller checked the length)."""
    n = count_
    data = bytes(data[:RECORD_SIZE * n])
    tb = bytearray(2 * SLOTS * n)
    wb = bytearray(8 * SLOTS * n)
    for r in range(SLOTS):
        tb[2 * r::2 * SLOTS] = data[0::RECORD_SIZE]
        tb[2 * r + 1::2 * SLOTS] = data[1::RECORD_SIZE]
        for b in range(8):  # byte b of word r is window byte r + b
            wb[8 * r + b::8 * SLOTS] = data[2 + r + b::RECORD_SIZE]
    ts, ws = array("H"), array("Q")
    ts.frombytes(tb)
    ws.frombytes(wb)
    if sys.byteorder != "little":
        ts.byteswap()
        ws.byteswap()
    masks = data[RECORD_SIZE - 1::RECORD_SIZE]
    for k in compress(count(), map(_ALL.__ne__, masks)):
        t, w = _words(data[RECORD_SIZE * k:RECORD_SIZE * (k + 1)])
        ts[SLOTS * k:SLOTS * k + SLOTS] = array("H", t)
        ws[SLOTS * k:SLOTS * k + SLOTS] = array("Q", w)
    return ts, ws


def from_v2_bytes(data: bytes, count_: int) -> tuple[array, array]:
    """The two arrays from `count_` 80-byte records of a version 2 block index."""
    ts, ws = array("H"), array("Q")
    for fields in V2_RECORD.iter_unpack(data[:V2_RECORD.size * count_]):
        ts.extend(fields[:SLOTS])
        ws.extend(fields[SLOTS:])
    return ts, ws


def _little(a: array) -> bytes:
    if sys.byteorder == "little":
        return a.tobytes()
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


def penalty(window: bytes) -> int:
    """Zero bytes plus adjacent equal bytes in a WINDOW-byte window (low: the words are rare)."""
    x = int.from_bytes(window, "little")
    return window.count(0) + (x ^ (x >> 8)).to_bytes(WINDOW, "little").count(0, 0, WINDOW - 1)


@lru_cache(maxsize=64)
def tries_for(size: int) -> tuple[int, ...]:
    """The window positions u (start 8u) tried first in a block of `size` bytes, in order.

    Spread over the first TRY_SPAN bytes, at the middle of TRIES equal parts.
    """
    span = size if size < TRY_SPAN else TRY_SPAN
    nu = (span - WINDOW) // 8 + 1
    if nu <= 0:
        return ()
    if nu <= TRIES:
        return tuple(range(nu))
    return tuple((2 * m + 1) * nu // (2 * TRIES) for m in range(TRIES))


def record_of(block: bytes | bytearray | memoryview, digest: bytes = b"") -> bytes:
    """The RECORD of one block on its own (`digest`, its strong checksum, is not needed).

    A block of one repeated byte gets no anchors (the finder looks for such runs itself).
    """
    data = bytes(block)
    if data and data.count(data[:1]) == len(data):
        return EMPTY_RECORD
    ts, ws = array("H"), array("Q")
    _pick_one(data, ts, ws)
    return to_bytes(ts, ws)


def _pick_one(data: bytes, ts: array, ws: array) -> None:
    """Append the anchors of one block of any length (plain Python: the rule itself)."""
    tries = tries_for(len(data))
    if not tries:
        # shorter than a window: the residues whose word fits, at offset r
        for r in range(SLOTS):
            fits = r + 8 <= len(data)
            ts.append(0 if fits else NO_ANCHOR)
            ws.append(int.from_bytes(data[r:r + 8], "little") if fits else 0)
        return
    u = _choose(data, tries)
    refused = u < 0
    u = ~u if refused else u
    w = int.from_bytes(data[8 * u:8 * u + WINDOW], "little")
    words = [(w >> (8 * r)) & _MASK for r in range(SLOTS)]
    ts.extend([u] * SLOTS)
    ws.extend(words)
    if refused:
        _screen(len(ts) - SLOTS, ts, ws)


def _screen(at: int, ts: array, ws: array) -> None:
    """Drop the anchors at ts[at:at + SLOTS] whose word is common (from a refused window).

    Measured: one all-zero anchor word and a few zero-padded integers proposed 40% of
    the failed candidates of the 16 MiB real-data benchmark; without an anchor a block is
    not found at that residue, as it would not be once its word is retired.
    """
    for i in range(at, at + SLOTS):
        if penalty_of_word(ws[i]) > MAX_WORD_PENALTY:
            ts[i] = NO_ANCHOR
            ws[i] = 0


def _screen_many(blocks: list[int], ts: array, ws: array) -> None:
    """`_screen` of several blocks (indices into ts, ws), their words scored at once."""
    if not blocks:
        return
    words = b"".join([ws[SLOTS * k:SLOTS * k + SLOTS].tobytes() for k in blocks])
    nwords = len(words) // 8
    x = int.from_bytes(words, "little")
    b7f, b80, b80_7, _, _, _ = _masks(nwords)
    flags = (_zero_bytes(x, b7f, b80) >> 7) + (_zero_bytes(x ^ (x >> 8), b7f, b80_7) >> 7)
    scores = (flags * _ONES).to_bytes(8 * nwords + 8, "little")[7:8 * nwords:8]
    for j in compress(count(), scores.translate(_WORD_REFUSE)):
        i = SLOTS * blocks[j >> 3] + (j & 7)
        ts[i] = NO_ANCHOR
        ws[i] = 0


def penalty_of_word(w: int) -> int:
    """Zero bytes plus adjacent equal bytes of one 8-byte word."""
    return w.to_bytes(8, "little").count(0) + (w ^ (w >> 8)).to_bytes(8, "little").count(0, 0, 7)


def _choose(data: bytes | memoryview, tries: tuple[int, ...], first: int = 0, best_p: int = 2 * WINDOW,
            best_u: int = 0) -> int:
    """The window position u of one block: the first of `tries[first:]`, then of its island's
    ends, with penalty <= MAX_PENALTY, else ~u of the least penalized (the earliest on a tie).

    `best_p`, `best_u`: the least penalized of `tries[:first]`, already refused.
    """
    for u in tries[first:]:
        p = penalty(bytes(data[8 * u:8 * u + WINDOW]))
        if p <= MAX_PENALTY:
            return u
        if p < best_p:
            best_p, best_u = p, u
    # mostly zero bytes (padding, tables, sparse structures): a window in a run of other bytes
    # (22 bytes hold an aligned window), found by `bytes.translate` and `bytes.find` at C speed
    span = len(data) if len(data) < SPAN else SPAN
    classes = bytes(data[:span]).translate(_CLASSES)
    j = classes.find(_RUN)
    for _ in range(RUN_TRIES):
        if j < 0:
            break
        u = (j + 7) >> 3
        p = penalty(bytes(data[8 * u:8 * u + WINDOW]))
        if p <= MAX_PENALTY:
            return u
        if p < best_p:
            best_p, best_u = p, u
        j = classes.find(_RUN, 8 * u + 8)
    return ~best_u


@lru_cache(maxsize=8)
def _masks(nwords: int) -> tuple[int, int, int, int, int, int]:
    """The per-word constants of `_penalties`, repeated for `nwords` words."""
    def rep(word: int) -> int:
        return int.from_bytes(word.to_bytes(8, "little") * nwords, "little")
    return rep(_B7F), rep(_B80), rep(_B80 & _LOW7), rep(_B80 >> 16), rep(_LOW7), rep(0xFF)


def _zero_bytes(x: int, b7f: int, b80: int) -> int:
    """Bit 7 of each byte of x set where that byte is zero (exact: no carries between bytes)."""
    return (((x & b7f) + b7f) | x) & b80 ^ b80


def _penalties(lo: int, hi: int, nwords: int) -> bytes:
    """`penalty` of many windows at once: byte i is window i's, given its first 8 bytes as
    word i of `lo` and the next 8 as word i of `hi` (fields of 64 bits, little-endian).

    Big-integer arithmetic on all blocks of a batch: ~25 operations of a few us each
    per 1 MiB of 4 KiB blocks, against ~3 us of Python per block done one by one.
    """
    b7f, b80, b80_7, b80_6, low7, low8 = _masks(nwords)
    flags = (_zero_bytes(lo, b7f, b80) >> 7) + (_zero_bytes(hi, b7f, b80_7) >> 7)  # byte 15 is not in
    # adjacent equal bytes: byte i of lo against byte i+1 (byte 7 against hi's byte 0)
    flags += _zero_bytes(lo ^ (((lo >> 8) & low7) | ((hi & low8) << 56)), b7f, b80) >> 7
    flags += _zero_bytes(hi ^ (hi >> 8), b7f, b80_6) >> 7  # pairs (8, 9) .. (13, 14)
    # sum the 8 bytes of each word into its top byte (each byte <= 4: no carries)
    return (flags * _ONES).to_bytes(8 * nwords + 8, "little")[7:8 * nwords:8]


#: bytes.translate table: 0 for the usual filler bytes (zero, 0xFF, space), 1 for the others
_CLASSES = bytes(0 if c in (0x00, 0x20, 0xFF) else 1 for c in range(256))
_RUN = b"\x01" * (WINDOW + 7)
#: bytes.translate table: word penalty -> 1 where too common
_WORD_REFUSE = bytes(0 if p <= MAX_WORD_PENALTY else 1 for p in range(256))
#: bytes.translate table: penalty -> 1 where refused
_REFUSE = bytes(0 if p <= MAX_PENALTY else 1 for p in range(256))


def picks(view: memoryview, block_size: int, digests: list[bytes], used: set[int], ts: array, ws: array) -> None:
    """Append the anchors of the blocks of `view` (cut every `block_size` bytes) to `ts`, `ws`.

    Exactly `record_of` of each block (less the blanking of one-byte runs, which callers
    do), but batched: while many blocks lack a window, the next tried position is scored
    for all blocks at once (`_penalties`), and the words are fetched by strided slices of
    `cast("Q")`; Python work is per block still without a window only. `digests` and `used`
    are accepted for compatibility: the choice depends on each block's bytes alone.
    """
    total = len(view)
    nfull = total // block_size if block_size % 8 == 0 and block_size >= WINDOW else 0
    if nfull:
        tries = tries_for(block_size)
        stride = block_size // 8
        casts = [view[r:r + 8 * ((total - r) // 8)].cast("Q") for r in range(SLOTS)]
        cast = casts[0]
        u0 = tries[0]
        chosen = array("H", [u0]) * nfull
        pending: list[int] | range = range(nfull)
        best: dict[int, tuple[int, int]] = {}  # block -> (penalty, u) of its best refused window
        m = 0
        while m < len(tries) and len(pending) >= VECTOR_MIN:
            u = tries[m]
            lo = cast[u::stride][:nfull].tobytes()  # strided memoryviews unpack slowly; bytes do not
            hi = cast[u + 1::stride][:nfull].tobytes()
            scores = _penalties(int.from_bytes(lo, "little"), int.from_bytes(hi, "little"), nfull)
            if m == 0:
                pending = list(compress(count(), scores.translate(_REFUSE)))
                best = {i: (scores[i], u) for i in pending}
            else:
                still = []
                for i in pending:
                    p = scores[i]
                    if p <= MAX_PENALTY:
                        chosen[i] = u
                    else:
                        if p < best[i][0]:
                            best[i] = (p, u)
                        still.append(i)
                pending = still
            m += 1
        refused = []
        for i in pending:
            start = i * block_size
            with view[start:start + block_size] as block:
                u = _choose(block, tries, m, *best.get(i, (2 * WINDOW, u0)))
            if u < 0:
                refused.append(i)
                u = ~u
            chosen[i] = u
        ts_chunk = array("H", bytes(2 * SLOTS * nfull))
        ws_chunk = array("Q", bytes(8 * SLOTS * nfull))
        for r in range(SLOTS):
            ts_chunk[r::SLOTS] = chosen
            ws_chunk[r::SLOTS] = array("Q", casts[r][u0::stride][:nfull].tobytes())
        for i in compress(count(), map(u0.__ne__, chosen)):
            o = i * stride + chosen[i]
            ws_chunk[SLOTS * i:SLOTS * i + SLOTS] = array("Q", [c[o] for c in casts])
        for c in casts:
            c.release()
        _screen_many(refused, ts_chunk, ws_chunk)
        ts.extend(ts_chunk)
        ws.extend(ws_chunk)
    for start in range(nfull * block_size, total, block_size):
        with view[start:start + block_size] as block:
            _pick_one(bytes(block), ts, ws)
