"""End to end: a real `boxbox server` and real `boxbox client --once` runs on 127.0.0.1."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.clientutil import StoreServer, client_config, local_tree, run_once, store_tree

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path_factory.mktemp("cserver"), test_ca)
    srv.start()
    yield srv
    srv.stop()


def _bytes_sent(proc_stderr: str) -> int:
    found = re.findall(r"(\d+) bytes sent", proc_stderr)
    assert found, proc_stderr
    return int(found[-1])


def _compare(server: StoreServer, account: int, keys: Path, tree: Path) -> None:
    stored = {p: (kind, data) for p, (kind, data, _) in store_tree(server, account, keys).items()}
    assert stored == local_tree(tree)


def test_snapshot_end_to_end(server: StoreServer, tmp_path: Path) -> None:
    A = server.new_account()
    tree = tmp_path / "tree"
    (tree / "docs" / "deep").mkdir(parents=True)
    (tree / "docs" / "a.txt").write_bytes(b"hello\n" * 100)
    (tree / "docs" / "deep" / "b.bin").write_bytes(os.urandom(300_000))
    (tree / "empty").write_bytes(b"")
    big = os.urandom(2_000_000)
    (tree / "big.bin").write_bytes(big)
    conf = client_config(tmp_path, server, A, tree)
    keys = tmp_path / "client" / "keys.dat"
    run_once(conf)
    _compare(server, A, keys, tree)

    # mutate: edit, append, insert at start of a big file, truncate, delete, rename a dir, add,
    # chmod only, symlink, hard link, non-UTF-8 name
    (tree / "docs" / "a.txt").write_bytes(b"changed\n")
    with open(tree / "docs" / "deep" / "b.bin", "ab") as f:
        f.write(b"appended")
    (tree / "big.bin").write_bytes(b"inserted at the start" + big)
    (tree / "empty").write_bytes(b"")
    os.rename(tree / "docs", tree / "documents")
    (tree / "new.txt").write_bytes(b"new file")
    os.chmod(tree / "new.txt", 0o600)
    os.symlink("documents", tree / "link")
    os.link(tree / "new.txt", tree / "hardlink.txt")
    (tree / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    run_once(conf)
    _compare(server, A, keys, tree)


def _stats(proc_stderr: str) -> dict[str, int]:
    m = re.search(r"(\d+) files uploaded \((\d+) as diffs\), (\d+) moved, (\d+) deleted, (\d+) bytes sent",
                  proc_stderr)
    assert m, proc_stderr
    return dict(zip(("uploaded", "diffs", "moved", "deleted", "sent"), map(int, m.groups())))


def test_renames_are_moves_and_chmod_sends_attributes(server: StoreServer, tmp_path: Path) -> None:
    A = server.new_account()
    tree = tmp_path / "tree"
    (tree / "dir" / "sub").mkdir(parents=True)
    (tree / "dir" / "sub" / "data.bin").write_bytes(os.urandom(400_000))
    (tree / "file.bin").write_bytes(os.urandom(300_000))
    (tree / "small").write_bytes(b"x")
    conf = client_config(tmp_path, server, A, tree)
    keys = tmp_path / "client" / "keys.dat"
    first = _stats(run_once(conf).stderr)
    assert first["uploaded"] == 3 and first["sent"] > 700_000

    os.rename(tree / "dir", tree / "renamed-dir")
    os.rename(tree / "file.bin", tree / "renamed-dir" / "moved.bin")
    second = _stats(run_once(conf).stderr)
    assert second["uploaded"] == 0 and second["moved"] == 2, second
    assert second["sent"] < 50_000, second
    _compare(server, A, keys, tree)

    os.chmod(tree / "small", 0o640)
    third = run_once(conf).stderr
    assert _stats(third)["uploaded"] == 0 and _stats(third)["sent"] < 20_000
    stored = store_tree(server, A, keys)
    assert stored[b"small"][2].mode == 0o640


def test_nothing_changed_does_not_connect(server: StoreServer, tmp_path: Path) -> None:
    A = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"data")
    conf = client_config(tmp_path, server, A, tree)
    time.sleep(2.1)  # older than the scanner's racy window, so the first run records the tree as in sync
    run_once(conf)
    before = server.sessions()
    out = run_once(conf).stderr
    assert "nothing changed" in out
    assert server.sessions() == before


def test_nothing_changed_loads_no_upload_stack(server: StoreServer, tmp_path: Path) -> None:
    """A run that finds nothing changed stays light: no TLS, no `cryptography`, no wire or object code, and
    neither the keys nor `hashlib` (which loads OpenSSL's libcrypto) nor `dataclasses` (inspect, ast, dis) nor
    `tempfile` (shutil, random, bz2, lzma)."""
    import subprocess
    import sys

    A = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"data")
    conf = client_config(tmp_path, server, A, tree)
    time.sleep(2.1)  # older than the scanner's racy window
    run_once(conf)
    code = ("import sys\nbefore = set(sys.modules)\nfrom boxbox.__main__ import main\n"
            "rc = main(['client', '--config', sys.argv[1], '--once'])\n"
            "print(rc, sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
            "('cryptography', 'ssl', '_ssl', 'hashlib', '_hashlib', 'hmac', 'dataclasses', 'inspect', 'tempfile') or "
            "m.startswith(('boxbox.wire', 'boxbox.objects', 'boxbox.rolling', 'boxbox.crypto', "
            "'boxbox.backup.uploader'))))")
    out = subprocess.run([sys.executable, "-c", code, str(conf)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    assert "nothing changed" in out.stderr, out.stderr
    assert out.stdout.split() == ["0", "[]"], out.stdout


def test_changed_big_file_is_sent_as_a_diff(server: StoreServer, tmp_path: Path) -> None:
    A = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    data = os.urandom(4 << 20)
    (tree / "big.bin").write_bytes(data)
    conf = client_config(tmp_path, server, A, tree)
    keys = tmp_path / "client" / "keys.dat"
    run_once(conf)
    (tree / "big.bin").write_bytes(b"inserted at the start" + data[:1 << 20] + b"in the middle" + data[1 << 20:])
    stats = _stats(run_once(conf).stderr)
    assert stats["uploaded"] == 1 and stats["diffs"] == 1, stats
    assert stats["sent"] < 200_000, stats  # a few changed blocks, not 4 MiB
    assert store_tree(server, A, keys)[b"big.bin"][1] == (tree / "big.bin").read_bytes()


def test_small_edit_of_a_1mib_file_sends_one_block_and_a_compact_index(server: StoreServer, tmp_path: Path) -> None:
    """16 bytes rewritten in 1 MiB of random data: one 8 KiB block of new data, references and the new
    index (62 bytes a block) - ~19 kB; 4 KiB blocks with 80-byte anchor records sent ~40 kB."""
    A = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    data = bytearray(os.urandom(1 << 20))
    (tree / "f.bin").write_bytes(data)
    conf = client_config(tmp_path, server, A, tree)
    keys = tmp_path / "client" / "keys.dat"
    run_once(conf)
    data[500_000:500_016] = os.urandom(16)
    (tree / "f.bin").write_bytes(data)
    stats = _stats(run_once(conf).stderr)
    assert stats["uploaded"] == 1 and stats["diffs"] == 1, stats
    assert stats["sent"] < 25_000, stats
    assert store_tree(server, A, keys)[b"f.bin"][1] == bytes(data)


def test_every_kind_of_entry(server: StoreServer, tmp_path: Path) -> None:
    A = server.new_account()
    tree = tmp_path / "tree"
    (tree / "target-dir").mkdir(parents=True)
    os.mkfifo(tree / "fifo")
    with open(tree / "sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"island")
    (tree / "future").write_bytes(b"from the future")
    future = time.time() + 10 * 86400
    os.utime(tree / "future", (future, future))
    os.symlink("target-dir", tree / "link")
    os.symlink("/nonexistent/dangling", tree / "dangling")
    (tree / "x").write_bytes(b"xattr holder")
    try:
        os.setxattr(tree / "x", b"user.boxbox", b"value")
        have_xattr = True
    except OSError:
        have_xattr = False
    # a path longer than PATH_MAX
    fd = os.open(tree, os.O_RDONLY)
    for _ in range(24):
        os.mkdir("d" * 200, dir_fd=fd)
        nfd = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    wfd = os.open("deep.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
    os.write(wfd, b"deep down")
    os.close(wfd)
    os.close(fd)
    conf = client_config(tmp_path, server, A, tree)
    keys = tmp_path / "client" / "keys.dat"
    run_once(conf)
    stored = store_tree(server, A, keys)
    assert stored[b"fifo"][2].file_type.name == "FIFO"
    assert stored[b"sparse"][1] == (tree / "sparse").read_bytes()
    assert stored[b"future"][1] == b"from the future"
    assert stored[b"future"][2].mtime_ns == os.lstat(tree / "future").st_mtime_ns
    assert stored[b"link"][2].symlink_target == b"target-dir"
    assert stored[b"dangling"][2].symlink_target == b"/nonexistent/dangling"
    deep = b"/".join([b"d" * 200] * 24) + b"/deep.txt"
    assert len(deep) > 4096 and stored[deep][1] == b"deep down"
    if have_xattr:
        assert (b"user.boxbox", b"value") in stored[b"x"][2].xattrs

    # symlink to a directory and back
    os.unlink(tree / "link")
    os.rename(tree / "target-dir", tree / "link")
    run_once(conf)
    stored = store_tree(server, A, keys)
    assert stored[b"link"][0] == "dir" and b"target-dir" not in stored
    os.rename(tree / "link", tree / "target-dir")
    os.symlink("target-dir", tree / "link")
    run_once(conf)
    stored = store_tree(server, A, keys)
    assert stored[b"link"][0] == "file" and stored[b"link"][2].symlink_target == b"target-dir"
    assert stored[b"target-dir"][0] == "dir"


def test_location_removed_from_config_is_deleted_after_the_delay(server: StoreServer, tmp_path: Path) -> None:
    A = server.new_account()
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    other.mkdir()
    (home / "a").write_bytes(b"a")
    (other / "b").write_bytes(b"b")
    both = f"\n[location other]\npath = {other}\n"
    conf = client_config(tmp_path, server, A, home, location_extra=both)
    keys = tmp_path / "client" / "keys.dat"
    run_once(conf)
    assert store_tree(server, A, keys, "other")[b"b"][1] == b"b"
    conf = client_config(tmp_path, server, A, home, extra="delete_redundant_locations_after = 1s\n")
    (home / "c").write_bytes(b"c")  # something to do, so the run connects
    assert "deleted from the store in" in run_once(conf).stderr
    assert store_tree(server, A, keys, "other")  # not yet
    time.sleep(1.1)
    (home / "d").write_bytes(b"d")
    assert "no longer configured: deleted from the store" in run_once(conf).stderr
    assert store_tree(server, A, keys, "other") == {}


def test_lost_or_corrupt_state_is_rebuilt_from_the_store(server: StoreServer, tmp_path: Path) -> None:
    A = server.new_account()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(os.urandom(50_000))
    (tree / "g").write_bytes(b"g")
    conf = client_config(tmp_path, server, A, tree)
    keys = tmp_path / "client" / "keys.dat"
    run_once(conf)
    state = tmp_path / "client" / "data" / "state"
    state.write_bytes(state.read_bytes()[:-3])  # truncated
    out = run_once(conf).stderr
    assert "discarding the client state" in out
    stats = _stats(out)
    assert stats["uploaded"] == 0 and stats["deleted"] == 0 and stats["sent"] < 20_000, stats
    state.unlink()
    (tree / "h").write_bytes(b"new")
    stats = _stats(run_once(conf).stderr)
    assert stats["uploaded"] == 1 and stats["deleted"] == 0, stats
    _compare(server, A, keys, tree)
