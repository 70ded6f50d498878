"""raidfile's helper process: same bytes as in-process, survives the helper's death, errors and a killed parent."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boxbox.errors import IntegrityError
from boxbox.raidfile import kernels, reader, xorproc
from boxbox.raidfile.layout import PARITY, STRIPE1, STRIPE2, Geometry, parse_header, stripe_reference
from tests.test_raidfile import make_set, read, stripe_paths, temps_left

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not xorproc.AVAILABLE, reason="the helper needs Linux (memfd, /proc/self/fd)")


@pytest.fixture(autouse=True)
def helper_for_every_size(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(xorproc, "MIN_BYTES", 0)
    monkeypatch.setattr(xorproc, "MAX_HELPERS", max(1, xorproc.MAX_HELPERS))  # also on one core
    monkeypatch.setattr(xorproc, "_deaths", 0)  # the kills below would otherwise switch helpers off
    monkeypatch.setattr(xorproc, "_disabled", False)
    yield
    xorproc.stop_all()


def helper_pids() -> set[int]:
    return {h.proc.pid for h in xorproc._running}


def expected(ds, relpath: str, data: bytes, bs: int) -> None:  # type: ignore[no-untyped-def]
    files = stripe_paths(ds, relpath)
    wid = {parse_header(p.read_bytes()).write_id for p in files.values()}.pop()
    assert [files[r].read_bytes() for r in sorted(files)] == stripe_reference(data, bs, wid)


def degraded(tmp_path: Path, seed: int, size: int, lost: int):  # type: ignore[no-untyped-def]
    """A disc set holding file "f" of `size` random bytes with stripe `lost` removed, and the bytes."""
    ds = make_set(tmp_path, 4096)
    data = random.Random(seed).randbytes(size)
    with ds.create("f") as w:
        w.write(data)
    stripe_paths(ds, "f")[lost].unlink()
    return ds, data


def test_helper_write_and_reads_match_the_reference(tmp_path: Path) -> None:
    ds = make_set(tmp_path, 256)
    data = random.Random(1).randbytes(5 * 2**20 + 77)
    with ds.create("f") as w:
        for o in range(0, len(data), 300_000):
            w.write(data[o : o + 300_000])
        assert w._parity is not None and w._parity.h is not None  # the parity went to the helper
    expected(ds, "f", data, 256)
    assert helper_pids(), "the helper stays for the next big file"
    assert read(ds, "f") == data
    stripe_paths(ds, "f")[STRIPE1].unlink()
    with ds.open("f") as r:
        got = b"".join(iter(lambda: r.read(1 << 20), b""))
        assert r.degraded
    assert got == data and not temps_left(ds)


@pytest.mark.parametrize("lost", [STRIPE1, STRIPE2])
@pytest.mark.parametrize("damage", [None, "data", "parity"])
def test_helper_degraded_read_never_gives_wrong_bytes(tmp_path: Path, lost: int, damage: str | None) -> None:
    """With a data stripe gone, damage in the other stripe or in parity is unrecoverable in its row: the
    helper's chunk is refused, the caller decodes it and raises IntegrityError; the rows before read fine."""
    ds = make_set(tmp_path, 4096)
    data = random.Random(6).randbytes(9 * 2**20 + 100)
    with ds.create("f") as w:
        w.write(data)
    paths = stripe_paths(ds, "f")
    paths[lost].unlink()
    if damage is not None:
        victim = paths[PARITY if damage == "parity" else 1 - lost]
        b = bytearray(victim.read_bytes())
        b[Geometry(len(data), 4096).record_offset(1000) + 5] ^= 1  # row 1000: clear bytes 7.8 MiB on
        victim.write_bytes(b)
    with ds.open("f") as r:
        got = [r.read(1 << 20) for _ in range(7)]
        assert r._helper is not None  # the helper decoded some of them
        assert b"".join(got) == data[: 7 << 20]
        if damage is None:
            assert b"".join(got) + r.read() == data
        else:
            with pytest.raises(IntegrityError, match="discset t: f"):
                r.read()


def test_a_late_helper_is_let_go_and_the_read_goes_on_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "HELPER_LATE", 0)  # any answer counts as late enough
    ds, data = degraded(tmp_path, 7, 11 * 2**20, STRIPE2)
    with ds.open("f") as r:
        got = [r.read(1 << 20) for _ in range(7)]
        assert r._helper is None  # used for a chunk, then given back for other files
        got.append(r.read())
    assert b"".join(got) == data and xorproc._idle


def test_a_helper_late_now_and_then_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a run of HELPER_LATE late chunks lets the helper go: on a long read a few late ones come from any
    passing load (counting them all let the helper go in most 256 MiB reads, at half the speed)."""
    monkeypatch.setattr(reader, "HELPER_LATE", 2)
    answers: list[int] = []
    original = reader.RaidReader._from_helper

    def every_other_late(self: reader.RaidReader):  # type: ignore[no-untyped-def]
        answers.append(1)
        self._last_decode = -1.0 if len(answers) % 2 else 1e9  # waited longer than our own chunk / not
        return original(self)

    monkeypatch.setattr(reader.RaidReader, "_from_helper", every_other_late)
    ds, data = degraded(tmp_path, 8, 21 * 2**20, STRIPE1)
    with ds.open("f") as r:
        got = [r.read(1 << 20) for _ in range(19)]
        assert r._helper is not None and len(answers) >= 4  # late twice, never twice in a row: still working
        got.append(r.read())
    assert b"".join(got) == data


@pytest.mark.parametrize("when", ["mid-write", "before commit"])
def test_helper_killed_during_a_write_the_write_completes_here(tmp_path: Path, when: str) -> None:
    ds = make_set(tmp_path, 4096)
    data = random.Random(2).randbytes(12 * 2**20 + 5)
    piece = 1 << 20
    with ds.create("f") as w:
        for i, o in enumerate(range(0, len(data), piece)):
            w.write(data[o : o + piece])
            h = w._parity.h if w._parity is not None else None
            if h is not None and (when == "mid-write" and i == 5 or when == "before commit" and i == 12):
                h.proc.kill()
                h.proc.wait()
        assert w._parity is not None and (w._parity.h is None or when == "before commit")
    expected(ds, "f", data, 4096)
    assert read(ds, "f") == data and not temps_left(ds)


def test_helper_killed_during_a_degraded_read(tmp_path: Path) -> None:
    ds, data = degraded(tmp_path, 3, 9 * 2**20, STRIPE1)
    with ds.open("f") as r:
        parts = [r.read(1 << 20) for _ in range(3)]
        assert r._helper is not None
        r._helper.proc.kill()
        parts.append(r.read())
    assert b"".join(parts) == data


def test_small_files_never_start_a_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xorproc, "MIN_BYTES", 4 << 20)
    xorproc.stop_all()
    ds = make_set(tmp_path, 4096)
    data = random.Random(5).randbytes((4 << 20) - 1)
    with ds.create("f") as w:
        w.write(data)
    assert read(ds, "f") == data and not helper_pids()


def test_concurrent_big_writes_share_one_helper(tmp_path: Path) -> None:
    """The helper serves one file at a time; the other writes compute their parity themselves."""
    ds = make_set(tmp_path, 4096)
    datas = [random.Random(i).randbytes(6 * 2**20 + i) for i in range(3)]
    errors: list[BaseException] = []

    def put(i: int) -> None:
        try:
            with ds.create(f"f{i}") as w:
                for o in range(0, len(datas[i]), 1 << 20):
                    w.write(datas[i][o : o + (1 << 20)])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, data in enumerate(datas):
        expected(ds, f"f{i}", data, 4096)
    assert len(helper_pids()) <= xorproc.MAX_HELPERS


def test_error_in_the_helper_is_raised_and_the_write_aborted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper's errno comes back as the OSError the caller's own write would raise; no temps stay."""
    ds = make_set(tmp_path, 4096)
    with ds.create("f") as w:
        w.write(b"old")
    real = xorproc.Helper.send

    def send(self: xorproc.Helper, op: int, *args: int, fds: tuple[int, ...] = ()) -> None:
        if op == kernels.OP_PARITY:
            args = (*args[:5], -2, *args[6:])  # a file offset the kernel refuses with EINVAL
        real(self, op, *args, fds=fds)

    monkeypatch.setattr(xorproc.Helper, "send", send)
    with pytest.raises(OSError) as e:
        with ds.create("f") as w:
            for _ in range(8):
                w.write(bytes(1 << 20))
    assert e.value.errno == errno.EINVAL
    assert read(ds, "f") == b"old" and not temps_left(ds)


def test_no_helper_can_start_then_all_is_done_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xorproc.sys, "executable", str(tmp_path / "no-such-python"))
    ds = make_set(tmp_path, 64)
    data = random.Random(4).randbytes(3 * 2**20 + 1)
    with ds.create("f") as w:
        w.write(data)
    assert xorproc._disabled and not helper_pids()
    expected(ds, "f", data, 64)


CHILD = """
import os, sys
from pathlib import Path
from boxbox.raidfile import DiscSet, xorproc
xorproc.MIN_BYTES, xorproc.MAX_HELPERS = 0, 1
ds = DiscSet("t", [Path(sys.argv[1]) / d for d in "abc"], 4096)
with ds.create("f") as w:
    w.write(bytes(3 << 20))
print(*[h.proc.pid for h in xorproc._running], flush=True)
sys.stdin.readline()
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("end", ["kill -9", "exit"])
def test_no_helper_survives_its_parent(tmp_path: Path, end: str) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]  # type: ignore[union-attr]
        assert pids and not any(map(_gone, pids))
        if end == "exit":
            parent.communicate("\n")
        else:
            parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while not all(map(_gone, pids)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(map(_gone, pids)), f"helper {pids} outlived its parent"
    finally:
        parent.kill()
        parent.wait()
