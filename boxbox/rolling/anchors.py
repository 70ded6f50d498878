"""Candidate filter: eight 8-byte "anchor" words per block, one per offset residue mod 8.

Why: testing the rolling checksum at every offset of new data costs a set lookup per
byte (25-40 MB/s at best, 13 MB/s with the sum itself), and `rdiff` does 64-67 MB/s on
all-new data. If block k sits at any offset p of the new file, exactly one of its anchors
(the one at block offset j with p + j = 0 mod 8) lands on an 8-aligned word of the new
file, so the finder looks up only every eighth offset: one `memoryview.cast('Q')` and a
set test per 8 bytes (~250 MB/s for `set.isdisjoint`). A hit proposes p = q - j; the other
anchors, then the weak rolling checksum, then the strong hash decide.

Rarity matters: a word like eight zero bytes would propose a candidate at every aligned
offset of a zero region (200x slower in the measurement that motivated this). So words
with two equal adjacent bytes are avoided, and so are words another block already uses;
the finder also retires a word that keeps proposing failed candidates. Blocks made of one
repeated byte get no anchors at all: the finder finds those with `bytes.find` of the run.

Serialized per block (little-endian), `RECORD`: 8 x u16 t_r, then 8 x u64 word_r; the
anchor of residue r sits at block offset j = r + 8 * t_r, and t_r == NO_ANCHOR means none.
A signature's anchors are the records of its blocks, concatenated, so a block index can
keep each block's record beside its size and checksums. In memory they are two flat
arrays (positions, words), converted with `array` slicing at C speed.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import Counter
from functools import lru_cache
from itertools import compress

SLOTS = 8
#: anchors lie within the first SPAN bytes of a block, so a search window needs to look
#: only SPAN bytes past its end to see every candidate that starts inside it
SPAN = 4096
NO_ANCHOR = 0xFFFF
RECORD = struct.Struct("<8H8Q")
assert RECORD.size == 80
EMPTY_RECORD = RECORD.pack(*[NO_ANCHOR] * SLOTS, *[0] * SLOTS)
#: serialized bytes per block
RECORD_SIZE = RECORD.size
#: positions tried per residue before settling for the first word seen
TRIES = 8
_LOW7 = 0x00010101010101
_LOW7_BYTES = 0x00FFFFFFFFFFFFFF
_HIGH7 = 0x00808080808080


def to_bytes(ts: array, ws: array) -> bytes:
    """Per-block records from the two arrays (8 positions and 8 words per block)."""
    n = len(ts) // SLOTS
    if sys.byteorder != "little":
        return b"".join(RECORD.pack(*ts[SLOTS * k:SLOTS * k + SLOTS], *ws[SLOTS * k:SLOTS * k + SLOTS])
                        for k in range(n))
    out = array("Q", bytes(RECORD_SIZE * n))
    tq = array("Q", ts.tobytes())  # 8 positions = 2 words per block
    out[0::10] = tq[0::2]
    out[1::10] = tq[1::2]
    for r in range(SLOTS):
        out[2 + r::10] = ws[r::SLOTS]
    return out.tobytes()


def from_bytes(data: bytes, count: int) -> tuple[array, array]:
    """The two arrays from `count` records (the caller checked the length)."""
    if sys.byteorder != "little":
        ts, ws = array("H"), array("Q")
        for fields in RECORD.iter_unpack(data[:RECORD_SIZE * count]):
            ts.extend(fields[:SLOTS])
            ws.extend(fields[SLOTS:])
        return ts, ws
    q = array("Q", data[:RECORD_SIZE * count])
    tq = array("Q", bytes(16 * count))
    tq[0::2] = q[0::10]
    tq[1::2] = q[1::10]
    ws = array("Q", bytes(8 * SLOTS * count))
    for r in range(SLOTS):
        ws[r::SLOTS] = q[2 + r::10]
    return array("H", tq.tobytes()), ws


def record_of(block: bytes | bytearray | memoryview, digest: bytes) -> bytes:
    """The RECORD of one block on its own (`digest`: its strong checksum).

    A block of one repeated byte gets no anchors (the finder looks for such runs itself).
    """
    data = bytes(block)
    if data and data.count(data[:1]) == len(data):
        return EMPTY_RECORD
    ts, ws = array("H"), array("Q")
    with memoryview(block) as view:
        _pick_one(view, digest, set(), ts, ws)
    return RECORD.pack(*ts, *ws)


def picks(view: memoryview, block_size: int, digests: list[bytes], used: set[int], ts: array, ws: array) -> None:
    """Append the anchors of the blocks of `view` (cut every `block_size` bytes) to `ts`, `ws`.

    The word of residue r is looked for at TRIES fixed positions spread over the block,
    each fetched for all blocks at once by a strided slice of one `cast("Q")`. A word is
    refused if two adjacent bytes are equal (runs, zero-padded integers, doubled spaces:
    the words that recur everywhere; tested for all blocks at once with big-integer
    arithmetic) or if another block uses it; the first position not refused wins, else
    the first position. Python work is per refused word only. `used` spans the file.
    """
    total = len(view)
    nfull = total // block_size if block_size % 8 == 0 else 0
    if nfull:
        casts = [view[r:r + 8 * ((total - r) // 8)].cast("Q") for r in range(SLOTS)]
        span = block_size if block_size < SPAN else SPAN
        ns = [(span - r - 8) // 8 + 1 for r in range(SLOTS)]
        tpos = [r * ns[r] // SLOTS for r in range(SLOTS)]
        chunk_ts = array("H", tpos * nfull)
        chunk_ws = array("Q", bytes(8 * SLOTS * nfull))
        low, high = _masks(nfull)
        stride = block_size // 8
        unsettled: dict[int, list[int]] = {}  # block -> residues where every try was refused
        for r in range(SLOTS):
            n = ns[r]
            step = n // TRIES or 1
            tries = [(tpos[r] + m * step) % n for m in range(TRIES if n >= TRIES else n)]
            cast = casts[r]

            def option(t: int) -> tuple[int, array, array, array]:
                """Words at position t of every block, flags (nonzero: two adjacent bytes equal)
                and loose flags (nonzero: two adjacent zero bytes)."""
                picked = cast[t::stride][:nfull]
                raw = picked.tobytes()  # strided memoryviews unpack slowly; arrays do not
                picked.release()
                w = int.from_bytes(raw, "little")
                x = w ^ (w >> 8)
                y = w | (w >> 8)
                return (t, array("Q", raw), array("Q", ((x - low) & ~x & high).to_bytes(8 * nfull, "little")),
                        array("Q", ((y - low) & ~y & high).to_bytes(8 * nfull, "little")))

            t0, words, flags, _ = option(tries[0])
            bad = set(compress(range(nfull), flags))
            common = used.intersection(words)
            if len(set(words)) < nfull:
                common.update(w for w, c in Counter(words).items() if c > 1)
            if common:
                bad.update(i for i, w in enumerate(words) if w in common)
            if bad:
                # other positions: a strict word, else one without two adjacent zero bytes
                # (binaries have few strict ones), else see `_sparse` below
                options = [option(t) for t in tries[1:]] if len(bad) > nfull // 8 else None
                for i in bad:
                    o = i * stride
                    choice = None
                    for t in tries[1:] if options is None else ():
                        w = cast[o + t]
                        x = w ^ (w >> 8)
                        if not (x - _LOW7) & ~x & _HIGH7 and w not in used and w not in common:
                            choice = t, w
                            break
                    for t, other, strict, _ in options or ():
                        w = other[i]
                        if not strict[i] and w not in used and w not in common:
                            choice = t, w
                            break
                    if choice is None:
                        for t in tries:
                            w = cast[o + t]
                            y = w | (w >> 8)
                            if not (y - _LOW7) & ~y & _HIGH7 and (w ^ (w >> 8)) & _LOW7_BYTES \
                                    and w not in used and w not in common:
                                choice = t, w
                                break
                    if choice is None:
                        unsettled.setdefault(i, []).append(r)
                    else:
                        words[i] = choice[1]
                        chunk_ts[SLOTS * i + r] = choice[0]
            used.update(words)
            chunk_ws[r::SLOTS] = words
        # blocks with residues still on a common word are sparse (zero padding with a few
        # values): take words starting in the first stretch of other bytes
        for i, residues in unsettled.items():
            start = i * block_size
            with view[start:start + span] as part:
                for r, (t, w) in _sparse(part, residues, used).items():
                    chunk_ts[SLOTS * i + r] = t
                    chunk_ws[SLOTS * i + r] = w
                    used.add(w)
        for c in casts:
            c.release()
        ts.extend(chunk_ts)
        ws.extend(chunk_ws)
    for start in range(nfull * block_size, total, block_size):
        block = view[start:start + block_size]
        _pick_one(block, digests[start // block_size], used, ts, ws)
        block.release()


@lru_cache(maxsize=8)
def _masks(nwords: int) -> tuple[int, int]:
    """Per-word constants of the "has a zero byte among the low 7" test, for `nwords` words."""
    return (int.from_bytes(_LOW7.to_bytes(8, "little") * nwords, "little"),
            int.from_bytes(_HIGH7.to_bytes(8, "little") * nwords, "little"))


def _pick_one(block: memoryview, digest: bytes, used: set[int], ts: array, ws: array) -> None:
    """Anchors of one block of any length (the short last block, odd block sizes)."""
    size = len(block)
    span = size if size < SPAN else SPAN
    for r in range(SLOTS):
        n = (span - r - 8) // 8 + 1
        if n <= 0:
            ts.append(NO_ANCHOR)
            ws.append(0)
            continue
        words = block[r:r + 8 * n].cast("Q")
        t, w = _retry(words, 0, r * n // SLOTS, n, used, first_too=True)
        words.release()
        used.add(w)
        ts.append(t)
        ws.append(w)


def _sparse(span: memoryview, residues: list[int], used: set[int]) -> dict[int, tuple[int, int]]:
    """Words for `residues` of a mostly-one-byte block: {r: (t, word)}.

    They start at the first byte that differs from the block's first byte (found by
    `bytes.lstrip`, at C speed), one per residue, so they hold the start of the first
    "island" of data. Measured: a third of the blocks of binaries under /usr/lib are 93%
    zero bytes; a scan for strict words there cost 6x the rest of the signature.
    """
    data = span.tobytes()
    island = len(data) - len(data.lstrip(data[:1]))
    found: dict[int, tuple[int, int]] = {}
    for r in residues:
        j = island + ((r - island) & 7)
        if j + 8 <= len(data):
            w = int.from_bytes(data[j:j + 8], "little")
            if w not in used:
                found[r] = ((j - r) >> 3, w)
    return found


def _retry(words: memoryview, base: int, t: int, n: int, used: set[int],
           first_too: bool = False) -> tuple[int, int]:
    """A good word of one residue among positions t, t+step ... (TRIES of them).

    "Good" means no two equal adjacent bytes and not used by another block. If none is,
    the unused one with the most distinct bytes (a scan of the whole span for a good word
    was measured: 30% of the residues of binaries need it and it made signatures 6x
    slower, for no smaller delta).
    """
    first = t
    step = n // TRIES or 1
    if not first_too:
        t += step
        if t >= n:
            t -= n
    best_t = first
    best_score = -1
    for _ in range(TRIES if n >= TRIES else n):
        w = words[base + t]
        x = w ^ (w >> 8)
        if w not in used:
            if not (x - _LOW7) & ~x & _HIGH7:
                return t, w
            score = len(set(w.to_bytes(8, "little")))
            if score > best_score:
                best_t, best_score = t, score
        t += step
        if t >= n:
            t -= n
    return best_t, words[base + best_t]
