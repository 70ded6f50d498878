"""Properties of the delta engine over random files and random edit scripts.

- Any old file, any new file, any signature shape: patching the delta gives the new file.
- On high-entropy data the fast finder copies exactly the bytes the plain reference does.
- The batched anchor picker chooses exactly what the plain per-block rule does.
- Malformed signatures and deltas raise FormatError and nothing else.
"""

from __future__ import annotations

import io
import random
import struct
import time

from hypothesis import example, given
from hypothesis import strategies as st

from array import array

from boxbox.errors import FormatError
from boxbox.rolling import anchors
from boxbox.rolling.delta import delta
from boxbox.rolling.patch import decode_delta, encode_delta
from boxbox.rolling.reference import copied_ranges, reference_apply, reference_delta
from boxbox.rolling.signature import Signature, signature_of, signature_of_blocks

BLOCK_SIZES = [16, 24, 37, 64, 256, 1000]
EDIT_KINDS = ["insert", "delete", "overwrite", "append", "truncate", "move", "duplicate", "repeat"]

edits_strategy = st.lists(st.tuples(st.sampled_from(EDIT_KINDS), st.floats(0, 1), st.integers(0, 700),
                                    st.floats(0, 1)), max_size=6)


def apply_edits(old: bytes, edits: list[tuple[str, float, int, float]], block_size: int,
                payload: random.Random) -> bytes:
    new = bytearray(old)
    for kind, where, length, other in edits:
        at = int(where * len(new))
        data = payload.randbytes(length)
        if kind == "insert":
            new[at:at] = data
        elif kind == "delete":
            del new[at:at + length]
        elif kind == "overwrite":
            new[at:at + length] = data
        elif kind == "append":
            new += data
        elif kind == "truncate":
            del new[at:]
        elif kind == "move":
            piece = bytes(new[at:at + length])
            del new[at:at + length]
            to = int(other * len(new))
            new[to:to] = piece
        elif kind == "duplicate":  # an old block again, somewhere else
            k = int(other * (len(old) // block_size))
            new[at:at] = old[k * block_size:(k + 1) * block_size]
        elif kind == "repeat":  # a short pattern many times
            new[at:at] = data[:1 + length % 7] * (length + 1)
    return bytes(new)


def blocks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def check_round_trip(sig: Signature, blocks: list[bytes], new: bytes, **kw) -> list:
    ops = list(delta(sig, io.BytesIO(new), **kw))
    assert reference_apply(ops, blocks) == new
    assert list(decode_delta(encode_delta(ops))) == ops
    return ops


@given(old=st.binary(max_size=5000), edits=edits_strategy, bs=st.sampled_from(BLOCK_SIZES),
       hash_name=st.sampled_from(["sha256", "blake2b"]), anchors=st.booleans(), seed=st.integers(0, 2**32))
@example(old=b"", edits=[], bs=16, hash_name="sha256", anchors=True, seed=0)
@example(old=bytes(4000), edits=[("insert", 0.5, 3, 0.0)], bs=64, hash_name="sha256", anchors=True, seed=0)
@example(old=b"ab" * 2000, edits=[("insert", 0.0, 1, 0.0)], bs=37, hash_name="blake2b", anchors=True, seed=0)
def test_any_input_patches_back(old: bytes, edits: list, bs: int, hash_name: str, anchors: bool,
                                seed: int) -> None:
    new = apply_edits(old, edits, bs, random.Random(seed))
    sig = signature_of(io.BytesIO(old), bs, hash_name, anchors=anchors)
    check_round_trip(sig, blocks_of(old, bs), new)


@given(seed=st.integers(0, 2**32), size=st.integers(0, 12_000), edits=edits_strategy,
       bs=st.sampled_from(BLOCK_SIZES), anchors=st.booleans())
@example(seed=1, size=1000, edits=[], bs=1000, anchors=True)
@example(seed=1, size=999, edits=[("append", 0.0, 2, 0.0)], bs=1000, anchors=True)
@example(seed=1, size=1001, edits=[("truncate", 0.999, 0, 0.0)], bs=1000, anchors=True)
@example(seed=2, size=2047, edits=[("insert", 0.3, 1, 0.0)], bs=1000, anchors=False)
@example(seed=3, size=5000, edits=[("move", 0.1, 700, 0.9), ("duplicate", 0.5, 0, 0.2)], bs=256, anchors=True)
def test_fast_finder_copies_what_the_reference_copies(seed: int, size: int, edits: list, bs: int,
                                                      anchors: bool) -> None:
    rnd = random.Random(seed)
    old = rnd.randbytes(size)
    new = apply_edits(old, edits, bs, rnd)
    sig = signature_of(io.BytesIO(old), bs, "sha256", anchors=anchors)
    ops = check_round_trip(sig, blocks_of(old, bs), new)
    assert copied_ranges(ops, sig) == copied_ranges(reference_delta(sig, new), sig)


@given(seed=st.integers(0, 2**32), sizes=st.lists(st.sampled_from([8, 16, 100, 512, 1024, 4096]), max_size=12),
       edits=edits_strategy, anchors=st.booleans())
def test_mixed_block_sizes(seed: int, sizes: list[int], edits: list, anchors: bool) -> None:
    rnd = random.Random(seed)
    blocks = [rnd.randbytes(n) for n in sizes]
    old = b"".join(blocks)
    new = apply_edits(old, edits, 512, rnd)
    sig = signature_of_blocks(blocks, "blake2b", anchors=anchors)
    assert Signature.parse(sig.serialize()) == sig
    ops = check_round_trip(sig, blocks, new)
    assert copied_ranges(ops, sig) == copied_ranges(reference_delta(sig, new), sig)


@given(old=st.binary(max_size=3000), new=st.binary(max_size=3000), bs=st.sampled_from(BLOCK_SIZES))
def test_expired_deadline_still_gives_a_correct_delta(old: bytes, new: bytes, bs: int) -> None:
    sig = signature_of(io.BytesIO(old), bs, "sha256")
    check_round_trip(sig, blocks_of(old, bs), new, deadline=time.monotonic() - 1)


# pieces real files are made of: random bytes, zero padding, runs, text, zero-padded tables
pieces = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.integers(1, 3000).map(bytes),
    st.tuples(st.integers(0, 255), st.integers(1, 500)).map(lambda t: bytes((t[0],)) * t[1]),
    st.integers(1, 100).map(lambda n: b"the quick  brown fox\n" * n),
    st.lists(st.integers(0, 1 << 24), min_size=1, max_size=60).map(
        lambda xs: b"".join(struct.pack("<QQ", x, 7) for x in xs)))


@given(parts=st.lists(pieces, max_size=12), bs=st.sampled_from([8, 16, 24, 40, 64, 256, 1000, 1024, 4096, 8192]),
       seed=st.integers(0, 2**32))
@example(parts=[bytes(8)], bs=8, seed=0)
@example(parts=[b"\x01" * 8], bs=8, seed=0)
def test_batched_anchors_equal_the_plain_rule(parts: list[bytes], bs: int, seed: int) -> None:
    data = b"".join(parts) + random.Random(seed).randbytes(seed % 50)
    ts, ws = array("H"), array("Q")
    anchors.picks(memoryview(data), bs, [], set(), ts, ws)
    got = anchors.to_bytes(ts, ws)
    for k, start in enumerate(range(0, len(data), bs)):
        block = data[start:start + bs]
        plain = anchors.record_of(block)
        if plain != anchors.EMPTY_RECORD:  # one repeated byte: record_of blanks it, callers of picks do
            assert got[anchors.RECORD_SIZE * k:anchors.RECORD_SIZE * (k + 1)] == plain


@given(data=st.binary(min_size=16, max_size=400), blocks=st.lists(st.integers(0, 49), max_size=8))
def test_batched_penalties_equal_the_plain_ones(data: bytes, blocks: list[int]) -> None:
    n = (len(data) - 16) // 8 + 1
    lo = int.from_bytes(b"".join(data[8 * i:8 * i + 8] for i in range(n)), "little")
    hi = int.from_bytes(b"".join(data[8 * i + 8:8 * i + 16] for i in range(n)), "little")
    assert list(anchors._penalties(lo, hi, n)) == [anchors.penalty(data[8 * i:8 * i + anchors.WINDOW])
                                                   for i in range(n)]
    ws = array("Q", data[:8 * (len(data) // 64) * 8])
    ts = array("H", [1] * len(ws))
    blocks = sorted({k for k in blocks if 8 * k < len(ws)})
    ts2, ws2 = array("H", ts), array("Q", ws)
    anchors._screen_many(blocks, ts, ws)
    for k in blocks:
        anchors._screen(8 * k, ts2, ws2)
    assert (ts, ws) == (ts2, ws2)


_SIG = signature_of(io.BytesIO(random.Random(4).randbytes(3000)), 1000, "sha256").serialize()
_DELTA = b"".join(encode_delta([0, b"abc", 2, 3, b"x" * 300]))


def _mutate(blob: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(blob[:cut])
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    return bytes(data)


@given(cut=st.integers(0, len(_SIG) + 5), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                         max_size=4))
def test_malformed_signatures_raise_only_format_error(cut: int, flips: list[tuple[int, int]]) -> None:
    try:
        Signature.parse(_mutate(_SIG, cut, flips))
    except FormatError:
        pass


@given(blob=st.binary(max_size=200))
def test_arbitrary_bytes_as_signature_raise_only_format_error(blob: bytes) -> None:
    try:
        Signature.parse(b"BXSG" + blob)
    except FormatError:
        pass


@given(cut=st.integers(0, len(_DELTA) + 5), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                           max_size=4), chunk=st.integers(1, 64))
def test_malformed_deltas_raise_only_format_error(cut: int, flips: list[tuple[int, int]], chunk: int) -> None:
    blob = _mutate(_DELTA, cut, flips)
    try:
        # block_count bounds COPY runs (a flipped count could otherwise ask for 2**32 blocks)
        list(decode_delta([blob[i:i + chunk] for i in range(0, len(blob), chunk)], block_count=4))
    except FormatError:
        pass


@given(parts=st.lists(pieces, min_size=1, max_size=12), bs=st.sampled_from([8, 16, 64, 256]))
def test_few_and_many_block_records_agree(parts: list[bytes], bs: int) -> None:
    """`to_bytes` packs up to FEW_BLOCKS blocks one record at a time and more by slicing: same bytes,
    and both read back to the arrays."""
    ts, ws = array("H"), array("Q")
    anchors.picks(memoryview(b"".join(parts)), bs, [], set(), ts, ws)
    n = len(ts) // anchors.SLOTS
    whole = anchors.to_bytes(ts, ws)
    for k in range(n):
        one = anchors.to_bytes(ts[8 * k:8 * k + 8], ws[8 * k:8 * k + 8])
        assert whole[anchors.RECORD_SIZE * k:anchors.RECORD_SIZE * (k + 1)] == one
    assert anchors.from_bytes(whole, n) == (ts, ws)
