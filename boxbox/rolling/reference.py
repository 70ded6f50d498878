"""Plain reference versions of signature, delta and patch: slow, obvious, for tests only.

The fast finder in `delta.py` must copy exactly the same bytes as `reference_delta` on
data where every block has selective anchors (and always produce a correct delta). The
rules they share:
- at the position right after a match (or the file start), the expected next block is
  tried first, whatever its size; if it misses, the next two blocks where they would sit,
  then (those of at least MIN_SEARCH bytes) at the first offset within NEAR_SHIFT of
  there (not before the miss);
- otherwise the earliest offset at which any block of at least MIN_SEARCH bytes matches
  wins; at equal offsets the larger block, then the lower index;
- a match needs the weak rolling checksum and the strong digest to agree.
"""

from __future__ import annotations

from boxbox.rolling.checksum import RollingAdler32, strong_checksum, weak_checksum
from boxbox.rolling.delta import MIN_SEARCH, NEAR_SHIFT
from boxbox.rolling.signature import BlockSig, Signature

Op = int | bytes


def reference_signature(old: bytes, block_size: int, hash_name: str) -> Signature:
    """Signature of `old` in fixed blocks (no anchors)."""
    blocks = [BlockSig(len(b), weak_checksum(b), strong_checksum(b, hash_name))
              for b in (old[i:i + block_size] for i in range(0, len(old), block_size))]
    return Signature(hash_name, blocks)


def reference_delta(sig: Signature, new: bytes) -> list[Op]:
    """rsync's greedy search, one offset at a time, with one rolling Adler-32 per block size."""
    blocks = sig.blocks
    table: dict[tuple[int, int], dict[bytes, int]] = {}
    for k, b in enumerate(blocks):
        if b.size >= MIN_SEARCH:
            table.setdefault((b.size, b.weak), {}).setdefault(b.strong, k)
    sizes = sorted({s for s, _ in table}, reverse=True)
    ops: list[Op] = []
    lit = 0  # start of the pending literal
    p = 0
    e = 0  # expected block
    fresh = True  # p is right after a match
    rolls: dict[int, RollingAdler32] = {}
    while p < len(new):
        match = -1
        if fresh and e < len(blocks):
            b = blocks[e]
            window = new[p:p + b.size]
            if len(window) == b.size and weak_checksum(window) == b.weak \
                    and strong_checksum(window, sig.hash_name) == b.strong:
                match = e
        if match < 0 and fresh and e + 1 < len(blocks) and p + blocks[e].size <= len(new):
            # the next block or the one after where it would sit, else within NEAR_SHIFT of
            # there (block e rewritten, or a small insertion or deletion)
            found = None
            in_place: list[tuple[int, list[int] | range]] = []
            near: list[tuple[int, list[int] | range]] = []
            q = p + blocks[e].size
            for j in (e + 1, e + 2)[:len(blocks) - e - 1]:
                in_place.append((j, [q]))
                if blocks[j].size >= MIN_SEARCH:
                    near.append((j, range(max(p, q - NEAR_SHIFT), min(q + NEAR_SHIFT, len(new) - blocks[j].size) + 1)))
                q += blocks[j].size
            for j, starts in in_place + near:
                bj = blocks[j]
                for start in starts:
                    window = new[start:start + bj.size]
                    if len(window) == bj.size and weak_checksum(window) == bj.weak \
                            and strong_checksum(window, sig.hash_name) == bj.strong:
                        found = start, j
                        break
                if found is not None:
                    break
            if found is not None:
                start, j = found
                if lit < start:
                    ops.append(new[lit:start])
                ops.append(j)
                p = lit = start + blocks[j].size
                e = j + 1
                rolls.clear()
                continue
        if match < 0:
            for s in sizes:
                if p + s > len(new):
                    continue
                roll = rolls.get(s)
                if roll is None or fresh:
                    roll = rolls[s] = RollingAdler32(new[p:p + s])
                entries = table.get((s, roll.value))
                if entries is not None:
                    k = entries.get(strong_checksum(new[p:p + s], sig.hash_name))
                    if k is not None:
                        match = k
                        break
        if match >= 0:
            if lit < p:
                ops.append(new[lit:p])
            ops.append(match)
            p += blocks[match].size
            lit = p
            e = match + 1
            fresh = True
            rolls.clear()
            continue
        fresh = False
        for s, roll in list(rolls.items()):
            if p + s < len(new):
                roll.roll(new[p], new[p + s])
            else:
                del rolls[s]
        p += 1
    if lit < len(new):
        ops.append(new[lit:])
    return ops


def reference_apply(ops: list[Op], old_blocks: list[bytes]) -> bytes:
    """The new file from old blocks and literals."""
    return b"".join(old_blocks[op] if isinstance(op, int) else op for op in ops)


def copied_ranges(ops: list[Op], sig: Signature) -> list[tuple[int, int]]:
    """The [start, end) ranges of the new file that a delta copies from old blocks, merged."""
    ranges: list[tuple[int, int]] = []
    at = 0
    for op in ops:
        if isinstance(op, int):
            n = sig.blocks[op].size
            if ranges and ranges[-1][1] == at:
                ranges[-1] = (ranges[-1][0], at + n)
            else:
                ranges.append((at, at + n))
            at += n
        else:
            at += len(op)
    return ranges
