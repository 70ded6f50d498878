"""Properties of the delta engine over random files and random edit scripts.

- Any old file, any new file, any signature shape: patching the delta gives the new file.
- On high-entropy data the fast finder copies exactly the bytes the plain reference does.
- Malformed signatures and deltas raise FormatError and nothing else.
"""

from __future__ import annotations

import io
import random
import time

from hypothesis import example, given
from hypothesis import strategies as st

from boxbox.errors import FormatError
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
