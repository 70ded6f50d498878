"""Restore library against a real store session (in process, no TLS): fidelity, safety, resume."""

from __future__ import annotations

import errno
import io
import os
import socket
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.errors import IntegrityError, UsageError
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.directory import DIR, FILE, Directory, make_entry
from boxbox.restore import target
from boxbox.restore.compare import compare
from boxbox.restore.names import check_name
from boxbox.restore.remote import ROOT_ID, Remote, select
from boxbox.restore.restore import Options, Restore, get_file, restore
from boxbox.store.account import Store
from boxbox.store.accountdb import AccountDatabase
from boxbox.wire import messages as m

from tests.test_restore_support import Uploader, link_groups, make_linked_tree, snapshot
from tests.test_store import discset
from tests.test_store_support import make_keys, session_client

A = 0x5A
ROOT = os.geteuid() == 0


class Env:
    """A store with one account; `writer()` / `reader()` give logged-in clients."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = Store(AccountDatabase(tmp / "accounts.db"), {"0": discset(tmp / "store")})
        self.store.create_account(A, 1_000_000, 2_000_000, "0", "restore")
        self.keys = make_keys()
        self._clients: list[Any] = []
        self._threads: dict[int, Any] = {}

    def client(self, read_only: bool) -> Any:
        client, thread = session_client(self.store, A)
        client.login(read_only=read_only)
        self._clients.append(client)
        self._threads[id(client)] = thread
        return client

    def release(self, up: Uploader) -> None:
        """End a writing session and wait until its server side has let go of the account."""
        up.client.close()
        self._threads[id(up.client)].join(10)

    def upload(self) -> Uploader:
        return Uploader(self.client(False), self.keys)

    def remote(self) -> Remote:
        return Remote(self.client(True), self.keys)

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def make_tree(root: Path) -> None:
    """Every kind of thing a file system holds (devices only as root)."""
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"hello\n" * 1000)
    (root / "docs" / "deep" / "random.bin").write_bytes(os.urandom(700_000))  # several blocks
    (root / "empty").write_bytes(b"")
    (root / "with space & 'quote'").write_bytes(b"odd name")
    (root / os.fsdecode(b"caf\xe9-latin1")).write_bytes(b"not UTF-8")
    (root / "exec.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exec.sh", 0o4755)
    os.symlink("docs/a.txt", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("nowhere", root / "dangling")
    os.mkfifo(root / "fifo", 0o640)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
    if ROOT:
        os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(root / "docs" / "a.txt", "user.colour", b"blue")
    (root / "ro").mkdir()
    (root / "ro" / "inside").write_bytes(b"x")
    os.chmod(root / "ro", 0o555)
    os.utime(root / "docs" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "rel-link", ns=(1_500_000_000_000_000_001,) * 2, follow_symlinks=False)


def test_full_restore_is_identical(env: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    env.upload().tree(src, name=b"home")
    remote = env.remote()
    out = tmp_path / "out"
    summary = restore(remote, remote.resolve("/home", [(b"", ROOT_ID)]), out, Options())
    assert summary.errors == [] and summary.files == 7
    assert snapshot(out) == snapshot(src)
    assert os.getxattr(out / "docs" / "a.txt", "user.colour") == b"blue"
    assert os.stat(out).st_mtime_ns == os.stat(src).st_mtime_ns
    assert stat.S_IMODE(os.stat(out).st_mode) == stat.S_IMODE(os.stat(src).st_mode)
    assert not [n for n in os.listdir(out) if n.startswith(".boxbox-restore")]
    # the target exists now: a second restore into it is refused unless resuming
    with pytest.raises(UsageError, match="already exists"):
        restore(remote, remote.resolve("/home", [(b"", ROOT_ID)]), out, Options())


def test_old_versions_and_deleted_files(env: Env, tmp_path: Path) -> None:
    up = env.upload()
    home = up.mkdir(ROOT_ID, b"home")
    attrs = Attributes(FileType.REGULAR, 0o644, os.getuid(), os.getgid(), 1_000_000_000_000_000_000)
    versions = [os.urandom(50_000 + i) for i in range(3)]
    ids = [up.put(home, b"f.txt", data, attrs._replace(mtime_ns=attrs.mtime_ns + i)) for i, data in enumerate(versions)]
    up.put(home, b"gone.txt", b"deleted content", attrs)
    up.delete(home, b"gone.txt")
    remote = env.remote()
    listing = remote.list(home, b"home")
    assert [e.name for e in select(listing)] == [b"f.txt"]
    assert [e.object_id for e in select(listing, old=True) if e.name == b"f.txt"] == sorted(ids)
    for i, object_id in enumerate(ids):  # get -i: every version, byte-identical
        entry = next(e for e in listing.entries if e.object_id == object_id)
        get_file(remote, home, entry, tmp_path / f"v{i}")
        assert (tmp_path / f"v{i}").read_bytes() == versions[i]
        assert os.stat(tmp_path / f"v{i}").st_mtime_ns == attrs.mtime_ns + i
    with pytest.raises(UsageError, match="already exists"):
        get_file(remote, home, listing.entries[0], tmp_path / "v0")
    out = tmp_path / "out"
    restore(remote, [(b"", ROOT_ID), (b"home", home)], out, Options(deleted=True))
    assert (out / "gone.txt").read_bytes() == b"deleted content"
    assert (out / "f.txt").read_bytes() == versions[-1]
    restore(remote, [(b"", ROOT_ID), (b"home", home)], tmp_path / "out2", Options())
    assert sorted(os.listdir(tmp_path / "out2")) == ["f.txt"]


def test_point_in_time_chooses_versions_by_mtime_and_deletions_by_directory_time(env: Env, tmp_path: Path) -> None:
    up = env.upload()
    t = 1_700_000_000_000_000_000
    s = 1_000_000_000
    a = Attributes(FileType.REGULAR, 0o644, os.getuid(), os.getgid(), t)
    home = up.mkdir(ROOT_ID, b"home", Attributes(FileType.DIRECTORY, 0o755, os.getuid(), os.getgid(), t + 30 * s))
    up.put(home, b"edited", b"v1", a._replace(mtime_ns=t + 1 * s))
    up.put(home, b"edited", b"v2", a._replace(mtime_ns=t + 10 * s))
    up.put(home, b"added", b"new", a._replace(mtime_ns=t + 20 * s))
    up.put(home, b"removed", b"old", a._replace(mtime_ns=t + 2 * s))
    up.delete(home, b"removed")  # the directory's mtime (t+30) says when its names last changed
    remote = env.remote()
    for at, expect in ((t, {}), (t + 5 * s, {"edited": b"v1", "removed": b"old"}),
                       (t + 15 * s, {"edited": b"v2", "removed": b"old"}),
                       (t + 25 * s, {"edited": b"v2", "added": b"new", "removed": b"old"}),
                       (t + 35 * s, {"edited": b"v2", "added": b"new"})):
        out = tmp_path / f"at{at}"
        restore(remote, [(b"", ROOT_ID), (b"home", home)], out, Options(at_ns=at))
        assert {n: (out / n).read_bytes() for n in os.listdir(out)} == expect, at


@pytest.mark.parametrize("unnamed", [pytest.param(True, marks=pytest.mark.skipif(
    not target.HAVE_TMPFILE, reason="no O_TMPFILE here")), False], ids=["unnamed-temps", "named-temps"])
def test_resume_after_interruption_downloads_only_the_rest(env: Env, tmp_path: Path, unnamed: bool) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(40):
        (src / "d" / f"f{i:02d}").write_bytes(os.urandom(20_000))
    env.upload().tree(src, name=b"home")
    remote = env.remote()
    chain = remote.resolve("/home", [(b"", ROOT_ID)])
    out = tmp_path / "out"

    class Killed(BaseException):
        pass

    class Interrupting(target.Writer):
        commits = 0

        def commit_file(self, *a: Any) -> None:
            if self.commits == 15:
                raise Killed()  # as if killed while a file was being written
            self.commits += 1
            super().commit_file(*a)

    fetched: list[int] = []
    submit = remote.client.submit

    def counting_submit(request: Any, *a: Any, **k: Any) -> Any:
        if isinstance(request, (m.GetFile, m.GetObject)):
            fetched.append(request.object_id)
        return submit(request, *a, **k)

    remote.client.submit = counting_submit  # type: ignore[method-assign]
    writer = Interrupting()
    writer._unnamed = unnamed  # where the file system has no O_TMPFILE, temps have names
    job = Restore(remote, Options(), writer=writer)
    with pytest.raises(Killed):
        job.run(chain[-1][1], chain[-1][0], out)
    first_run = set(fetched)  # the finished 15, the interrupted one, and requests already in flight
    fetched.clear()
    names = os.listdir(out / "d")
    temps = [n for n in names if target.is_temp_name(os.fsencode(n))]
    # 15 finished; the half-written file has no name at all, or a temporary one
    assert (len(names), len(temps)) == ((15, 0) if unnamed else (16, 1))
    with pytest.raises(UsageError):
        restore(remote, chain, out, Options())
    summary = restore(remote, chain, out, Options(resume=True))
    assert (summary.files, summary.skipped) == (25, 15)
    d_id = remote.lookup(chain[-1][1], b"d").object_id
    ids = {os.fsdecode(e.name): e.object_id for e in remote.list(d_id).entries}
    done_first = {ids[n] for n in names if n in ids}
    assert len(done_first) == 15 and not done_first & set(fetched)  # no finished file fetched again
    assert len(fetched) == len(set(fetched)) == 25 and first_run | set(fetched) == set(ids.values())
    assert 25 * 20_000 < summary.downloaded < 25 * 20_000 + 40_000  # ~1 kB of headers a file + listings
    assert snapshot(out) == snapshot(src)


def _hostile_directory(env: Env, dir_id: int, extra: list[Any]) -> None:
    acct = env.store.open(A, write=True)
    try:
        d = Directory.parse(acct.read_object(dir_id))
        d.entries.extend(extra)
        acct.replace_object(dir_id, d.serialize())
        acct.commit()
    finally:
        acct.close()


def test_hostile_store_names_never_write_outside(env: Env, tmp_path: Path) -> None:
    keys = env.keys
    up = env.upload()
    home = up.mkdir(ROOT_ID, b"home")
    a = Attributes(FileType.REGULAR, 0o644, os.getuid(), os.getgid(), 1_700_000_000_000_000_000)
    good = up.put(home, b"good", b"fine", a)
    sub = up.mkdir(home, b"sub")
    up.put(sub, b"payload", b"would land outside", a)
    env.release(up)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = a._replace(file_type=FileType.SYMLINK, symlink_target=os.fsencode(outside))
    bad = [make_entry(keys, home, n, good, FILE, a) for n in (b"../x", b"/etc/passwd", b"a/b", b"nul\0name", b"..")]
    bad += [make_entry(keys, home, b"esc", good, FILE, link), make_entry(keys, home, b"esc", sub, DIR, None),
            make_entry(keys, home, b"loop", home, DIR, None)]
    _hostile_directory(env, home, bad)
    remote = env.remote()
    out = tmp_path / "out"
    summary = restore(remote, [(b"", ROOT_ID), (b"home", home)], out, Options(continue_on_error=True))
    assert os.listdir(outside) == []
    text = "\n".join(summary.errors)
    for name in (b"../x", b"/etc/passwd", b"a/b", b"nul\0name", b".."):
        assert repr(name) in text, name
    assert "twice" in text and "loop" in text
    assert (out / "good").read_bytes() == b"fine"
    assert os.path.islink(out / "esc") or os.path.isdir(out / "esc")
    assert not (outside / "payload").exists()
    with pytest.raises(IntegrityError, match="unsafe name"):
        restore(remote, [(b"", ROOT_ID), (b"home", home)], tmp_path / "out2", Options())


def test_writer_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "t"
    fd = target.open_target(root, resume=False)
    try:
        os.symlink(outside, root / "trap")
        w = target.Writer()
        with pytest.raises(OSError):
            w.make_dir(fd, b"trap", resume=True)  # exists as a link: O_NOFOLLOW refuses it
        f, tmp = w.create_temp(fd)
        f.write(b"data")
        with pytest.raises(FileExistsError):
            w.commit_file(fd, f, tmp, b"trap", None)
        assert os.listdir(outside) == [] and sorted(os.listdir(root)) == ["trap"]
        for name in (b"", b".", b"..", b"a/b", b"a\0b"):
            with pytest.raises(IntegrityError):
                check_name(name, "test")
    finally:
        os.close(fd)


@pytest.mark.skipif(not target.HAVE_TMPFILE, reason="no O_TMPFILE here")
@pytest.mark.parametrize("refused", ["O_TMPFILE", "link"])
def test_writer_falls_back_to_named_temps(tmp_path: Path, monkeypatch: Any, refused: str) -> None:
    """A file system without O_TMPFILE, or one that will not link an unnamed file: the file is still
    restored whole, under its name only, through a named temporary file."""
    fd = target.open_target(tmp_path / "t", resume=False)
    real_open, real_link = os.open, os.link

    def no_tmpfile(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *a, **k)

    def no_proc_link(src: Any, *a: Any, **k: Any) -> None:
        if str(src).startswith("/proc/self/fd/"):
            raise OSError(errno.EPERM, "Operation not permitted")
        real_link(src, *a, **k)

    try:
        w = target.Writer()
        ahead = w.create_temp_ahead(fd)
        monkeypatch.setattr(os, "open" if refused == "O_TMPFILE" else "link",
                            no_tmpfile if refused == "O_TMPFILE" else no_proc_link)
        f, tmp = w.create_temp(fd)
        assert bool(tmp) == (refused == "O_TMPFILE")
        f.write(b"payload " * 1000)
        attrs = Attributes(FileType.REGULAR, 0o640, os.getuid(), os.getgid(), 1_650_000_000_000_000_000)
        w.commit_file(fd, f, tmp, b"file", attrs)
        assert not w._unnamed  # the rest of the restore goes the named way at once
        made, tmp2 = ahead.result()  # made ahead before the refusal: unnamed, and still usable
        assert tmp2 == b""
        made.write(b"second")
        if refused == "O_TMPFILE":
            w.commit_file(fd, made, tmp2, b"second", None)
            assert (tmp_path / "t" / "second").read_bytes() == b"second"
        else:
            w.discard_temp(fd, made, tmp2)
        w.close()
        st = os.stat(tmp_path / "t" / "file")
        assert (tmp_path / "t" / "file").read_bytes() == b"payload " * 1000
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_650_000_000_000_000_000)
        assert not [n for n in os.listdir(tmp_path / "t") if target.is_temp_name(os.fsencode(n))]
    finally:
        os.close(fd)


def test_damaged_object_is_named_and_the_rest_restored(env: Env, tmp_path: Path) -> None:
    up = env.upload()
    home = up.mkdir(ROOT_ID, b"home")
    a = Attributes(FileType.REGULAR, 0o644, os.getuid(), os.getgid(), 1_700_000_000_000_000_000)
    bad_id = up.put(home, b"bad", os.urandom(100_000), a)
    up.put(home, b"ok", b"intact", a)
    env.release(up)
    acct = env.store.open(A, write=True)
    try:
        data = bytearray(acct.read_object(bad_id))
        data[len(data) // 2] ^= 0x01
        acct.replace_object(bad_id, bytes(data))
        acct.commit()
    finally:
        acct.close()
    remote = env.remote()
    chain = [(b"", ROOT_ID), (b"home", home)]
    summary = restore(remote, chain, tmp_path / "out", Options(continue_on_error=True))
    assert len(summary.errors) == 1 and summary.errors[0].startswith("bad: integrity check failed")
    assert sorted(os.listdir(tmp_path / "out")) == ["ok"]  # no half-written file, no temp file left
    with pytest.raises(IntegrityError, match="bad"):
        restore(remote, chain, tmp_path / "out2", Options())


def test_quick_compare_finds_a_change_without_downloading_data(env: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(2_000_000))
    (src / "small").write_bytes(b"same")
    env.upload().tree(src, name=b"home")
    remote = env.remote()
    chain = remote.resolve("/home", [(b"", ROOT_ID)])
    result = compare(remote, chain, src, quick=True)
    assert (result.exit_code, result.files) == (0, 2)
    with open(src / "big", "r+b") as f:  # same size, same mtime: only the checksums can tell
        st = os.fstat(f.fileno())
        f.seek(1_500_000)
        old = f.read(1)
        f.seek(1_500_000)
        f.write(bytes([old[0] ^ 0xFF]))  # (b"X" was the byte there already once in 256 runs)
    os.utime(src / "big", ns=(st.st_atime_ns, st.st_mtime_ns))
    before = remote.client.conn.bytes_in
    result = compare(remote, chain, src, quick=True)
    assert result.exit_code == 1 and result.differences == ["big: contents differ"]
    assert remote.client.conn.bytes_in - before < 100_000  # the index (108 B a block), not 2 MB of data
    full = compare(remote, chain, src, quick=False)
    assert full.differences == ["big: contents differ"]
    (src / "extra").write_bytes(b"")
    os.unlink(src / "small")
    result = compare(remote, chain, src, quick=True)
    assert sorted(result.differences) == ["big: contents differ", "extra: only on local disc",
                                          "small: missing on local disc (No such file or directory)"]
    assert compare(remote, chain, tmp_path / "nope").exit_code == 2


def test_decoded_listing_skips_a_tampered_entry(env: Env) -> None:
    up = env.upload()
    home = up.mkdir(ROOT_ID, b"home")
    a = Attributes(FileType.REGULAR, 0o644, 0, 0, 1)
    up.put(home, b"one", b"1", a)
    up.put(home, b"two", b"2", a)
    env.release(up)
    acct = env.store.open(A, write=True)
    try:
        d = Directory.parse(acct.read_object(home))
        d.entries[0].mtime_ns += 1  # the clear mtime no longer matches the sealed attributes
        acct.replace_object(home, d.serialize())
        acct.commit()
    finally:
        acct.close()
    listing = env.remote().list(home, b"home")
    assert [e.name for e in listing.entries] == [b"two"] and "mtime" in listing.errors[0]


def test_get_file_writes_exclusively(env: Env, tmp_path: Path) -> None:
    up = env.upload()
    home = up.mkdir(ROOT_ID, b"home")
    up.put(home, b"f", b"content", Attributes(FileType.REGULAR, 0o600, 0, 0, 5))
    remote = env.remote()
    entry = remote.lookup(home, b"f")
    os.symlink(tmp_path / "victim", tmp_path / "link")
    with pytest.raises(UsageError):
        get_file(remote, home, entry, tmp_path / "link")
    assert not (tmp_path / "victim").exists()
    assert get_file(remote, home, entry, tmp_path / "copy") == 7
    assert io.open(tmp_path / "copy", "rb").read() == b"content"


def test_owners_without_root_give_one_warning(tmp_path: Path) -> None:
    fd = target.open_target(tmp_path / "t", resume=False)
    try:
        w = target.Writer(as_root=False)
        other = Attributes(FileType.REGULAR, 0o640, os.geteuid() + 1, os.getegid() + 1, 1_000_000_000)
        for name in (b"a", b"b"):
            f, tmp = w.create_temp(fd)
            w.commit_file(fd, f, tmp, name, other)
        assert w.make_node(fd, b"l", other._replace(file_type=FileType.SYMLINK, symlink_target=b"a"))
        assert len(w.warnings) == 1 and "not running as root" in w.warnings[0]
        device = other._replace(file_type=FileType.CHAR_DEVICE, rdev=os.makedev(1, 3))
        assert not w.make_node(fd, b"null", device) and not w.make_node(fd, b"zero", device)
        assert len(w.warnings) == 2 and "device nodes" in w.warnings[1]
        assert sorted(os.listdir(tmp_path / "t")) == ["a", "b", "l"]
        st = os.stat(tmp_path / "t" / "a")
        assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (os.geteuid(), 0o640, 1_000_000_000)
        assert os.readlink(tmp_path / "t" / "l") == "a"
    finally:
        os.close(fd)


def test_big_temp_files_start_writeback_as_they_grow(tmp_path: Path, monkeypatch: Any) -> None:
    """Every WRITEBACK_BYTES written go to the disc at once, so the final sync() waits for the tail only."""
    kicked: list[tuple[int, int]] = []
    monkeypatch.setattr(target, "HAVE_FADVISE", True)
    monkeypatch.setattr(target.os, "posix_fadvise", lambda fd, off, n, advice: kicked.append((off, n)), raising=False)
    monkeypatch.setattr(target, "WRITEBACK_BYTES", 1000)
    fd = target.open_target(tmp_path / "t", resume=False)
    try:
        w = target.Writer(as_root=False)
        f, tmp = w.create_temp(fd)
        for size in (600, 600, 100, 900, 2500, 10):
            assert f.write(b"x" * size) == size
        w.commit_file(fd, f, tmp, b"big", None)
    finally:
        os.close(fd)
    assert kicked == [(0, 1200), (1200, 1000), (2200, 2500)]  # the last 10 bytes are left to sync()
    assert (tmp_path / "t" / "big").read_bytes() == b"x" * 4710


def test_progress_line_on_a_terminal() -> None:
    from boxbox.restore.progress import Progress

    out = io.StringIO()
    p = Progress(out, "restored")
    p.total_files, p.total_bytes = 10, 10_000_000
    p.start -= 2  # two seconds in
    p.update(5, 5_000_000)
    line = out.getvalue()
    assert line.startswith("\rrestored 5/10 files, 5.0 MB, 2.5 MB/s, ETA 2 s")
    p.update(6, 6_000_000)  # within REDRAW of the last one: not drawn
    assert out.getvalue() == line
    p.clear()
    assert out.getvalue().endswith("\r")
    silent = Progress(None)
    silent.update(1, 1)
    silent.clear()


def test_deep_tree_beyond_the_descriptor_cache(env: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src
    for level in range(150):  # deeper than FD_CACHE and than Python's recursion would like
        deep = deep / f"d{level}"
        deep.mkdir(parents=True)
        if level % 50 == 0:
            (deep / "f").write_bytes(b"level %d" % level)
    env.upload().tree(src, name=b"home")
    remote = env.remote()
    summary = restore(remote, remote.resolve("/home", [(b"", ROOT_ID)]), tmp_path / "out", Options())
    assert (summary.files, summary.directories, summary.errors) == (3, 151, [])
    assert snapshot(tmp_path / "out") == snapshot(src)


def counting(remote: Remote) -> list[int]:
    """Object ids of every download the remote's client asks for from now on."""
    fetched: list[int] = []
    submit = remote.client.submit

    def counting_submit(request: Any, *a: Any, **k: Any) -> Any:
        if isinstance(request, (m.GetFile, m.GetObject)):
            fetched.append(request.object_id)
        return submit(request, *a, **k)

    remote.client.submit = counting_submit  # type: ignore[method-assign]
    return fetched


def test_hard_links_are_restored_as_links(env: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_linked_tree(src)
    env.upload().tree(src, name=b"home")
    remote = env.remote()
    fetched = counting(remote)
    out = tmp_path / "out"
    summary = restore(remote, remote.resolve("/home", [(b"", ROOT_ID)]), out, Options())
    assert summary.errors == [] and summary.warnings == []
    assert snapshot(out) == snapshot(src)
    assert link_groups(out) == link_groups(src) == {
        frozenset({"a", "d1/a2", "d2/a3"}), frozenset({"b", "b2"}), frozenset({"fifo", "d1/fifo2"}),
        frozenset({"sym", "d2/sym2"})}
    assert len(fetched) == 3  # a, b and single: each inode's data once
    assert (summary.files, summary.links, summary.nodes) == (6, 5, 4)
    assert "5 names made as hard links" in summary.line()
    # only part of a group restored: the names inside the restored tree are linked to each other
    sub = tmp_path / "sub"
    restore(remote, remote.resolve("/home/d1", [(b"", ROOT_ID)]), sub, Options())
    assert os.stat(sub / "a2").st_nlink == 1 and (sub / "a2").read_bytes() == (src / "a").read_bytes()


def test_hard_links_across_resume(env: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_linked_tree(src)
    env.upload().tree(src, name=b"home")
    remote = env.remote()
    chain = remote.resolve("/home", [(b"", ROOT_ID)])
    out = tmp_path / "out"

    class Killed(BaseException):
        pass

    class Interrupting(target.Writer):
        links = 0

        def link(self, *a: Any) -> None:
            if self.links == 1:
                raise Killed()  # killed after the files and one link
            self.links += 1
            super().link(*a)

    with pytest.raises(Killed):
        Restore(remote, Options(), writer=Interrupting()).run(chain[-1][1], chain[-1][0], out)
    fetched = counting(remote)
    summary = restore(remote, chain, out, Options(resume=True))
    assert fetched == [] and summary.skipped == 4  # a, b, single and the one link made before
    assert link_groups(out) == link_groups(src) and snapshot(out) == snapshot(src)


def test_hard_link_whose_first_name_failed_is_written_on_its_own(env: Env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "first").write_bytes(os.urandom(100_000))
    for n in ("second", "third"):
        os.link(src / "first", src / n)
    up = env.upload()
    home = up.tree(src, name=b"home")
    env.release(up)
    remote = env.remote()
    first = remote.lookup(home, b"first").object_id
    acct = env.store.open(A, write=True)
    try:
        data = bytearray(acct.read_object(first))
        data[len(data) // 2] ^= 0x01
        acct.replace_object(first, bytes(data))
        acct.commit()
    finally:
        acct.close()
    out = tmp_path / "out"
    summary = restore(remote, [(b"", ROOT_ID), (b"home", home)], out, Options(continue_on_error=True))
    assert len(summary.errors) == 1 and summary.errors[0].startswith("first: integrity check failed")
    assert len(summary.warnings) == 2 and all("a hard link of first, which was not restored" in w
                                              for w in summary.warnings)
    assert sorted(os.listdir(out)) == ["second", "third"]
    assert (out / "second").read_bytes() == (src / "first").read_bytes()
    assert link_groups(out) == {frozenset({"second", "third"})}  # the rest of the group is still one inode


def test_names_of_one_inode_in_different_versions_are_not_linked(env: Env, tmp_path: Path) -> None:
    """A link id shared by names whose versions differ (caught between two changes, a reused inode)."""
    up = env.upload()
    home = up.mkdir(ROOT_ID, b"home")
    a = Attributes(FileType.REGULAR, 0o644, os.getuid(), os.getgid(), 1_700_000_000_000_000_000, link_id=7 << 64 | 9)
    up.put(home, b"old", b"before the edit", a)
    up.put(home, b"new", b"after the edit", a._replace(mtime_ns=a.mtime_ns + 1))
    up.put(home, b"same", b"before the edit", a)
    env.release(up)
    remote = env.remote()
    out = tmp_path / "out"
    restore(remote, [(b"", ROOT_ID), (b"home", home)], out, Options())
    assert (out / "new").read_bytes() == b"after the edit" and (out / "old").read_bytes() == b"before the edit"
    assert link_groups(out) == {frozenset({"old", "same"})}


def test_restore_holds_one_listed_batch_of_entries_not_the_whole_tree(env: Env, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are restored batch by batch as directories are listed (issue #11: client RSS);
    hard links across batches are still linked to their first name."""
    import boxbox.restore.restore as restore_mod

    src = tmp_path / "src"
    for d in range(8):
        for f in range(5):
            p = src / f"d{d}" / f"f{f}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"%d/%d " % (d, f) * (50 * f + 1))
    (src / "top").write_bytes(b"top")
    os.link(src / "d0" / "f3", src / "d7" / "link")  # first name and later name in different batches
    env.upload().tree(src, name=b"home")
    monkeypatch.setattr(restore_mod, "LIST_BATCH", 2)
    remote = env.remote()
    fetched = counting(remote)
    name, dir_id = remote.resolve("/home", [(b"", ROOT_ID)])[-1]
    job = Restore(remote, Options())
    summary = job.run(dir_id, name, tmp_path / "out")
    assert summary.errors == [] and summary.warnings == []
    assert (summary.files, summary.links, summary.directories) == (42, 1, 9)
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert link_groups(tmp_path / "out") == {frozenset({"d0/f3", "d7/link"})}
    assert len(fetched) == 41
    # two directories a batch: at most 2 x 6 entries held (d7 has 6), never all 42
    assert job.held_files <= 12
    assert (job.total_files, job.files) == (42, [])
    # at a point in time the whole tree is listed first (to leave out what did not exist yet)
    at = Restore(remote, Options(at_ns=2**62))
    at.run(dir_id, name, tmp_path / "at")
    assert at.held_files == 42 and snapshot(tmp_path / "at") == snapshot(src)
