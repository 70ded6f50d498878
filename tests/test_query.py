"""End to end: real `boxbox server`, real `boxbox client --once` backups, `boxbox query` processes."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.objects.directory import DELETED, OLD, Directory

from tests.clientutil import ROOT_DIR, StoreServer, client_config, run_once
from tests.conftest import boxbox_command, boxbox_env, run_boxbox
from tests.test_restore_support import link_groups, make_linked_tree, snapshot

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path_factory.mktemp("qserver"), test_ca)
    srv.start()
    yield srv
    srv.stop()


def query(conf: Path, *args: str, exit_code: int = 0, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_boxbox("query", "--config", str(conf), *args, exit_code=exit_code, input=input)


def make_tree(root: Path) -> None:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"hello\n" * 1000)
    (root / "docs" / "deep" / "random.bin").write_bytes(os.urandom(600_000))
    (root / "empty").write_bytes(b"")
    (root / "name with spaces").write_bytes(b"spaces")
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    (root / "exec.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exec.sh", 0o755)
    os.symlink("docs/a.txt", root / "link")
    os.symlink("/nonexistent/abs", root / "abs-link")
    os.mkfifo(root / "fifo", 0o600)
    os.setxattr(root / "docs" / "a.txt", "user.tag", b"kept")
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "secret").write_bytes(b"s")
    os.chmod(root / "private" / "secret", 0o400)


@pytest.fixture()
def backed_up(server: StoreServer, tmp_path: Path) -> tuple[Path, Path]:
    """(client config, source tree) after one real backup."""
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    conf = client_config(tmp_path, server, server.new_account(), tree)
    run_once(conf)
    return conf, tree


def test_restore_of_a_real_backup_is_identical(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    conf, tree = backed_up
    out = tmp_path / "out"
    proc = query(conf, "restore", "/home", str(out))
    assert "restored 7 files" in proc.stdout and "0 errors" in proc.stdout
    assert snapshot(out) == snapshot(tree)
    assert os.getxattr(out / "docs" / "a.txt", "user.tag") == b"kept"
    assert query(conf, "compare", "-q", "/home", str(tree)).returncode == 0
    assert query(conf, "compare", "/home", str(out)).returncode == 0  # full: downloads and compares
    proc = query(conf, "--quiet", "restore", "/home", str(out), exit_code=2)
    assert "already exists" in proc.stderr


def test_one_shot_commands(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    conf, tree = backed_up
    assert query(conf, "ls").stdout == "home/\n"
    listing = query(conf, "ls", "/home").stdout.splitlines()
    assert "docs/" in listing and "name with spaces" in listing and "caf\\xe9" in listing
    long = query(conf, "ls", "-l", "-R", "/home").stdout
    assert "docs/deep/random.bin" in long and " f-- " in long
    os.chdir(tmp_path)
    query(conf, "get", "/home/name with spaces")
    assert (tmp_path / "name with spaces").read_bytes() == b"spaces"
    query(conf, "get", "/home/caf\\xe9", "latin")
    assert (tmp_path / "latin").read_bytes() == b"latin-1 name"
    proc = query(conf, "get", "/home/missing", exit_code=1)
    assert "not found" in proc.stderr
    usage = json.loads(query(conf, "usage", "--json").stdout)
    assert usage["blocks_used"] > 0 and usage["blocks_hard_limit"] > usage["blocks_soft_limit"]
    assert "hard limit" in query(conf, "usage").stdout
    proc = query(conf, "delete", "/home/empty", exit_code=1)
    assert "read-only" in proc.stderr and "-w" in proc.stderr
    assert "ls" in query(conf, "help").stdout and "--resume" in query(conf, "help", "restore").stdout
    query(conf, "frobnicate", exit_code=2)


def test_old_versions_deleted_files_and_compare_exit_codes(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    conf, tree = backed_up
    first = (tree / "docs" / "a.txt").read_bytes()
    assert query(conf, "compare", "-a", "-q").returncode == 0
    (tree / "docs" / "a.txt").write_bytes(b"second version\n")
    assert query(conf, "compare", "-l", "home", "-q", exit_code=1).stdout.count("differs:") >= 1
    gone = (tree / "docs" / "deep" / "random.bin").read_bytes()
    os.unlink(tree / "docs" / "deep" / "random.bin")
    run_once(conf)
    versions = query(conf, "versions", "/home/docs/a.txt").stdout.splitlines()
    assert len(versions) == 2 and " f-o " in versions[1] and " f-- " in versions[0]
    assert versions[0].split()[4:] == ["15", "a.txt"] and versions[1].split()[4:] == [str(len(first)), "a.txt"]
    old_id = versions[1].split()[0]
    os.chdir(tmp_path)
    script = f"cd /home/docs\nget -i {old_id} {tmp_path / 'old.txt'}\n"
    query(conf, input=script)
    assert (tmp_path / "old.txt").read_bytes() == first
    out = tmp_path / "with-deleted"
    query(conf, "restore", "-d", "/home", str(out))
    assert (out / "docs" / "deep" / "random.bin").read_bytes() == gone
    assert (out / "docs" / "a.txt").read_bytes() == b"second version\n"
    assert not (tmp_path / "plain").exists()
    query(conf, "restore", "/home", str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "docs" / "deep" / "random.bin").exists()
    assert "random.bin" in query(conf, "ls", "-d", "-l", "/home/docs/deep").stdout
    query(conf, "-w", "undelete", "/home/docs/deep/random.bin")
    assert query(conf, "ls", "/home/docs/deep").stdout == "random.bin\n"
    query(conf, "-w", "delete", "/home/docs/deep/random.bin")
    assert query(conf, "ls", "/home/docs/deep").stdout == ""
    assert query(conf, "compare", "-a").returncode == 0  # the store matches the tree again
    (tree / "exec.sh").write_bytes(b"#!/bin/sh\nexit 1\n")
    assert "exec.sh: contents differ" in query(conf, "compare", "-a", exit_code=1).stdout
    proc = query(conf, "compare", "/home", str(tmp_path / "no-such-dir"), exit_code=2)
    assert "not a local directory" in proc.stderr


def test_point_in_time_after_five_backups(server: StoreServer, tmp_path: Path) -> None:
    """Each of five moments restores exactly.

    The store records no times of its own (docs/RESTORE.md, "Point in time"): versions are
    chosen by mtime, a deletion is dated by its directory's mtime and an empty directory
    by its own, so the changes here keep each directory's deletions after its other name
    changes and start no directory empty.
    """
    tree = tmp_path / "tree"
    (tree / "stable").mkdir(parents=True)
    (tree / "stable" / "keep").write_bytes(b"kept all along")
    (tree / "edits").mkdir()
    (tree / "edits" / "log").write_bytes(b"v0\n")
    (tree / "adds").mkdir()
    (tree / "adds" / "first").write_bytes(b"an empty directory is dated by its mtime")
    (tree / "dels").mkdir()
    for i in range(4):
        (tree / "dels" / f"d{i}").write_bytes(f"doomed {i}".encode())
    conf = client_config(tmp_path, server, server.new_account(), tree)
    moments: list[tuple[int, dict[str, Any]]] = []
    for step in range(5):
        if step:
            (tree / "edits" / "log").write_bytes(f"v{step}\n".encode() * step)
            (tree / "adds" / f"new{step}").write_bytes(f"added in {step}".encode())
            if step == 3:
                (tree / "later").mkdir()
                (tree / "later" / "x").write_bytes(b"a new directory")
            if step == 4:
                os.unlink(tree / "dels" / "d0")
                os.unlink(tree / "dels" / "d1")
        run_once(conf)
        time.sleep(0.02)
        moments.append((time.time_ns(), snapshot(tree)))
        time.sleep(0.02)
    for at, expected in moments:
        out = tmp_path / f"at-{at}"
        query(conf, "--quiet", "restore", "--at", f"@{at / 1e9:.6f}", "/home", str(out))
        got = snapshot(out)
        for rel in ("", "adds", "dels", "later", "edits", "stable"):  # directory mtimes move with later changes
            for view in (got, expected):
                if rel in view:
                    view[rel] = view[rel][:2] + view[rel][3:]
        assert got == expected, at
    listing = query(conf, "ls", "--at", f"@{moments[1][0] / 1e9:.6f}", "/home/adds").stdout
    assert listing == "first\nnew1\n"


def test_resume_after_kill(server: StoreServer, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for d in range(4):
        (tree / f"d{d}").mkdir()
        for i in range(60):
            (tree / f"d{d}" / f"f{i}").write_bytes(os.urandom(40_000))
    conf = client_config(tmp_path, server, server.new_account(), tree)
    run_once(conf)
    out = tmp_path / "out"
    proc = subprocess.Popen([*boxbox_command(), "query", "--config", str(conf), "restore", "/home", str(out)],
                            env=boxbox_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = sum(len(files) for _, _, files in os.walk(out)) if out.exists() else 0
        if done >= 40:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    finished = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".boxbox-restore")]
    if len(finished) >= 240:
        pytest.skip("the restore finished before it could be killed")
    resumed = query(conf, "restore", "--resume", "/home", str(out)).stdout
    assert f"restored {240 - len(finished)} files" in resumed
    assert f"{len(finished)} files already restored" in resumed
    assert snapshot(out) == snapshot(tree)


def _sealed_attributes(server: StoreServer, account: int) -> dict[int, bytes]:
    """Object id -> sealed attributes of each current entry of /home (re-sealed on any attribute upload)."""
    with server.connect(account) as c:
        root = Directory.parse(c.list_directory(ROOT_DIR, flags_not_set=OLD | DELETED))
        home = root.entries[0].object_id
        d = Directory.parse(c.list_directory(home, flags_not_set=OLD | DELETED))
        return {e.object_id: e.sealed_attributes for e in d.entries}


def test_hard_links_from_a_real_backup(server: StoreServer, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_linked_tree(tree)
    account = server.new_account()
    conf = client_config(tmp_path, server, account, tree)
    run_once(conf)
    proc = query(conf, "restore", "/home", str(tmp_path / "out"))
    assert "restored 6 files" in proc.stdout and "0 errors" in proc.stdout
    assert "5 names made as hard links" in proc.stdout
    assert snapshot(tmp_path / "out") == snapshot(tree)
    assert link_groups(tmp_path / "out") == link_groups(tree) and len(link_groups(tree)) == 4
    # the link id is as stable as the inode: a group growing or shrinking re-sends no attributes,
    # and neither does a backup that re-reads the directory for another change
    before = _sealed_attributes(server, account)
    os.link(tree / "b", tree / "b3")
    os.unlink(tree / "d2" / "a3")
    (tree / "new").write_bytes(b"makes the client sync /home")
    run_once(conf)
    after = _sealed_attributes(server, account)
    assert len(after) == len(before) + 2 and all(after[k] == v for k, v in before.items())
    for args in ((), ("--at", f"@{time.time():.6f}")):
        out = tmp_path / f"out{len(args)}"
        query(conf, "--quiet", "restore", *args, "/home", str(out))
        assert link_groups(out) == link_groups(tree) and snapshot(out) == snapshot(tree)


def _read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_interactive_shell_on_a_terminal(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    conf, tree = backed_up
    env = boxbox_env()
    env["HOME"] = str(tmp_path)
    env["TERM"] = "dumb"
    pid, fd = pty.fork()
    if pid == 0:  # child: the shell on the pty
        os.chdir(tmp_path)
        os.execvpe(boxbox_command()[0], [*boxbox_command(), "query", "--config", str(conf)], env)
    try:
        _read_until(fd, b"boxbox:/> ")
        os.write(fd, b"cd /home/do\t")  # completion of a remote name
        _read_until(fd, b"docs/")
        os.write(fd, b"\n")
        _read_until(fd, b"boxbox:/home/docs> ")
        os.write(fd, b"ls\n")
        out = _read_until(fd, b"boxbox:/home/docs> ")
        assert b"a.txt" in out and b"deep/" in out
        os.write(fd, b"get a.\t")
        _read_until(fd, b"a.txt")
        os.write(fd, b" copy.txt\n")
        _read_until(fd, b"boxbox:/home/docs> ")
        assert (tmp_path / "copy.txt").read_bytes() == (tree / "docs" / "a.txt").read_bytes()
        os.write(fd, b"pwd\n")
        assert b"/home/docs" in _read_until(fd, b"boxbox:/home/docs> ")
        os.write(fd, b"restore /home 'restored tree'\n")
        out = _read_until(fd, b"boxbox:/home/docs> ")
        assert b"restored 7 files" in out and b"0 errors" in out
        assert snapshot(tmp_path / "restored tree") == snapshot(tree)
        os.write(fd, b"compare -q /home 'restored tree'\n")
        assert b"0 differences, 0 errors" in _read_until(fd, b"boxbox:/home/docs> ")
        os.write(fd, b"quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert b"cd /home/docs/" in (tmp_path / ".boxbox_query_history").read_bytes()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_script_on_stdin_runs_line_by_line(backed_up: tuple[Path, Path]) -> None:
    conf, _ = backed_up
    proc = query(conf, input="cd /home\npwd\n# a comment\nls docs\ncd nowhere\npwd\n", exit_code=1)
    assert proc.stdout.splitlines() == ["/home", "a.txt", "deep/", "/home"]
    assert "no directory 'nowhere'" in proc.stderr


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    proc = run_boxbox("query", "--config", str(tmp_path / "missing.conf"), "ls", exit_code=1)
    assert "config file not found" in proc.stderr
