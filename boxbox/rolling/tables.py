"""The delta finder's lookup tables for one signature, built once and shared by every delta.

Built from the signature alone (sizes, checksums, anchor records) with C-level maps, zips
and set operations; Python loops only over the exceptions (repeated words, blocks without
anchors). The search's part (`Tables.search_tables`) waits for the first search: a file
with only small edits never needs it.
"""

from __future__ import annotations

import sys
from array import array
from collections import Counter, deque
from itertools import compress, count, repeat

from boxbox.rolling import anchors as anchors_mod
from boxbox.rolling.checksum import strong_function, uniform_byte, uniform_digest
from boxbox.rolling.signature import Signature

#: smallest block searched for away from its expected position
MIN_SEARCH = 16
#: most blocks one anchor word may point at (repetitive data); the rest lose that anchor
WORD_FANOUT = 16
#: distinct block sizes the fallbacks (runs, rolling) handle; Box Backup searched up to 64
MAX_SEARCH_SIZES = 64

# bytes.translate tables
_INVERT = bytes([1]) + bytes(255)  # 0 -> 1, anything else -> 0
_IS_FF = bytes(255) + bytes([1])
_IS_8 = bytes(8) + bytes([1]) + bytes(247)
_IS_FAR = bytes([0]) + bytes([1]) * 254 + bytes([0])
assert anchors_mod.TRY_SPAN == 8 * 256


class Tables:
    """The finder's lookup tables for one signature, built once and shared by every delta."""

    def __init__(self, sig: Signature) -> None:
        # built once per signature but timed with the delta: C-level maps, zips and set
        # operations; Python loops only over the exceptions (measured for 4096 blocks with
        # search_tables: 9 -> 4.5 ms for random data, 17 -> 8 ms for /usr/lib's)
        blocks = sig.blocks
        self.hash_name = sig.hash_name
        self.strong = strong_function(sig.hash_name)
        n = self.n = len(blocks)
        sizes, weaks, strongs = (list(column) for column in zip(*blocks)) if blocks else ([], [], [])
        self.sizes, self.weaks, self.strongs = sizes, weaks, strongs
        self.max_size = max(sizes, default=0)
        counts = Counter(sizes)
        self.main_size = max(counts, key=lambda s: (counts[s], s)) if counts else 0
        self.by_strong = dict(zip(reversed(strongs), range(n - 1, -1, -1)))  # the first block wins
        searchable = [s for s in sizes if s >= MIN_SEARCH]
        self.min_search = min(searchable, default=0)
        self.sig = sig
        self.searchable = False  # search_tables() done

    def search_tables(self) -> None:
        """The tables of the search, on its first need: a file with only small edits never
        needs them (building them takes 4.5-8 ms for 4096 blocks; its delta 25-30 ms)."""
        if self.searchable:
            return
        sig = self.sig
        blocks = sig.blocks
        n = self.n
        sizes, strongs, by_strong = self.sizes, self.strongs, self.by_strong
        # tiny blocks and duplicates are never searched for
        unsearched = set(compress(count(), map(MIN_SEARCH.__gt__, sizes)))
        if len(by_strong) < n:
            unsearched.update(compress(count(), map(int.__ne__, map(by_strong.__getitem__, strongs), count())))

        # anchor word -> slot i (block i >> 3, residue i & 7); words in more than one slot
        # also get the list of their slots (at most WORD_FANOUT) in `amulti`
        jmax = jnear = 0
        far_words: set[int] = set()
        raw = sig.anchors
        ts = ws = None
        amap: dict[int, int] = {}
        amulti: dict[int, list[int]] = {}
        anchored: set[int] = set()  # blocks with a usable anchor
        if raw is not None:
            ts, ws = anchors_mod.from_bytes(raw, n)
            no_anchor = anchors_mod.NO_ANCHOR
            blank_ts = array("H", [no_anchor]) * anchors_mod.SLOTS
            blank_ws = array("Q", [0]) * anchors_mod.SLOTS
            for k in unsearched:
                ts[8 * k:8 * k + 8] = blank_ts
                ws[8 * k:8 * k + 8] = blank_ws
            anchored = set(range(n))
            empty_slots = 0  # bit 8i set where slot i is empty
            # high bytes of the positions: 0xff only in NO_ANCHOR (positions stay below SPAN / 8)
            high = ts.tobytes()[1::2] if sys.byteorder == "little" else ts.tobytes()[0::2]
            if no_anchor in ts:
                # empty slots per block: the bytes of one 8-byte group summed by one multiplication
                empty_slots = int.from_bytes(high.translate(_IS_FF), "little")
                empties = (empty_slots * 0x0101010101010101).to_bytes(len(high) + 8, "little")[7:len(high):8]
                all_empty = set(compress(count(), empties.translate(_IS_8)))
                anchored -= all_empty
            # empty slots hold the word 0, which no usable anchor is (it is all zero bytes)
            amap = dict(zip(ws, count()))
            amap.pop(0, None)
            if len(amap) < len(ws):
                # the slots no word maps to (ascending) are the earlier ones of repeated words
                kept = bytearray(len(ws))
                deque(map(kept.__setitem__, amap.values(), repeat(1)), 0)  # consumed at C speed
                if empty_slots:
                    kept = (int.from_bytes(kept, "little") | empty_slots).to_bytes(len(ws), "little")
                for i in compress(count(), kept.translate(_INVERT)):
                    w = ws[i]
                    slots = amulti.get(w)
                    if slots is None:
                        slots = amulti[w] = []
                    if len(slots) < WORD_FANOUT - 1:
                        slots.append(i)
                for w, slots in amulti.items():
                    slots.append(amap[w])
                    amap[w] = slots[0]
            tset = set(ts)
            tset.discard(no_anchor)
            jmax = 8 * max(tset, default=0) + 7
            # words placed past TRY_SPAN (mostly-zero blocks) are few: only they are looked for
            # in the lookahead beyond jnear (measured: 10% of blocks rewritten in 16 MiB of
            # /usr/lib, 4 KiB blocks: delta 71 -> 52 ms with all anchors within 1 KiB)
            jnear = min(jmax, anchors_mod.TRY_SPAN - 1)
            if jmax > jnear:  # positions of 256 and more (TRY_SPAN / 8) have a high byte 1 .. 0xfe
                far_words = set(compress(ws, high.translate(_IS_FAR)))
        uniform: dict[tuple[int, int], int] = {}
        rolling: dict[int, dict[int, dict[bytes, int]]] = {}
        fallback_sizes: set[int] = set()
        for k in sorted(set(range(n)) - anchored - unsearched):
            b = blocks[k]
            if b.size not in fallback_sizes and len(fallback_sizes) >= MAX_SEARCH_SIZES:
                continue  # too many distinct sizes: only matched where expected
            fallback_sizes.add(b.size)
            c = uniform_byte(b.size, b.weak)
            if c is not None and b.strong == uniform_digest(sig.hash_name, c, b.size):
                uniform.setdefault((b.size, c), k)
            elif raw is None:
                rolling.setdefault(b.size, {}).setdefault(b.weak, {}).setdefault(b.strong, k)
            # else: with anchors, a block whose words were all too common is not searched for
            # (_Finder._near still finds it after a small edit)
        self.ts = ts
        self.ws = ws
        self.amap = amap
        self.amulti = amulti
        self.jmax = jmax
        self.jnear = jnear
        self.far_words = far_words
        # largest first so that equal starts prefer the larger block
        self.uniform = sorted(((s, bytes((c,)) * s, k) for (s, c), k in uniform.items()), reverse=True)
        self.rolling = rolling
        self.searchable = True


def tables_for(sig: Signature) -> Tables:
    """The tables of `sig`, built on first use and kept with it."""
    index = sig._index
    if not isinstance(index, Tables):
        index = sig._index = Tables(sig)
    return index
