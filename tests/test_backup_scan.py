"""The location scanner on generated trees: kinds of entries, change detection, moves, errors."""

from __future__ import annotations

import errno
import itertools
import os
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from boxbox.backup.records import NO_CHECKSUM, InodeMap, Records
from boxbox.backup.rules import Rules
from boxbox.backup.scan import KEEP_ALL_DEPTH, Change, Scanner, upload_due
from boxbox.errors import NotFound, ProgrammingError

_ids = itertools.count(100)


def sync(root: Path | bytes, previous: Records | None = None, rules: Rules | None = None,
         moves: bool = False, done: bool = True) -> tuple[Scanner, list[Change]]:
    """Act as the daemon: give every yielded directory a store id; with `moves`, move directories."""
    scanner = Scanner(root, rules, previous, racy_window=0)  # trees made a moment ago are not racy here
    changes = []
    for change in scanner:
        if not change.store_id:
            change.store_id = next(_ids)
        if moves and previous is not None:
            for e in change.entries:
                moved = previous.store_id_by_inode(e.st.st_ino) if stat.S_ISDIR(e.st.st_mode) else None
                if moved:
                    change.subdir_ids[e.name] = moved
        change.done = done
        changes.append(change)
    return scanner, changes


def paths(changes: list[Change]) -> list[bytes]:
    return [c.path for c in changes]


def make_tree(root: Path) -> None:
    for d in ("a/x", "a/y", "b", "c/d/e"):
        (root / d).mkdir(parents=True)
    for i, d in enumerate(("", "a", "a/x", "b", "c/d/e")):
        for j in range(3):
            (root / d / f"f{j}").write_bytes(b"x" * (i * 10 + j))


def test_first_scan_yields_every_directory_in_preorder(tmp_path: Path) -> None:
    make_tree(tmp_path)
    scanner, changes = sync(tmp_path)
    assert paths(changes) == [b"", b"a", b"a/x", b"a/y", b"b", b"c", b"c/d", b"c/d/e"]
    assert all(c.new for c in changes)
    assert scanner.files == 15 and scanner.directories == 8 and scanner.errors == []
    root = changes[0]
    assert sorted(e.name for e in root.entries) == [b"a", b"b", b"c", b"f0", b"f1", b"f2"]
    assert changes[1].parent_store_id == root.store_id
    recs = scanner.records
    assert [p for _, p in recs.paths()] == paths(changes)
    assert recs.find(b"c/d/e") == 7 and recs.find(b"c/nope") is None
    assert all(recs.get(i).checksum != NO_CHECKSUM for i in range(len(recs)))


def test_nothing_changed_yields_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first, _ = sync(tmp_path)
    again, changes = sync(tmp_path, first.records)
    assert changes == [] and again.changed == 0
    assert again.records == first.records


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: (r / "a/x/f1").write_bytes(b"changed!"), [b"a/x"]),
    (lambda r: os.chmod(r / "c/d/e/f0", 0o600), [b"c/d/e"]),
    (lambda r: os.utime(r / "b/f2", ns=(1, 1)), [b"b"]),
    (lambda r: (r / "c/d/e/new").write_bytes(b""), [b"c/d/e"]),
    (lambda r: os.unlink(r / "a/f0"), [b"a"]),
    (lambda r: os.rmdir(r / "a/y"), [b"a"]),
    (lambda r: os.chmod(r, 0o711), [b""]),
    (lambda r: (r / "c/d/new").mkdir(), [b"c/d", b"c/d/new"]),
])
def test_change_is_found_only_where_it_happened(tmp_path: Path, mutate: Callable[[Path], object],
                                                expected: list[bytes]) -> None:
    make_tree(tmp_path)
    first, _ = sync(tmp_path)
    mutate(tmp_path)
    _, changes = sync(tmp_path, first.records)
    assert paths(changes) == expected


def test_chmod_only_change_is_detected_even_with_same_mtime(tmp_path: Path) -> None:
    make_tree(tmp_path)
    f = tmp_path / "a/x/f2"
    before = f.stat()
    first, _ = sync(tmp_path)
    os.chmod(f, 0o604)
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    _, changes = sync(tmp_path, first.records)
    assert paths(changes) == [b"a/x"]
    assert {e.name: stat.S_IMODE(e.st.st_mode) for e in changes[0].entries}[b"f2"] == 0o604


def test_directory_not_done_is_yielded_again(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first, _ = sync(tmp_path)
    (tmp_path / "b/f0").write_bytes(b"new")
    second, changes = sync(tmp_path, first.records, done=False)
    assert paths(changes) == [b"b"]
    third, changes = sync(tmp_path, second.records)
    assert paths(changes) == [b"b"]
    assert changes[0].store_id == first.records.store_id(first.records.find(b"b"))  # kept, not re-created
    _, changes = sync(tmp_path, third.records)
    assert changes == []


def test_just_changed_directories_are_racy_and_looked_at_again(tmp_path: Path) -> None:
    make_tree(tmp_path)
    scanner = Scanner(tmp_path, fine_window=60)  # everything here changed within the window
    changes = []
    for c in scanner:
        c.store_id, c.done = next(_ids), True
        changes.append(c)
    assert changes and all(c.racy for c in changes)
    assert all(scanner.records.get(i).checksum == NO_CHECKSUM for i in range(len(scanner.records)))
    assert all(scanner.records.get(i).store_id for i in range(len(scanner.records)))
    later, changes = sync(tmp_path, scanner.records)  # as if the window had passed
    assert len(changes) == 8 and not any(c.racy or c.new for c in changes)
    _, changes = sync(tmp_path, later.records)
    assert changes == []


def test_store_ids_survive_and_new_ids_are_recorded(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first, changes = sync(tmp_path)
    ids = {c.path: c.store_id for c in changes}
    recs = first.records
    assert {p: recs.store_id(i) for i, p in recs.paths()} == ids


def test_rename_of_a_directory_is_a_move_found_by_inode(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "a/x/deep").mkdir()
    (tmp_path / "a/x/deep/file").write_bytes(b"d")
    first, _ = sync(tmp_path)
    old_id = first.records.store_id(first.records.find(b"a/x"))
    deep_id = first.records.store_id(first.records.find(b"a/x/deep"))
    os.rename(tmp_path / "a/x", tmp_path / "b/moved")
    second, changes = sync(tmp_path, first.records, moves=True)
    # the moved directory's own ctime changed, so it is listed once; nothing below it is
    assert paths(changes) == [b"a", b"b", b"b/moved"]
    assert changes[1].subdir_ids == {b"moved": old_id}
    recs = second.records
    assert recs.store_id(recs.find(b"b/moved")) == old_id
    assert recs.store_id(recs.find(b"b/moved/deep")) == deep_id
    assert recs.find(b"a/x") is None
    _, changes = sync(tmp_path, second.records, moves=True)
    assert changes == []


def test_rename_of_a_tracked_file_is_found_through_the_inode_map(tmp_path: Path) -> None:
    make_tree(tmp_path)
    big = tmp_path / "a/x/big"
    big.write_bytes(b"b" * 70000)
    inodes = InodeMap()  # the daemon tracks files above file_tracking_size_threshold
    first, changes = sync(tmp_path)
    entry = next(e for c in changes for e in c.entries if e.name == b"big")
    inodes.set(entry.st.st_ino, 4242)
    os.rename(big, tmp_path / "c/d/renamed")
    _, changes = sync(tmp_path, first.records)
    assert paths(changes) == [b"a/x", b"c/d"]
    found = [(c.path, e.name) for c in changes for e in c.entries if inodes.get(e.st.st_ino) == 4242]
    assert found == [(b"c/d", b"renamed")]


def test_rename_without_the_daemon_moving_it_is_a_new_directory(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first, _ = sync(tmp_path)
    os.rename(tmp_path / "c", tmp_path / "c2")
    _, changes = sync(tmp_path, first.records)
    assert paths(changes) == [b"", b"c2", b"c2/d", b"c2/d/e"]
    assert changes[1].new


def test_all_kinds_of_entries(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir/inside").write_bytes(b"i")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "sparse").write_bytes(b"")
    os.truncate(tmp_path / "sparse", 1 << 30)
    os.link(tmp_path / "empty", tmp_path / "hardlink")
    os.symlink("dir", tmp_path / "link-to-dir")
    os.symlink("/nonexistent/target", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    kinds = {"dir": stat.S_ISDIR, "empty": stat.S_ISREG, "sparse": stat.S_ISREG, "hardlink": stat.S_ISREG,
             "link-to-dir": stat.S_ISLNK, "dangling": stat.S_ISLNK, "fifo": stat.S_ISFIFO}
    if len(os.fsencode(tmp_path / "sock")) < 100:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(tmp_path / "sock"))
        kinds["sock"] = stat.S_ISSOCK
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        kinds["null"] = stat.S_ISCHR
    except PermissionError:
        pass
    scanner, changes = sync(tmp_path)
    entries = {e.name.decode(): e.st for e in changes[0].entries}
    assert set(entries) == set(kinds)
    for name, check in kinds.items():
        assert check(entries[name].st_mode), name
    assert entries["sparse"].st_size == 1 << 30
    assert entries["hardlink"].st_ino == entries["empty"].st_ino
    assert paths(changes) == [b"", b"dir"]  # the symlink to a directory is not followed
    assert scanner.files == len(kinds)  # every kind but the directory, plus dir/inside


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub/secret").write_bytes(b"s")
    loc = tmp_path / "loc"
    loc.mkdir()
    os.symlink(outside, loc / "escape")
    os.symlink(loc, loc / "loop")
    scanner, changes = sync(loc)
    assert paths(changes) == [b""] and scanner.files == 2
    assert len(scanner.records) == 1


def test_non_utf8_names(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.mkdir(root + b"/d\xff\xfe")
    with open(root + b"/d\xff\xfe/caf\xe9", "wb") as f:
        f.write(b"latin-1 name")
    with open(root + b"/\xe2\x82\xac", "wb") as f:
        f.write(b"utf-8 name")
    scanner, changes = sync(root)
    assert paths(changes) == [b"", b"d\xff\xfe"]
    assert sorted(e.name for e in changes[0].entries) == [b"d\xff\xfe", b"\xe2\x82\xac"]
    assert [e.name for e in changes[1].entries] == [b"caf\xe9"]
    assert scanner.records.find(b"d\xff\xfe") == 1
    _, again = sync(root, scanner.records)
    assert again == []


def test_paths_longer_than_path_max(tmp_path: Path) -> None:
    depth = KEEP_ALL_DEPTH + 40  # past the depth where only every 8th fd is kept
    name = "n" * 60
    fd = os.open(tmp_path, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        new = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = new
    os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    assert depth * (len(name) + 1) > 4096
    scanner, changes = sync(tmp_path)
    assert len(changes) == depth + 1 and scanner.files == 1 and scanner.errors == []
    assert [e.name for e in changes[-1].entries] == [b"leaf"]
    assert len(changes[-1].path) == depth * (len(name) + 1) - 1
    _, again = sync(tmp_path, scanner.records)
    assert again == []


def test_mount_points_are_not_crossed_real() -> None:
    inner = [d for d in ("pts", "shm", "mqueue") if os.path.isdir(f"/dev/{d}")
             and os.stat(f"/dev/{d}").st_dev != os.stat("/dev").st_dev]
    if not inner:
        pytest.skip("no filesystem mounted inside /dev here")
    scanner = Scanner("/dev")
    for _ in scanner:
        pass
    assert set(os.fsencode(d) for d in inner) <= set(scanner.mount_points)
    found = {p for _, p in scanner.records.paths()}
    assert not any(p == os.fsencode(d) or p.startswith(os.fsencode(d) + b"/") for d in inner for p in found)


def test_mount_point_is_an_entry_but_not_entered_fake_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    real_stat = os.stat

    def fake_stat(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        st = real_stat(path, *args, **kwargs)
        if path == "c":
            fields = list(st[:10])
            fields[2] += 1  # st_dev
            return os.stat_result(fields, {"st_mtime_ns": st.st_mtime_ns, "st_ctime_ns": st.st_ctime_ns})
        return st

    monkeypatch.setattr(os, "stat", fake_stat)
    scanner, changes = sync(tmp_path)
    assert scanner.mount_points == [b"c"]
    assert b"c" in [e.name for e in changes[0].entries]
    assert b"c" not in paths(changes) and scanner.records.find(b"c") is None


def test_vanishing_files_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda fd: real_listdir(fd) + ["ghost-file"])
    scanner, changes = sync(tmp_path)
    assert scanner.vanished == 8 and scanner.errors == [] and len(changes) == 8
    assert all(b"ghost-file" not in [e.name for e in c.entries] for c in changes)


def test_directory_vanishing_before_it_is_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path == "b":
            raise FileNotFoundError(errno.ENOENT, "gone")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    scanner, changes = sync(tmp_path)
    assert b"b" not in paths(changes) and scanner.vanished == 1 and scanner.errors == []


def test_directory_replaced_by_symlink_during_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    real_open = os.open

    def swap_then_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path == "a" and kwargs.get("dir_fd") is not None:
            os.rename(tmp_path / "a", tmp_path / "a-moved")
            os.symlink("/", tmp_path / "a")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    scanner, changes = sync(tmp_path)
    assert scanner.errors and scanner.errors[0].path == b"a" and "replaced" in scanner.errors[0].message
    assert b"a/x" not in paths(changes)


def test_unreadable_directory_is_reported_and_keeps_its_records(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    first, _ = sync(tmp_path)
    (tmp_path / "c/d/e/f0").write_bytes(b"changed but unreadable")
    real_open = os.open

    def deny(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path == "c":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    second, changes = sync(tmp_path, first.records)
    assert changes == [] and [(e.path, e.message) for e in second.errors] == [
        (b"c", "cannot open directory: Permission denied")]
    for p in (b"c", b"c/d", b"c/d/e"):  # the store is left alone: ids and checksums kept
        assert second.records.get(second.records.find(p)) == first.records.get(first.records.find(p))
    monkeypatch.undo()
    _, changes = sync(tmp_path, second.records)
    assert paths(changes) == [b"c/d/e"]


def test_unreadable_directories_for_real(tmp_path: Path) -> None:
    """chmod 000 and a directory without search permission, scanned as an unprivileged user."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        for d in ("ok", "closed/inner", "noexec"):
            (base / d).mkdir(parents=True)
        for f in ("ok/f", "closed/inner/f", "noexec/f"):
            (base / f).write_bytes(b"x")
        os.chmod(base / "closed", 0)
        os.chmod(base / "noexec", 0o644)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: scan as nobody when we are root, so permissions apply
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                s = Scanner(base)
                changed = sorted(c.path for c in s)
                os.write(write_end, repr((changed, s.files, [(e.path, e.message) for e in s.errors])).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            out = f.read().decode()
        os.waitpid(pid, 0)
        assert out == repr(([b"", b"ok"], 1, [(b"closed", "cannot open directory: Permission denied"),
                                              (b"noexec", "cannot read directory entries: Permission denied")]))
    finally:
        os.chmod(base / "closed", 0o755)
        os.chmod(base / "noexec", 0o755)
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_rules_leave_entries_out_and_excluded_dirs_unread(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "a/x/keep.tmp").write_bytes(b"k")
    (tmp_path / "a/x/drop.tmp").write_bytes(b"d")
    rules = Rules(tmp_path, exclude_dirs=["c"], exclude_files_regex=[r"\.tmp$"],
                  always_include_files=[str(tmp_path / "a/x/keep.tmp")])
    scanner, changes = sync(tmp_path, rules=rules)
    assert paths(changes) == [b"", b"a", b"a/x", b"a/y", b"b"]
    assert sorted(e.name for e in changes[2].entries) == [b"f0", b"f1", b"f2", b"keep.tmp"]
    assert scanner.excluded == 2
    (tmp_path / "a/x/drop.tmp").write_bytes(b"changes of excluded files go unnoticed")
    (tmp_path / "c/d/e/f0").write_bytes(b"so do changes inside excluded directories")
    _, again = sync(tmp_path, scanner.records, rules=rules)
    assert again == []


def test_keys_file_and_data_directory_are_excluded(tmp_path: Path) -> None:
    from boxbox.config import example, parse_text
    make_tree(tmp_path)
    (tmp_path / "b/state").mkdir()
    (tmp_path / "b/state/client.state").write_bytes(b"s")
    (tmp_path / "a/keys.dat").write_bytes(b"k" * 1024)
    text = example("client").replace("keys_file = keys.dat", f"keys_file = {tmp_path}/a/keys.dat")
    text = text.replace("data_directory = state", f"data_directory = {tmp_path}/b/state")
    text = text.replace("path = /home",
                        f"path = {tmp_path}\nalways_include_files_regex = .*\nalways_include_dirs_regex = .*")
    rules = Rules.from_config(parse_text(text, "client", "c.conf"), "home")
    scanner, changes = sync(tmp_path, rules=rules)
    names = {c.path: sorted(e.name for e in c.entries) for c in changes}
    assert b"keys.dat" not in names[b"a"] and b"state" not in names[b"b"]
    assert b"b/state" not in names and scanner.excluded == 2


def test_missing_location_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such directory"):
        list(Scanner(tmp_path / "nope"))


def test_progress_callback_and_early_stop_close_fds(tmp_path: Path) -> None:
    make_tree(tmp_path)
    for i in range(5000):
        (tmp_path / "b" / f"n{i}").write_bytes(b"")
    ticks: list[int] = []
    before = len(os.listdir("/proc/self/fd"))
    scanner = Scanner(tmp_path, on_progress=lambda: ticks.append(1))
    it = iter(scanner)
    for change in it:
        if change.path == b"b":
            break
    it.close()  # type: ignore[attr-defined]
    assert ticks and len(os.listdir("/proc/self/fd")) == before and not scanner.complete
    for stop_at in (b"", b"a", b"c/d"):  # directories whose fds are still open while yielded
        it = iter(Scanner(tmp_path))
        next(c for c in it if c.path == stop_at)
        it.close()  # type: ignore[attr-defined]
        assert len(os.listdir("/proc/self/fd")) == before, stop_at


def test_a_scanner_runs_once(tmp_path: Path) -> None:
    scanner, _ = sync(tmp_path)
    assert scanner.complete
    with pytest.raises(ProgrammingError):
        list(scanner)


@pytest.mark.parametrize("mtime, pending_since, due", [
    (1000 - 7 * 3600, None, True),  # old enough
    (1000 - 60, None, False),  # too young, first seen now
    (1000 - 60, 1000 - 25 * 3600, True),  # too young, but waiting longer than max_upload_wait
    (1000 - 60, 1000 - 3600, False),
    (1000 + 3 * 86400, None, True),  # clock far in the future: no point waiting
    (1000 + 3600, None, False),  # a little in the future: treated as young
])
def test_upload_due(mtime: float, pending_since: float | None, due: bool) -> None:
    assert upload_due(mtime, mtime, 1000.0, pending_since, minimum_file_age=6 * 3600, max_upload_wait=24 * 3600,
                      max_file_time_in_future=2 * 86400) is due


def test_upload_due_counts_ctime() -> None:
    assert not upload_due(0.0, 990.0, 1000.0, None, minimum_file_age=60, max_upload_wait=3600,
                          max_file_time_in_future=86400)


def test_forced_excludes_found_by_path_and_by_inode_without_other_rules(tmp_path: Path) -> None:
    """Without configured excludes the scan tests paths only where a forced exclude lives, and
    inodes everywhere: the keys file and the state directory are left out, and so is a hard link
    to the keys file in another directory."""
    root = tmp_path / "loc"
    (root / "etc").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "etc" / "keys.dat").write_bytes(b"k")
    (root / "etc" / "state").mkdir()
    (root / "etc" / "keep").write_bytes(b"x")
    (root / "etc" / "not-yet-made").mkdir()  # forced by path, created after the rules were built
    os.link(root / "etc" / "keys.dat", root / "other" / "keys-link")
    (root / "other" / "file").write_bytes(b"y")
    r = Rules(root, forced_excludes=[root / "etc" / "keys.dat", root / "etc" / "state", root / "etc" / "not-yet"])
    (root / "etc" / "not-yet").mkdir()
    scanner, changes = sync(root, rules=r)
    names = {(c.path, e.name) for c in changes for e in c.entries}
    assert (b"etc", b"keep") in names and (b"other", b"file") in names and (b"etc", b"not-yet-made") in names
    assert not {(b"etc", b"keys.dat"), (b"etc", b"state"), (b"etc", b"not-yet"), (b"other", b"keys-link")} & names
    assert scanner.excluded == 4


def test_entries_changed_seconds_ago_with_fine_timestamps_are_not_racy(tmp_path: Path) -> None:
    """On a filesystem with sub-second timestamps only changes within FINE_WINDOW of reading a directory
    are racy; whole-second timestamps (FAT, HFS+) keep the wide RACY_WINDOW."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    os.utime(tmp_path / "d" / "f", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    st = os.stat(tmp_path / "d" / "f")
    if not st.st_ctime_ns % 1_000_000_000:
        pytest.skip("this filesystem has whole-second timestamps")
    time.sleep(0.3)
    changes = list(Scanner(tmp_path, fine_window=0.1))
    assert changes and not any(c.racy for c in changes)
    os.utime(tmp_path / "d" / "f", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    time.sleep(0.3)
    changes = list(Scanner(tmp_path, fine_window=0.1))  # mtime in whole seconds: the wide window applies
    assert [c.path for c in changes if c.racy] == [b"d"]
