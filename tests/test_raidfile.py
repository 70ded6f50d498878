"""raidfile: disc set config, streaming write/read, naming ops, damage, check/repair/scrub/rebuild."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import threading
from pathlib import Path

import pytest

from boxbox import config
from boxbox.errors import ConfigError, InUse, IntegrityError, NotFound, ProgrammingError
from boxbox.raidfile import DiscSet, claims, writer
from boxbox.raidfile.layout import HEADER, PARITY, STRIPE1, STRIPE2, WHOLE, Geometry, parse_header, stripe_reference


def make_set(tmp_path: Path, block_size: int = 64, raid: bool = True) -> DiscSet:
    dirs = [tmp_path / f"disc{i}" for i in range(3 if raid else 1)]
    for d in dirs:
        d.mkdir(exist_ok=True)
    return DiscSet("t", dirs, block_size)


def stripe_paths(ds: DiscSet, relpath: str) -> dict[int, Path]:
    """role -> path of the committed stripe holding it."""
    out = {}
    for d in ds.directories:
        p = d / (relpath + ".rf")
        if p.exists():
            out[parse_header(p.read_bytes()[: HEADER.size]).role] = p
    return out


def write(ds: DiscSet, relpath: str, data: bytes, piece: int = 1000) -> None:
    with ds.create(relpath) as w:
        for o in range(0, len(data), piece):
            w.write(data[o : o + piece])


def read(ds: DiscSet, relpath: str) -> bytes:
    with ds.open(relpath) as r:
        return r.read()


def temps_left(ds: DiscSet) -> list[Path]:
    return [p for d in ds.directories for p in d.rglob("*.rfw")]


# -- configuration -----------------------------------------------------------------------


def test_from_config_three_one_and_same_dir(tmp_path: Path) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    src = str(tmp_path / "server.conf")
    ds = DiscSet.from_config("0", {"directories": ["a", "b", "c"], "block_size": 8192}, src)
    assert ds.raid and ds.block_size == 8192 and ds.directories == [tmp_path / d for d in "abc"]
    assert not DiscSet.from_config("1", {"directories": [str(tmp_path / "a")], "block_size": 4096}, src).raid
    same = DiscSet.from_config("2", {"directories": [str(tmp_path / "a")] * 3, "block_size": 4096}, src)
    assert not same.raid and same.directories == [tmp_path / "a"]


def test_from_parsed_config_file(tmp_path: Path) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    text = ("[server]\ncertificate = s.crt\nprivate_key = s.key\nca_certificate = ca.crt\naccount_database = a.db\n"
            "[discset 0]\ndirectories = a, b, c\nblock_size = 16k\n")
    cfg = config.parse_text(text, "server", source=str(tmp_path / "server.conf"), base=tmp_path)
    ds = DiscSet.from_config("0", cfg.groups["discset"]["0"], str(cfg.path))
    assert ds.raid and ds.block_size == 16384


@pytest.mark.parametrize("dirs, block_size, key, expect", [
    (["a", "b"], 4096, "directories", "expected 1 directory (no RAID) or 3 (RAID), got 2"),
    (["a", "b", "nope"], 4096, "directories", "nope: no such directory"),
    (["a", "b", "a"], 4096, "directories", "got the same directory twice"),
    (["a", "b", "file"], 4096, "directories", "file: not a directory"),
    (["a", "b", "c"], 3000, "block_size", "expected a power of two from 16 to 16M, got 3000"),
    (["a", "b", "c"], 8, "block_size", "got 8"),
])
def test_config_errors_name_file_section_key(tmp_path: Path, dirs: list[str], block_size: int, key: str,
                                             expect: str) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    (tmp_path / "file").write_text("x")
    src = str(tmp_path / "server.conf")
    with pytest.raises(ConfigError) as e:
        DiscSet.from_config("main", {"directories": dirs, "block_size": block_size}, src)
    assert str(e.value).startswith(f"{src}:discset main.{key}: ")
    assert expect in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_config_unwritable_directory(tmp_path: Path) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    (tmp_path / "c").chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"discset x\.directories: .*c: not writable"):
            DiscSet("x", [tmp_path / d for d in "abc"])
    finally:
        (tmp_path / "c").chmod(0o700)


# -- writing and reading -----------------------------------------------------------------


@pytest.mark.parametrize("raid", [True, False])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 129, 192, 5000])
def test_roundtrip_and_reference_layout(tmp_path: Path, raid: bool, size: int) -> None:
    ds = make_set(tmp_path, 64, raid)
    data = random.Random(size).randbytes(size)
    write(ds, "d/f", data, piece=37)
    assert read(ds, "d/f") == data
    files = stripe_paths(ds, "d/f")
    wid = parse_header(next(iter(files.values())).read_bytes()).write_id
    expected = stripe_reference(data, 64, wid, raid)
    assert [files[r].read_bytes() for r in sorted(files)] == expected
    assert ds.usage_blocks("d/f") == sum(-(-len(f) // 64) for f in expected) == ds.blocks_for_length(size)
    assert not temps_left(ds)


def test_random_access_read_readinto_seek(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    data = random.Random(1).randbytes(10_000)
    write(ds, "f", data)
    rng = random.Random(2)
    with ds.open("f") as r:
        assert r.size == len(data) and r.seekable() and r.readable()
        for _ in range(200):
            off, n = rng.randrange(0, 10_100), rng.randrange(0, 700)
            assert r.seek(off) == off
            assert r.read(n) == data[off : off + n]
            assert r.tell() == min(max(off, off + min(n, len(data) - off)), max(off, len(data)))
        r.seek(7)
        assert r.pread(9000, 2000) == data[9000:] and r.tell() == 7
        r.seek(-10, os.SEEK_END)
        assert r.read() == data[-10:]
        r.seek(100)
        r.seek(5, os.SEEK_CUR)
        buf = bytearray(50)
        assert r.readinto(buf) == 50 and bytes(buf) == data[105:155]
        with pytest.raises(ProgrammingError):
            r.seek(-1)


def test_big_streaming_write_in_odd_pieces(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 4096)
    data = random.Random(3).randbytes(5 * 2**20 + 17)
    with ds.create("big") as w:
        o = 0
        for n in [1, 4095, 3 * 2**20, 7, 2**20 + 3]:
            w.write(data[o : o + n])
            o += n
        w.write(memoryview(data)[o:])
        assert w.tell() == len(data)
    with ds.open("big") as r:
        assert r.read(123) == data[:123]
        pieces = [r.read(300_000) for _ in range(20)]
    assert data[:123] + b"".join(pieces) == data


@pytest.mark.parametrize("raid", [True, False])
def test_big_writes_from_reused_buffers_with_early_writeback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              raid: bool) -> None:
    """Big writes are cut into records straight from the caller's buffer: a bytearray the caller
    refills after each write must be written as it was; rows straddle writes of every size."""
    monkeypatch.setattr(writer, "WRITEBACK_BYTES", 100_000)
    ds = make_set(tmp_path, 256, raid)
    rng = random.Random(7)
    data = rng.randbytes(3 * 2**20 + 301)
    buf = bytearray(1_100_000)
    with ds.create("f") as w:
        o = 0
        for n in [70_000, 200_000, 5, 2**20 + 4097, 199_999, 2**20, 65_536 + 3, 1]:
            piece = data[o : o + n]
            if len(piece) <= len(buf) and n % 2:
                buf[: len(piece)] = piece
                w.write(memoryview(buf)[: len(piece)])
                buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
            else:
                w.write(piece)
            o += n
        w.write(memoryview(data)[o:])
    assert read(ds, "f") == data
    files = stripe_paths(ds, "f")
    wid = parse_header(next(iter(files.values())).read_bytes()).write_id
    assert [files[r].read_bytes() for r in sorted(files)] == stripe_reference(data, 256, wid, raid)
    assert not temps_left(ds)


def test_write_error_aborts_and_keeps_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_set(tmp_path, 4096)
    write(ds, "f", b"old content")
    real, calls = os.writev, [0]

    def writev(fd: int, iov: list) -> int:  # type: ignore[type-arg]
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, iov)

    monkeypatch.setattr(os, "writev", writev)
    with pytest.raises(OSError, match="No space left"):
        with ds.create("f") as w:
            for _ in range(40):
                w.write(bytes(1 << 20))
    monkeypatch.setattr(os, "writev", real)
    assert read(ds, "f") == b"old content" and not temps_left(ds)


def test_sparse_damage_rebuilt_across_xor_pieces(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 4096)
    data = random.Random(8).randbytes(3 * 2**20 + 5)
    write(ds, "f", data, piece=300_000)
    paths = stripe_paths(ds, "f")
    geo = Geometry(len(data), 4096)
    for role, rows in ((STRIPE1, (0, 9, 300, 383)), (STRIPE2, (8, 17, 257))):
        b = bytearray(paths[role].read_bytes())
        for row in rows:
            b[geo.record_offset(row) + 100] ^= 1
        paths[role].write_bytes(b)
    with ds.open("f") as r:
        assert r.read() == data and {d.split(" (")[0] for d in r.damage} == {"stripe 1", "stripe 2"}
    assert ds.repair("f").repaired and ds.check("f").ok


def test_exception_in_with_aborts_and_keeps_old(tmp_path: Path) -> None:
    ds = make_set(tmp_path)
    write(ds, "f", b"old content")
    with pytest.raises(RuntimeError):
        with ds.create("f") as w:
            w.write(b"new" * 1000)
            raise RuntimeError("boom")
    assert read(ds, "f") == b"old content"
    w = ds.create("f")
    w.write(b"x")
    w.abort()
    w.abort()
    with pytest.raises(ProgrammingError):
        w.write(b"y")
    assert read(ds, "f") == b"old content" and not temps_left(ds)
    with ds.create("f") as w:
        w.write(b"new content")
    assert read(ds, "f") == b"new content"
    with pytest.raises(ProgrammingError):
        w.commit()


def test_open_reader_keeps_old_content_across_overwrite(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    old, new = b"A" * 3000, b"B" * 5000
    write(ds, "f", old)
    with ds.open("f") as r:
        write(ds, "f", new)
        assert r.read() == old
    assert read(ds, "f") == new


def test_rotation_spreads_roles_over_directories(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    seen = set()
    for i in range(30):
        write(ds, f"obj{i:04x}", b"data")
        for role, p in stripe_paths(ds, f"obj{i:04x}").items():
            seen.add((role, p.parent.name))
    assert len(seen) == 9  # every role lands in every directory for some name


def test_second_writer_of_same_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claims, "CLAIM_WAIT", 0.05)
    ds = make_set(tmp_path)
    with ds.create("f") as w:
        w.write(b"first")
        with pytest.raises(InUse, match="discset t: f is being changed"):
            ds.create("f")
        with ds.create("g") as w2:  # other names are independent
            w2.write(b"g")
    assert read(ds, "f") == b"first"


def test_bad_relpaths_refused(tmp_path: Path) -> None:
    ds = make_set(tmp_path)
    for bad in ["", "/abs", "a//b", "../x", "a/./b", "a/"]:
        with pytest.raises(ProgrammingError):
            ds.create(bad)


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("raid", [True, False])
def test_exists_listdir_delete_rename(tmp_path: Path, raid: bool) -> None:
    ds = make_set(tmp_path, 16, raid)
    write(ds, "acct/1/a", b"aaa" * 100)
    write(ds, "acct/1/b", b"bbb" * 10)
    write(ds, "acct/2/c", b"")
    assert ds.exists("acct/1/a") and not ds.exists("acct/1/zz")
    assert ds.listdir("acct/1") == ["a", "b"] and ds.listdir("acct") == [] and ds.listdirs("acct") == ["1", "2"]
    assert ds.listdir("nothing/here") == []
    ds.rename("acct/1/a", "acct/2/moved")
    assert read(ds, "acct/2/moved") == b"aaa" * 100 and not ds.exists("acct/1/a")
    ds.rename("acct/2/moved", "acct/1/b")  # replaces b
    assert read(ds, "acct/1/b") == b"aaa" * 100 and ds.listdir("acct/1") == ["b"]
    ds.rename("acct/1/b", "acct/1/b")
    assert read(ds, "acct/1/b") == b"aaa" * 100
    ds.delete("acct/1/b")
    assert not ds.exists("acct/1/b") and ds.listdir("acct/1") == []
    with pytest.raises(NotFound, match="discset t: acct/1/b"):
        ds.open("acct/1/b")
    with pytest.raises(NotFound):
        ds.delete("acct/1/b")
    with pytest.raises(NotFound):
        ds.rename("acct/1/b", "x")
    assert not temps_left(ds)


# -- damage ------------------------------------------------------------------------------


def test_missing_stripe_read_logs_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = make_set(tmp_path, 16)
    data = random.Random(4).randbytes(1001)
    write(ds, "f", data)
    victim = stripe_paths(ds, "f")[STRIPE1]
    victim.unlink()
    with caplog.at_level(logging.WARNING, logger="boxbox.raidfile"):
        with ds.open("f") as r:
            assert r.read() == data and r.degraded
    assert f"discset t: f: directory {ds.directories.index(victim.parent)}: missing" in caplog.text


@pytest.mark.parametrize("role", [STRIPE1, STRIPE2, PARITY])
def test_truncated_stripe_is_rebuilt(tmp_path: Path, role: int) -> None:
    ds = make_set(tmp_path, 16)
    data = random.Random(5).randbytes(999)
    write(ds, "f", data)
    p = stripe_paths(ds, "f")[role]
    p.write_bytes(p.read_bytes()[:200])
    assert read(ds, "f") == data
    report = ds.check("f")
    assert report.readable and not report.ok
    assert [s.state for s in report.stripes if s.role == {0: "stripe 1", 1: "stripe 2", 2: "parity"}[role]] == [
        "damaged"]


def test_eio_on_a_stripe_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_set(tmp_path, 16)
    data = random.Random(6).randbytes(2000)
    write(ds, "f", data)
    bad_ino = stripe_paths(ds, "f")[STRIPE2].stat().st_ino
    real = os.preadv

    def preadv(fd: int, bufs: list, off: int) -> int:  # type: ignore[type-arg]
        if os.fstat(fd).st_ino == bad_ino:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "preadv", preadv)
    with ds.open("f") as r:
        assert r.read() == data
        assert any("stripe 2" in d and "read error: Input/output error" in d for d in r.damage)


def test_two_missing_stripes_is_integrity_error_naming_file(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    write(ds, "acct/f", b"x" * 100)
    paths = stripe_paths(ds, "acct/f")
    paths[STRIPE1].unlink()
    paths[PARITY].unlink()
    with pytest.raises(IntegrityError, match="discset t: acct/f: no readable write"):
        ds.open("acct/f")
    report = ds.check("acct/f")
    assert not report.readable and "UNRECOVERABLE" in str(report)
    with pytest.raises(IntegrityError):
        ds.repair("acct/f")


def test_same_row_damaged_in_both_data_stripes(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    write(ds, "f", bytes(range(256)) * 4)
    paths = stripe_paths(ds, "f")
    for role in (STRIPE1, STRIPE2):
        b = bytearray(paths[role].read_bytes())
        b[Geometry(1024, 16).record_offset(3) + 5] ^= 0xFF
        paths[role].write_bytes(b)
    with ds.open("f") as r:
        assert r.read(16 * 6) == (bytes(range(256)) * 4)[: 16 * 6]  # rows before the damage are fine
        with pytest.raises(IntegrityError, match="blocks 6 and 7 are both unusable"):
            r.read()


def test_damage_in_different_rows_of_two_stripes_is_still_recovered(tmp_path: Path) -> None:
    """Recovery is per row of blocks, so two damaged stripes only fail where a row has two bad blocks."""
    ds = make_set(tmp_path, 16)
    data = random.Random(9).randbytes(1600)
    write(ds, "f", data)
    paths = stripe_paths(ds, "f")
    geo = Geometry(len(data), 16)
    for role, row in ((STRIPE1, 2), (STRIPE2, 30), (PARITY, 41)):
        b = bytearray(paths[role].read_bytes())
        b[geo.record_offset(row) + 1] ^= 0x80
        paths[role].write_bytes(b)
    with ds.open("f") as r:
        assert r.read() == data and len(r.damage) == 2  # the parity damage is not on the read path
    report = ds.check("f")
    assert report.readable and sorted(s.bad_blocks for s in report.stripes) == [1, 1, 1]
    assert ds.repair("f").repaired and ds.check("f").ok


def test_damaged_block_without_parity(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    write(ds, "f", b"z" * 500)
    paths = stripe_paths(ds, "f")
    paths[PARITY].unlink()
    b = bytearray(paths[STRIPE1].read_bytes())
    b[-3] ^= 1
    paths[STRIPE1].write_bytes(b)
    with pytest.raises(IntegrityError, match="block 30 is unusable and so is its parity"):
        read(ds, "f")


def test_non_raid_damage_is_detected_not_repaired(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16, raid=False)
    write(ds, "f", b"q" * 300)
    p = stripe_paths(ds, "f")[WHOLE]
    b = bytearray(p.read_bytes())
    b[HEADER.size + 20 * 5] ^= 4
    p.write_bytes(b)
    with pytest.raises(IntegrityError, match="block 5 is damaged and a non-RAID set has no other copy"):
        read(ds, "f")
    report = ds.check("f")
    assert not report.readable and report.stripes[0].state == "damaged" and report.stripes[0].bad_blocks == 1
    with pytest.raises(IntegrityError):
        ds.repair("f")


# -- check, repair, scrub, rebuild -------------------------------------------------------


def test_stale_stripe_from_interrupted_overwrite_is_reported_and_repaired(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    write(ds, "f", b"new" * 100)
    stale_src = tmp_path / "other"
    stale_src.mkdir()
    other = make_set(stale_src, 16)
    write(other, "f", b"old" * 70)
    # put an old stripe 1 where this file keeps its stripe 1: as if a kill came between renames
    target = stripe_paths(ds, "f")[STRIPE1]
    shutil.copy(stripe_paths(other, "f")[STRIPE1], target)
    assert read(ds, "f") == b"new" * 100
    report = ds.check("f")
    assert report.readable and [s.state for s in report.stripes].count("stale") == 1
    fixed = ds.repair("f")
    assert fixed.repaired and ds.check("f").ok and read(ds, "f") == b"new" * 100


def test_scrub_repairs_and_removes_dead_temps(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    contents = {f"a/{i}": random.Random(i).randbytes(i * 37) for i in range(6)}
    contents["a/b/deep"] = b"deep" * 50
    for name, data in contents.items():
        write(ds, name, data)
    stripe_paths(ds, "a/2")[PARITY].unlink()
    p = stripe_paths(ds, "a/b/deep")[STRIPE2]
    b = bytearray(p.read_bytes())
    b[HEADER.size + 3] ^= 0x10
    p.write_bytes(b)
    (ds.directories[1] / "a" / "ghost.rfw").write_bytes(b"junk from a killed writer")
    results = dict(ds.scrub())
    assert set(results) == set(contents)
    assert {n for n, r in results.items() if r.repaired} == {"a/2", "a/b/deep"}
    assert all(r.readable for r in results.values())
    assert not temps_left(ds)
    assert all(r.ok for _, r in ds.scrub())
    for name, data in contents.items():
        assert read(ds, name) == data


def test_scrub_without_fix_only_reports(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    write(ds, "f", b"abc" * 40)
    stripe_paths(ds, "f")[STRIPE2].unlink()
    [(name, report)] = list(ds.scrub(fix=False))
    assert name == "f" and not report.ok and not report.repaired
    assert not ds.check("f").ok


def test_rebuild_replaced_disc_gives_identical_stripes(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 32)
    names = [f"x/{i}" for i in range(8)] + ["y/z/w"]
    for n in names:
        write(ds, n, random.Random(n).randbytes(len(n) * 300))
    before = {p: p.read_bytes() for d in ds.directories for p in d.rglob("*.rf")}
    shutil.rmtree(ds.directories[1])
    ds.directories[1].mkdir()
    summary = ds.rebuild_directory(1)
    assert summary.files == len(names) and summary.rebuilt == len(names) and summary.failed == []
    after = {p: p.read_bytes() for d in ds.directories for p in d.rglob("*.rf")}
    assert after == before


def test_repair_of_healthy_file_changes_nothing(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    write(ds, "f", b"fine" * 10)
    mtimes = {p: p.stat().st_mtime_ns for p in stripe_paths(ds, "f").values()}
    report = ds.repair("f")
    assert report.ok and not report.repaired
    assert {p: p.stat().st_mtime_ns for p in stripe_paths(ds, "f").values()} == mtimes
    assert not temps_left(ds)


def test_concurrent_readers_during_overwrites_see_whole_versions(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 16)
    versions = [bytes([i]) * (500 + 97 * i) for i in range(60)]
    write(ds, "f", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(read(ds, "f"))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for v in versions[1:]:
        write(ds, "f", v)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert seen and all(s in versions for s in seen)


def test_open_without_settling_reads_the_agreed_write_and_leaves_dead_temps(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    ds = DiscSet("t", dirs, 64)
    with ds.create("a/f") as w:
        w.write(b"old" * 100)
    dead = ds.create("a/f")  # a writer that dies before its first rename: its temps stay behind
    dead.write(b"new" * 100)
    temps = [d / "a" / "f.rfw" for d in dirs]
    for fd in [t.fd for t in dead._targets]:
        os.close(fd)  # the flock goes with the descriptor, as when the process dies
    dead._targets, dead._open = [], False
    with ds.open("a/f", settle=False) as r:
        assert r.read() == b"old" * 100
    assert all(t.exists() for t in temps)
    with ds.open("a/f") as r:  # the default settles them
        assert r.read() == b"old" * 100
    assert not any(t.exists() for t in temps)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="looks at /proc/self/fd")
def test_big_overwrite_frees_the_old_stripes(tmp_path: Path) -> None:
    """The stripes a big write replaces are closed (so freed) on the pool, after commit returns: none stays open."""
    ds = make_set(tmp_path, 4096)
    for fill in (b"a", b"b"):
        write(ds, "big", fill * (writer.FREE_LATER_BYTES + 1), piece=1 << 20)

    def replaced_open() -> list[str]:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
        return [p for p in links if p.startswith(str(tmp_path)) and p.endswith("(deleted)")]

    for _ in range(500):  # the pool closes them as soon as it gets to it
        if not replaced_open():
            break
        threading.Event().wait(0.01)
    assert not replaced_open()
    assert read(ds, "big") == b"b" * (writer.FREE_LATER_BYTES + 1)
