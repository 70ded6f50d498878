"""The delta engine, module by module: layout, checksums, signatures, delta search, patch."""

from __future__ import annotations

import io
import random
from array import array
import struct
import time
import tracemalloc
import zlib

import pytest

from boxbox import magic
from boxbox.errors import FormatError, ProgrammingError
from boxbox.rolling import anchors, checksum, delta as delta_mod, layout, patch
from boxbox.rolling.checksum import HASHES, STRONG_SIZE, RollingAdler32, strong_checksum, weak_checksum
from boxbox.rolling.delta import LITERAL_MAX, delta
from boxbox.rolling.patch import apply, decode_delta, encode_delta
from boxbox.rolling.reference import copied_ranges, reference_apply, reference_delta, reference_signature
from boxbox.rolling.signature import (BlockSig, Signature, block_anchors, block_sig, signature_of,
                                      signature_of_blocks)


def blocks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def run_delta(old: bytes, new: bytes, block_size: int, hash_name: str = "sha256", *, anchors: bool = True,
              **kw) -> tuple[Signature, list]:
    sig = signature_of(io.BytesIO(old), block_size, hash_name, anchors=anchors)
    ops = list(delta(sig, io.BytesIO(new), **kw))
    assert reference_apply(ops, blocks_of(old, block_size)) == new
    return sig, ops


def literal_bytes(ops: list) -> int:
    return sum(len(op) for op in ops if isinstance(op, bytes))


def encoded_size(ops: list) -> int:
    return sum(len(piece) for piece in encode_delta(ops))


# -- layout ------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "block"), [
    (0, 4096), (1, 4096), (16 << 10, 4096), (256 << 10, 4096), (512 << 10, 8192), (3 << 19, 16384),
    (16 << 20, 32768), (64 << 20, 65536), (1 << 30, 256 << 10), (2 << 30, 512 << 10), (100 << 30, 512 << 10)])
def test_block_size_for(size: int, block: int) -> None:
    assert layout.block_size_for(size) == block
    assert block % 8 == 0 and block & (block - 1) == 0
    # the power of two nearest sqrt(BALANCE * size), within the bounds
    goal = layout.BALANCE * size / 2
    assert block * block >= goal or block == layout.MAX_BLOCK_SIZE
    assert (block // 2) ** 2 < goal or block == layout.MIN_BLOCK_SIZE


# -- checksums ---------------------------------------------------------------------
def test_hash_table_and_sizes() -> None:
    assert HASHES == {1: "sha256", 2: "blake2b"}
    assert STRONG_SIZE == 16
    for name in HASHES.values():
        assert len(strong_checksum(b"abc", name)) == 16
    assert strong_checksum(b"abc", "sha256") != strong_checksum(b"abc", "blake2b")
    with pytest.raises(FormatError):
        strong_checksum(b"abc", "md5")


def test_weak_is_adler32_and_rolls() -> None:
    rnd = random.Random(1)
    data = rnd.randbytes(3000)
    assert weak_checksum(data) == zlib.adler32(data)
    assert 0 <= weak_checksum(memoryview(data)) <= 0xFFFFFFFF
    window = 700
    roll = RollingAdler32(data[:window])
    for p in range(1, len(data) - window + 1):
        roll.roll(data[p - 1], data[p + window - 1])
        if p % 97 == 0 or p == len(data) - window:
            assert roll.value == zlib.adler32(data[p:p + window])


def test_uniform_byte_recognises_runs() -> None:
    # (at sizes that are multiples of 65521 every run has the same Adler-32: no answer is exact)
    for size in (1, 16, 4096, 65520, 65522, 1 << 19):
        for c in (0, 1, 0x20, 0xFF):
            assert checksum.uniform_byte(size, zlib.adler32(bytes((c,)) * size)) == c
    assert checksum.uniform_byte(4096, zlib.adler32(b"ab" * 2048)) is None


# -- signatures --------------------------------------------------------------------
@pytest.mark.parametrize("hash_name", ["sha256", "blake2b"])
@pytest.mark.parametrize("with_anchors", [True, False])
def test_signature_round_trip(hash_name: str, with_anchors: bool) -> None:
    data = random.Random(2).randbytes(10_000)
    sig = signature_of(io.BytesIO(data), 1024, hash_name, anchors=with_anchors)
    assert [b.size for b in sig.blocks] == [1024] * 9 + [784]
    assert sig.blocks[3] == block_sig(data[3072:4096], hash_name)
    assert (sig.anchors is not None) == with_anchors
    blob = sig.serialize()
    assert blob[:4] == magic.SIGNATURE
    assert Signature.parse(blob) == sig
    assert Signature.parse(bytearray(blob)) == sig
    assert Signature.parse(memoryview(blob)) == sig
    # 16 header + 2 runs + 20 per block (+ 18 per block of anchors)
    assert len(blob) == 16 + 2 * 8 + 10 * 20 + (10 * 18 if with_anchors else 0)


def test_signature_of_empty_and_odd_sizes() -> None:
    assert signature_of(io.BytesIO(b""), 4096, "sha256").blocks == []
    assert Signature.parse(signature_of(io.BytesIO(b""), 4096, "sha256").serialize()).blocks == []
    data = random.Random(3).randbytes(1000)
    for bs in (1, 7, 13, 100, 999, 1000, 1001):
        sig = signature_of(io.BytesIO(data), bs, "blake2b")
        assert [b.strong for b in sig.blocks] == [strong_checksum(b, "blake2b") for b in blocks_of(data, bs)]
        assert Signature.parse(sig.serialize()) == sig


def test_signature_reads_short_reads() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            n = min(len(b), 777, len(self.data))
            b[:n] = self.data[:n]
            self.data = self.data[n:]
            return n

    data = random.Random(4).randbytes(20_000)
    assert signature_of(Trickle(data), 4096, "sha256") == signature_of(io.BytesIO(data), 4096, "sha256")


def test_block_anchors_per_block_and_mixed_sizes() -> None:
    rnd = random.Random(5)
    parts = [rnd.randbytes(n) for n in (4096, 4096, 1000, 8192, 17, 4096)] + [bytes(4096)]
    sig = signature_of_blocks(parts, "sha256")
    assert [b.size for b in sig.blocks] == [len(p) for p in parts]
    assert sig.block_anchors(2) == block_anchors(parts[2], "sha256")
    assert sig.block_anchors(6) == anchors.EMPTY_RECORD  # a run has no anchors
    assert Signature.parse(sig.serialize()) == sig
    new = b"xyz" + b"".join(parts[3:]) + parts[0] + b"!" + b"".join(parts[:3])
    ops = list(delta(sig, io.BytesIO(new)))
    assert reference_apply(ops, parts) == new
    assert literal_bytes(ops) == 4  # everything else re-found, whatever its size
    assert sig.without_anchors().anchors is None


def _header(**kw: int) -> bytes:
    fields = {"magic": magic.SIGNATURE, "version": 2, "hash_id": 1, "flags": 0, "strong": 16, "count": 1,
              "runs": 1}
    fields.update(kw)
    return struct.pack("<4sBBBBII", *fields.values())


@pytest.mark.parametrize("blob", [
    b"", b"BXSG", _header(magic=b"XXXX"), _header(version=9), _header(hash_id=7), _header(flags=0x80),
    _header(strong=20), _header(runs=2), _header() + struct.pack("<II", 4096, 1),
    _header() + struct.pack("<II", 4096, 2) + bytes(20), _header() + struct.pack("<II", 0, 1) + bytes(20),
    _header() + struct.pack("<II", 1 << 30, 1) + bytes(20), _header(count=2, runs=2) + struct.pack("<IIII", 8, 1, 8, 0) + bytes(40),
    _header(count=0xFFFFFFFF), _header(flags=1) + struct.pack("<II", 4096, 1) + bytes(20),
    _header() + struct.pack("<II", 4096, 1) + bytes(21)])
def test_malformed_signatures_raise_format_error(blob: bytes) -> None:
    with pytest.raises(FormatError):
        Signature.parse(blob)


def test_signature_constructor_checks_fields() -> None:
    good = BlockSig(4096, 1, bytes(16))
    Signature("sha256", [good])
    for bad in (BlockSig(0, 1, bytes(16)), BlockSig(4096, -1, bytes(16)), BlockSig(4096, 1 << 32, bytes(16)),
                BlockSig(4096, 1, bytes(15))):
        with pytest.raises(FormatError):
            Signature("sha256", [bad])
    with pytest.raises(FormatError):
        Signature("md5", [good])
    with pytest.raises(FormatError):
        Signature("sha256", [good], anchors=bytes(79))


# -- anchors -----------------------------------------------------------------------
def picks_of(data: bytes, block_size: int) -> bytes:
    """`anchors.picks` of `data` cut into `block_size` blocks, as records."""
    ts, ws = array("H"), array("Q")
    anchors.picks(memoryview(data), block_size, [], set(), ts, ws)
    return anchors.to_bytes(ts, ws)


@pytest.mark.parametrize("size", [1, 7, 8, 9, 14, 15, 16, 17, 23, 24, 40])
def test_picks_takes_blocks_of_any_size(size: int) -> None:
    """An 8-byte block once raised IndexError in picks' batched path."""
    block = bytes(range(1, size + 1))
    rec = picks_of(block, size)
    assert rec == anchors.record_of(block)
    ts, ws = anchors.from_bytes(rec, 1)
    for r in range(anchors.SLOTS):  # every anchor is the word where its position says
        if ts[r] != anchors.NO_ANCHOR:
            j = r + 8 * ts[r]
            assert ws[r] == int.from_bytes(block[j:j + 8], "little")
    fits = [r for r in range(anchors.SLOTS) if ts[r] != anchors.NO_ANCHOR]
    assert fits == list(range(min(anchors.SLOTS, max(0, size - 7))))


def test_anchors_are_one_window_of_rare_words() -> None:
    rnd = random.Random(20)
    block = bytes(1000) + rnd.randbytes(40) + bytes(3056)  # an island of data in zero padding
    ts, ws = anchors.from_bytes(anchors.record_of(block), 1)
    assert len(set(ts)) == 1 and ts[0] != anchors.NO_ANCHOR  # eight residues, one window
    j = 8 * ts[0]
    assert 1000 <= j and j + anchors.WINDOW <= 1040
    for r in range(anchors.SLOTS):
        assert ws[r] == int.from_bytes(block[j + r:j + r + 8], "little")
    # no window avoids zero-padded integers: only the words that are not common stay
    table = b"".join(struct.pack("<QQQ", 0x1AC00 + 8 * i, 7 + (i << 32), 0) for i in range(170))[:4096]
    ts, ws = anchors.from_bytes(anchors.record_of(table), 1)
    for r in range(anchors.SLOTS):
        if ts[r] != anchors.NO_ANCHOR:
            assert anchors.penalty_of_word(ws[r]) <= anchors.MAX_WORD_PENALTY
    assert anchors.record_of(bytes(4096)) == anchors.EMPTY_RECORD


def test_records_are_windows_and_round_trip() -> None:
    """18 bytes a block (the window), whatever anchors each block kept; arrays that no single window
    explains are refused rather than stored wrong."""
    rnd = random.Random(21)
    data = rnd.randbytes(40_000) + bytes(9000) + b"ab" * 6000 + rnd.randbytes(7) + bytes(1000)
    for block_size in (8, 16, 4096, 16384):
        ts, ws = array("H"), array("Q")
        anchors.picks(memoryview(data), block_size, [], set(), ts, ws)
        rec = anchors.to_bytes(ts, ws)
        assert len(rec) == anchors.RECORD_SIZE * (len(ts) // anchors.SLOTS)
        assert anchors.from_bytes(rec, len(ts) // anchors.SLOTS) == (ts, ws)
    assert anchors.RECORD_SIZE == 18 and anchors.from_bytes(anchors.EMPTY_RECORD, 1) == (
        array("H", [anchors.NO_ANCHOR] * 8), array("Q", [0] * 8))
    with pytest.raises(ProgrammingError):  # two positions in one block
        anchors.to_bytes(array("H", [1] * 7 + [2]), array("Q", range(8)))
    with pytest.raises(ProgrammingError):  # words that do not overlap as one window's do
        anchors.to_bytes(array("H", [1] * 8), array("Q", range(8)))


def test_version_2_block_index_still_opens_with_its_anchors_converted() -> None:
    """Objects stored before the 18-byte records restore, and a diff against them keeps its anchors."""
    from boxbox.objects import index as ix

    rnd = random.Random(22)
    data = rnd.randbytes(5 * 4096 + 100)
    builder = ix.IndexBuilder(1, 4096)
    blocks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    for b in blocks:
        builder.add_block(b, ix.IndexEntry(len(b), len(b) + 28, weak_checksum(b), strong_checksum(b, "sha256"),
                                           bytes(16)))
    plain = builder.plaintext()
    n = len(blocks)
    entries_end = ix.HEAD.size + n * ix.ENTRY.size
    ts, ws = anchors.from_bytes(plain[entries_end:], n)
    v2 = b"".join(anchors.V2_RECORD.pack(*ts[8 * k:8 * k + 8], *ws[8 * k:8 * k + 8]) for k in range(n))
    old = bytearray(plain[:entries_end] + v2)
    old[4] = 2  # the version byte
    opened = ix.parse_index(bytes(old), 1, n, ix.rounded(len(data)), "test")
    assert opened.anchors == plain[entries_end:]
    assert ix.parse_index(plain, 1, n, ix.rounded(len(data)), "test").anchors == plain[entries_end:]


def test_picks_does_not_depend_on_batching() -> None:
    rnd = random.Random(21)
    parts = [rnd.randbytes(4096), bytes(4096), bytes(2000) + rnd.randbytes(30) + bytes(2066),
             b"ab" * 2048, (b"word " * 900)[:4096], rnd.randbytes(4096)]
    data = b"".join(parts * 6) + b"tail"
    whole = picks_of(data, 4096)
    by_block = b"".join(picks_of(data[i:i + 4096], 4096) for i in range(0, len(data), 4096))
    assert whole == by_block


# -- delta -------------------------------------------------------------------------
def test_delta_edge_cases() -> None:
    data = random.Random(6).randbytes(5000)
    assert run_delta(b"", b"", 1024)[1] == []
    assert run_delta(b"", data, 1024)[1] == [data]
    assert run_delta(data, b"", 1024)[1] == []
    assert run_delta(data, data, 1024)[1] == [0, 1, 2, 3, 4]
    assert run_delta(data, data[:4096], 1024)[1] == [0, 1, 2, 3]
    assert run_delta(data, data[1024:], 1024)[1] == [1, 2, 3, 4]
    assert run_delta(data[:10], data[:10], 1024)[1] == [0]  # one tiny block, where expected
    assert run_delta(data, data[:3000] + data[3001:], 1024)[1] == [0, 1, data[2048:3000] + data[3001:3072], 3, 4]


def test_one_byte_insert_into_1mib_costs_under_two_blocks() -> None:
    old = random.Random(7).randbytes(1 << 20)
    for at in (0, 1, 4095, 4096, 500_000, (1 << 20) - 1, 1 << 20):
        new = old[:at] + b"\x00" + old[at:]
        block = layout.block_size_for(len(old))
        sig, ops = run_delta(old, new, block)
        assert encoded_size(ops) < 2 * block + 64
        assert literal_bytes(ops) <= block + 1


def test_moved_and_duplicated_ranges_are_found() -> None:
    rnd = random.Random(8)
    old = rnd.randbytes(200_000)
    new = old[150_000:] + rnd.randbytes(333) + old[:150_000] + old[10_000:30_000]
    for with_anchors in (True, False):
        sig, ops = run_delta(old, new, 4096, anchors=with_anchors)
        assert literal_bytes(ops) < 333 + 3 * 4096


def test_fast_finder_agrees_with_reference_on_random_data() -> None:
    rnd = random.Random(9)
    for _ in range(30):
        old = rnd.randbytes(rnd.randrange(0, 30_000))
        new = bytearray(old)
        for _ in range(rnd.randrange(1, 5)):
            at = rnd.randrange(len(new) + 1)
            new[at:at + rnd.randrange(0, 50)] = rnd.randbytes(rnd.randrange(0, 50))
        new = bytes(new)
        bs = rnd.choice([16, 64, 512, 1024])
        for with_anchors in (True, False):
            sig, ops = run_delta(old, new, bs, anchors=with_anchors)
            assert copied_ranges(ops, sig) == copied_ranges(reference_delta(sig, new), sig)


def test_sparse_blocks_are_found_after_small_shifts() -> None:
    """Blocks of zero-padded tables lack rare words; the block after a small edit is still
    found within NEAR_SHIFT bytes of its place, and one rewritten in place costs nothing."""
    rnd = random.Random(22)
    table = [b"".join(struct.pack("<QQQ", rnd.randrange(1 << 20), rnd.randrange(1 << 8), 0) for _ in range(171))[:4096]
             for _ in range(64)]
    old = b"".join(table)
    sig = signature_of(io.BytesIO(old), 4096, "sha256")
    ts, _ = anchors.from_bytes(sig.anchors, len(sig.blocks))
    assert anchors.NO_ANCHOR in ts  # the case this is about: residues without a rare word
    for at, edit in ((10_000, b"xyz"), (70_000, b""), (150_000, rnd.randbytes(200))):
        new = old[:at] + edit + old[at + (5 if not edit else 0):]
        ops = list(delta(sig, io.BytesIO(new)))
        assert reference_apply(ops, blocks_of(old, 4096)) == new
        assert literal_bytes(ops) <= 4096 + len(edit)
    new = old[:8192] + rnd.randbytes(4096) + old[12288:]
    ops = list(delta(sig, io.BytesIO(new)))
    assert ops[:2] == [0, 1] and ops[3:] == list(range(3, 64)) and literal_bytes(ops) == 4096


def test_literals_are_bounded() -> None:
    new = random.Random(10).randbytes(3 * LITERAL_MAX + 5)
    sig, ops = run_delta(b"x" * 100, new, 4096)
    assert all(isinstance(op, bytes) and 0 < len(op) <= LITERAL_MAX for op in ops)


def test_pathological_inputs_stay_fast() -> None:
    zeros = bytes(1 << 20)
    cases = [
        (zeros, b"\x00" * 3 + zeros),  # all zeros, shifted
        (b"abc" * 300_000, b"x" + b"abc" * 300_000),  # short repeating pattern
        (random.Random(11).randbytes(4096) * 200, b"y" + random.Random(11).randbytes(4096) * 200),  # identical blocks
        (b"ab" * 500_000 + b"c", random.Random(12).randbytes(1 << 20)),  # all new against a pattern
    ]
    for old, new in cases:
        t = time.monotonic()
        sig, ops = run_delta(old, new, 4096)
        assert time.monotonic() - t < 5
    # every block of the signature shares one weak checksum, and the new data hits it everywhere
    weak = zlib.adler32(bytes(4096))
    fake = Signature("sha256", [BlockSig(4096, weak, bytes([i % 256, i // 256]) + bytes(14)) for i in range(4000)])
    t = time.monotonic()
    ops = list(delta(fake, io.BytesIO(bytes(4 << 20))))
    assert time.monotonic() - t < 5
    assert b"".join(ops) == bytes(4 << 20)


def test_deadline_still_gives_a_correct_delta() -> None:
    rnd = random.Random(13)
    old = rnd.randbytes(2 << 20)
    new = rnd.randbytes(1000) + old
    for deadline in (time.monotonic() - 1, time.monotonic()):
        sig, ops = run_delta(old, new, 4096, deadline=deadline)
        assert literal_bytes(ops) >= len(new) - 2 * 4096  # gave up (almost) at once
    sig, ops = run_delta(old, new, 4096, deadline=time.monotonic() + 60)
    assert literal_bytes(ops) <= 1000 + 4096


def test_keepalive_is_called_during_long_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta_mod, "KEEPALIVE_INTERVAL", 0.0)
    calls = []
    data = random.Random(14).randbytes(3 << 20)
    run_delta(b"z" * 5000, data, 4096, keepalive=lambda: calls.append(1))
    assert len(calls) >= 3


def test_peak_memory_does_not_grow_with_file_size() -> None:
    old = random.Random(15).randbytes(1 << 20)
    sig = signature_of(io.BytesIO(old), 4096, "sha256")
    list(delta(sig, io.BytesIO(b"")))  # build the lookup tables outside the measurement

    class Endless(io.RawIOBase):
        """`size` bytes: old data with one byte inserted, then new data, never held whole."""

        def __init__(self, size: int) -> None:
            self.left = size
            self.rnd = random.Random(16)
            self.head = b"!" + old

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            n = min(n, self.left)
            if self.head:
                out, self.head = self.head[:n], self.head[n:]
            else:
                out = self.rnd.randbytes(n)
            self.left -= len(out)
            return out

    peaks = []
    for size in (12 << 20, 24 << 20):
        tracemalloc.start()
        total = 0
        for op in delta(sig, Endless(size)):
            total += len(op) if isinstance(op, bytes) else 4096
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert total == size
    print("peak traced bytes", peaks)
    assert peaks[1] < peaks[0] * 1.1 + (256 << 10)
    assert peaks[1] < 16 << 20


def test_reference_signature_matches_fast_one_without_anchors() -> None:
    data = random.Random(17).randbytes(9000)
    assert reference_signature(data, 1000, "sha256") == signature_of(io.BytesIO(data), 1000, "sha256", anchors=False)


# -- patch -------------------------------------------------------------------------
def test_encode_decode_round_trip_and_coalescing() -> None:
    ops = [0, 1, 2, 3, b"abc", 7, 8, b"x" * 5000, b"y", 2, 2, 9]
    pieces = list(encode_delta(ops))
    blob = b"".join(pieces)
    assert blob[:4] == magic.DELTA
    assert list(decode_delta(pieces)) == [0, 1, 2, 3, b"abc", 7, 8, b"x" * 5000, b"y", 2, 2, 9]
    assert list(decode_delta([blob[i:i + 1] for i in range(len(blob))])) == list(decode_delta([blob]))
    # 8 header + copy run 0-3 + lit + copy run 7-8 + 2 lits + copy 2 + copy 2 + copy 9 + end
    assert len(blob) == 8 + 9 + (5 + 3) + 9 + (5 + 5000) + (5 + 1) + 9 * 3 + 17
    empty = b"".join(encode_delta([]))
    assert list(decode_delta([empty])) == []


def test_apply_streams_blocks_and_literals() -> None:
    old = random.Random(18).randbytes(10_000)
    new = old[5000:] + b"middle" + old[:5000]
    sig = signature_of(io.BytesIO(old), 1000, "sha256")
    blocks = blocks_of(old, 1000)
    out = io.BytesIO()
    n = apply(decode_delta(encode_delta(delta(sig, io.BytesIO(new)))), blocks.__getitem__, out)
    assert out.getvalue() == new
    assert n == len(new)


def _delta_blob() -> bytes:
    return b"".join(encode_delta([0, 1, b"hello", 5, b"w" * 100]))


@pytest.mark.parametrize("blob", [
    b"", b"BXDL", b"XXXX\x01\x00\x00\x00" + bytes(17), b"BXDL\x09\x00\x00\x00" + bytes(17),
    b"BXDL\x01\x00\x01\x00" + bytes(17), _delta_blob()[:-1], _delta_blob() + b"\x00",
    _delta_blob()[:8] + b"\x07", _delta_blob()[:8] + patch.LIT.pack(2, 0) + patch.END.pack(0, 0, 0),
    _delta_blob()[:8] + patch.LIT.pack(2, patch.MAX_LITERAL + 1),
    _delta_blob()[:8] + patch.COPY.pack(1, 5, 0) + patch.END.pack(0, 0, 0),
    _delta_blob()[:8] + patch.COPY.pack(1, 0xFFFFFFFF, 2) + patch.END.pack(0, 0, 2),
    _delta_blob()[:8] + patch.END.pack(0, 1, 0),
    _delta_blob()[:8] + patch.LIT.pack(2, 10) + b"short"])
def test_malformed_deltas_raise_format_error(blob: bytes) -> None:
    with pytest.raises(FormatError):
        list(decode_delta([blob]))


def test_every_truncation_of_a_delta_is_caught() -> None:
    blob = _delta_blob()
    for cut in range(len(blob)):
        with pytest.raises(FormatError):
            list(decode_delta([blob[:cut]]))


def test_decode_checks_block_indices_against_the_old_version() -> None:
    blob = b"".join(encode_delta([0, 1, 2, b"x"]))
    assert list(decode_delta([blob], block_count=3)) == [0, 1, 2, b"x"]
    with pytest.raises(FormatError):
        list(decode_delta([blob], block_count=2))
    huge = b"".join(encode_delta([])).replace(patch.END.pack(0, 0, 0), b"") + patch.COPY.pack(1, 0, 0xFFFFFFFF)
    with pytest.raises(FormatError):
        next(iter(decode_delta([huge], block_count=10)))


def test_decode_rejects_non_bytes_chunks() -> None:
    with pytest.raises(FormatError):
        list(decode_delta([_delta_blob()[:8], 12345]))  # type: ignore[list-item]
