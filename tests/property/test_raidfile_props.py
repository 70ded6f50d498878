"""raidfile properties for random contents and block sizes: (a) read back, (b) lose any one stripe,
(c) corrupt any one stripe, (d) damage two stripes -> IntegrityError never wrong bytes,
(e) repair restores the stripes byte for byte; plus the fast XOR and writer against references. Writes and
sequential reads run with and without the helper process (forced on for every size), which must not change a byte."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from boxbox.errors import IntegrityError
from boxbox.raidfile import DiscSet, xorproc
from boxbox.raidfile.kernels import xor_blocks, xor_bytes
from boxbox.raidfile.layout import HEADER, PARITY, STRIPE1, STRIPE2, Geometry, parse_header, stripe_reference, \
    xor_bytes_reference

BLOCK_SIZES = st.sampled_from([16, 32, 64, 256, 4096])


@st.composite
def contents(draw: st.DrawFn) -> tuple[int, bytes]:
    """A block size and data whose length sits on the interesting edges of it."""
    bs = draw(BLOCK_SIZES)
    kind = draw(st.sampled_from(["edge"] * 4 + ["any"] * 4 + ["MiB"]))  # several MiB in ~1 of 9 examples
    if kind == "edge":
        length = draw(st.sampled_from([0, 1, bs - 1, bs, bs + 1, 2 * bs - 1, 2 * bs, 2 * bs + 1, 3 * bs, 7 * bs + 3]))
    elif kind == "any":
        length = draw(st.integers(0, 40 * bs))
    else:
        length = draw(st.sampled_from([3 * 2**20 + 7, 2 * 2**20]))
    return bs, random.Random(draw(st.integers(0, 2**32))).randbytes(length)


@contextmanager
def helper(on: bool) -> Iterator[None]:
    """The helper process for files of every size (on, also on one core), or for none (off)."""
    saved = xorproc.MIN_BYTES, xorproc.MAX_HELPERS
    xorproc.MIN_BYTES = 0 if on else 1 << 62
    xorproc.MAX_HELPERS = max(1, xorproc.MAX_HELPERS)
    try:
        yield
    finally:
        xorproc.MIN_BYTES, xorproc.MAX_HELPERS = saved


@contextmanager
def disc_set(bs: int, raid: bool = True) -> Iterator[DiscSet]:
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"d{i}" for i in range(3 if raid else 1)]
        for d in dirs:
            d.mkdir()
        yield DiscSet("p", dirs, bs)


def put(ds: DiscSet, data: bytes, piece: int) -> dict[int, Path]:
    with ds.create("x/f") as w:
        for o in range(0, len(data), piece):
            w.write(data[o : o + piece])
    return {parse_header(p.read_bytes()[: HEADER.size]).role: p
            for d in ds.directories if (p := d / "x/f.rf").exists()}


def read_all(ds: DiscSet) -> bytes:
    with ds.open("x/f") as r:
        return r.read()


def corrupt(path: Path, rng: random.Random, at: list[int] | None = None) -> None:
    b = bytearray(path.read_bytes())
    for pos in at if at is not None else [rng.randrange(len(b)) for _ in range(rng.randint(1, 4))]:
        b[pos] ^= rng.randint(1, 255)
    path.write_bytes(b)


@given(contents(), st.integers(1, 70_000), st.booleans(), st.booleans())
@example((16, b""), 1, True, True)
@example((4096, bytes(4097)), 4096, False, False)
@example((16, bytes(range(256)) * 400), 5000, True, True)
def test_a_read_back_identical(case: tuple[int, bytes], piece: int, raid: bool, use_helper: bool) -> None:
    bs, data = case
    with disc_set(bs, raid) as ds, helper(use_helper):
        files = put(ds, data, piece)
        assert read_all(ds) == data
        wid = parse_header(next(iter(files.values())).read_bytes()[: HEADER.size]).write_id
        assert [files[r].read_bytes() for r in sorted(files)] == stripe_reference(data, bs, wid, raid)
        rng = random.Random(len(data))
        with ds.open("x/f") as r:
            for _ in range(5):
                off, n = rng.randrange(len(data) + 2), rng.randrange(3 * bs)
                r.seek(off)
                assert r.read(n) == data[off : off + n]


@settings(max_examples=15)
@given(st.sampled_from([16, 4096, 65536]), st.booleans(), st.integers(0, 2**32),
       st.lists(st.tuples(st.sampled_from([1, 100, 4095, 70_000, 2**20, 2**20 + 12_345, 2_500_000]), st.booleans()),
                min_size=1, max_size=6), st.booleans())
def test_writes_of_any_sizes_from_any_buffers(bs: int, raid: bool, seed: int, plan: list[tuple[int, bool]],
                                              use_helper: bool) -> None:
    """Small writes are gathered, big ones cut straight from the caller's buffer (which the caller
    may refill at once): the stripes are those of the reference writer either way."""
    rng = random.Random(seed)
    data = rng.randbytes(sum(n for n, _ in plan))
    reused = bytearray(max(n for n, _ in plan))
    with disc_set(bs, raid) as ds, helper(use_helper):
        with ds.create("x/f") as w:
            o = 0
            for n, from_reused in plan:
                if from_reused:
                    reused[:n] = data[o : o + n]
                    w.write(memoryview(reused)[:n])
                    reused[:n] = bytes(n)
                else:
                    w.write(data[o : o + n])
                o += n
        files = {parse_header(p.read_bytes()[: HEADER.size]).role: p
                 for d in ds.directories if (p := d / "x/f.rf").exists()}
        wid = parse_header(next(iter(files.values())).read_bytes()[: HEADER.size]).write_id
        assert [files[r].read_bytes() for r in sorted(files)] == stripe_reference(data, bs, wid, raid)
        assert read_all(ds) == data


@given(contents(), st.sampled_from([STRIPE1, STRIPE2, PARITY]), st.booleans())
def test_b_any_one_stripe_lost(case: tuple[int, bytes], role: int, use_helper: bool) -> None:
    bs, data = case
    with disc_set(bs) as ds, helper(use_helper):
        put(ds, data, 10_000)[role].unlink()
        with ds.open("x/f") as r:
            assert r.read() == data and r.degraded
        report = ds.check("x/f")
        assert report.readable and [s.state for s in report.stripes].count("missing") == 1


@given(contents(), st.sampled_from([STRIPE1, STRIPE2, PARITY]), st.integers(0, 2**32), st.booleans())
def test_c_any_one_stripe_corrupted(case: tuple[int, bytes], role: int, seed: int, use_helper: bool) -> None:
    bs, data = case
    with disc_set(bs) as ds, helper(use_helper):
        files = put(ds, data, 10_000)
        corrupt(files[role], random.Random(seed))
        with ds.open("x/f") as r:
            assert r.read() == data
            assert r.degraded or role == PARITY  # a clean read never touches parity
        report = ds.check("x/f")
        assert report.readable and not report.ok
        assert sum(s.state != "ok" for s in report.stripes) == 1


@given(contents(), st.sampled_from([(STRIPE1, STRIPE2), (STRIPE1, PARITY), (STRIPE2, PARITY)]),
       st.sampled_from(["delete", "same row", "random"]), st.integers(0, 2**32), st.booleans())
def test_d_two_stripes_damaged_never_wrong_bytes(case: tuple[int, bytes], pair: tuple[int, int], how: str,
                                                 seed: int, use_helper: bool) -> None:
    bs, data = case
    rng = random.Random(seed)
    with disc_set(bs) as ds, helper(use_helper):
        files = put(ds, data, 10_000)
        geo = Geometry(len(data), bs)
        rows = min(geo.records(r) for r in pair)
        if how == "delete":
            for r in pair:
                files[r].unlink()
        elif how == "same row" and rows:
            j = rng.randrange(rows)
            shortest = min(bs, len(data) - (2 * j + (STRIPE2 in pair)) * bs)  # the S2 block may be the short last one
            for r in pair:
                corrupt(files[r], rng, [geo.record_offset(j) + rng.randrange(shortest)])
        else:
            for r in pair:
                corrupt(files[r], rng)
        try:
            got = read_all(ds)
        except IntegrityError as e:
            assert "discset p: x/f" in str(e)
        else:
            assert got == data
            assert how == "random" or (how == "same row" and not rows), "two lost stripes must not read"


@given(contents(), st.sampled_from([STRIPE1, STRIPE2, PARITY]), st.sampled_from(["delete", "corrupt", "truncate"]),
       st.integers(0, 2**32), st.booleans())
def test_e_repair_restores_stripes_byte_identical(case: tuple[int, bytes], role: int, how: str, seed: int,
                                                  use_helper: bool) -> None:
    bs, data = case
    with disc_set(bs) as ds, helper(use_helper):
        files = put(ds, data, 10_000)
        before = {p: p.read_bytes() for p in files.values()}
        if how == "delete":
            files[role].unlink()
        elif how == "corrupt":
            corrupt(files[role], random.Random(seed))
        else:
            os.truncate(files[role], random.Random(seed).randrange(files[role].stat().st_size))
        report = ds.repair("x/f")
        assert report.repaired and report.readable
        assert {p: p.read_bytes() for p in files.values()} == before
        assert ds.check("x/f").ok


@given(st.binary(max_size=300), st.binary(max_size=300))
@example(b"", b"")
@example(b"\xff" * 9, b"\x01")
def test_xor_fast_equals_reference(a: bytes, b: bytes) -> None:
    assert xor_bytes(a, b) == xor_bytes_reference(a, b)


@given(st.sampled_from([16, 64, 4096, 32768, 65536]), st.integers(0, 40), st.integers(0, 2**32), st.data())
@example(16, 0, 0, None)
def test_xor_blocks_equals_reference(bs: int, rows: int, seed: int, data: st.DataObject | None) -> None:
    """Blocks as the writer cuts them: full blocks, the last a[j] maybe short, b one block shorter or equal."""
    rng = random.Random(seed)
    a = [rng.randbytes(bs) for _ in range(rows)]
    if a and data is not None:
        a[-1] = a[-1][: data.draw(st.integers(1, bs))]
    b = [rng.randbytes(len(x)) for x in a]
    if b and data is not None:
        b = b[: len(b) - data.draw(st.integers(0, 1))]
        if b:
            b[-1] = b[-1][: data.draw(st.integers(0, len(b[-1])))]
    got = xor_blocks([memoryview(x) for x in a], [memoryview(x) for x in b], bs)
    assert [bytes(g) for g in got] == [xor_bytes_reference(x, b[j] if j < len(b) else b"") for j, x in enumerate(a)]


@pytest.mark.parametrize("bs", [16, 4096])
def test_non_raid_matches_raid_for_clean_reads(bs: int) -> None:
    data = random.Random(bs).randbytes(10 * bs + 5)
    with disc_set(bs, raid=False) as one, disc_set(bs) as three:
        put(one, data, 999)
        put(three, data, 999)
        for ds in (one, three):
            assert read_all(ds) == data and ds.check("x/f").ok and ds.listdir("x") == ["f"]
        assert one.usage_blocks("x/f") * 2 > three.usage_blocks("x/f") > one.usage_blocks("x/f")


@settings(max_examples=60)
@given(contents(), st.integers(0, 2**32), st.sampled_from(["none", "none", "corrupt", "truncate", "crc"]),
       st.sampled_from([STRIPE1, STRIPE2]))
@example((16, bytes(range(256)) * 40), 1, "crc", STRIPE2)
@example((4096, bytes(range(256)) * 16 * 700 + b"xyz"), 2, "none", STRIPE1)
def test_f_reads_of_whole_rows_joined(case: tuple[int, bytes], seed: int, how: str, role: int) -> None:
    """read() of whole rows of a RAID file joins the blocks of both data stripes into the bytes it returns (each
    stripe's records read in one piece, checked by CRC residue): any sizes and offsets, row-aligned or not, a
    chunk or several per call, the file's short last row; a damaged data stripe (a flipped byte, a flipped
    CRC byte, a truncation) falls back to the decoding that notes and rebuilds it."""
    bs, data = case
    rng = random.Random(seed)
    with disc_set(bs) as ds:
        files = put(ds, data, 10_000)
        geo = Geometry(len(data), bs)
        size = files[role].stat().st_size
        if how == "corrupt" and size > HEADER.size:
            corrupt(files[role], rng, [rng.randrange(HEADER.size, size)])
        elif how == "crc" and geo.records(role):
            j = rng.randrange(geo.records(role))
            length = min(bs, len(data) - (2 * j + (role == STRIPE2)) * bs)
            corrupt(files[role], rng, [geo.record_offset(j) + length + rng.randrange(4)])
        elif how == "truncate" and size > HEADER.size:
            os.truncate(files[role], rng.randrange(HEADER.size, size))
        damaged = how != "none" and size > HEADER.size and (how != "crc" or geo.records(role) > 0)
        unit = 2 * bs
        with ds.open("x/f") as r:  # any sizes, some row-aligned seeks
            pos = 0
            while pos < len(data):
                n = rng.choice([unit, rng.randrange(1, 5) * unit, rng.randrange(1, 3 * unit), 2**20, 5 * 2**20,
                                len(data) - pos])
                if rng.random() < 0.2:
                    pos = rng.randrange(len(data) // unit + 1) * unit
                    r.seek(pos)
                b = r.read(n)
                assert b == data[pos : pos + n]
                pos += len(b)
            assert r.read(unit) == b""
        with ds.open("x/f") as r:  # the whole file in whole rows: every record is checked, the damage noted
            got = []
            while b := r.read(rng.choice([unit, rng.randrange(1, 9) * unit, 2**20 // unit * unit or unit])):
                got.append(b)
            assert b"".join(got) == data and r.degraded == damaged
        with ds.open("x/f") as r:
            assert r.read() == data
