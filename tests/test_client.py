"""End to end: a real `boxbox server` and real `boxbox client --once` runs on 127.0.0.1."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.clientutil import StoreServer, client_config, local_tree, run_once, store_tree

pytestmark = pytest.mark.e2e

A = 0xC1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path_factory.mktemp("cserver"), test_ca)
    srv.accounts("create", f"{A:x}", "--soft", "500M", "--hard", "600M")
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
