"""Property: after any sequence of changes to a tree and a backup run, the store holds exactly the tree.

Runs in process (`BackupRun`) against a real `boxbox server` on 127.0.0.1; each example gets
its own location, and the client state is carried from run to run as the daemon would.
Operations: write (new or replace), append, delete, rename a file or directory (to a new
name anywhere), make or remove a directory, chmod, symlink, hard link; names include non-UTF-8 bytes.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from boxbox.backup import state as state_mod
from boxbox.backup.daemon import load_config
from boxbox.backup.run import BackupRun
from boxbox.crypto.keys import load_keys

from tests.clientutil import StoreServer, client_config, local_tree, store_tree

pytestmark = pytest.mark.e2e

NAMES = [b"a", b"b", b"caf\xe9", b"long-" + b"n" * 60, b"d1", b"d2"]
ops = st.lists(st.tuples(st.sampled_from(["write", "append", "delete", "rename", "mkdir", "rmtree", "chmod",
                                          "symlink", "link"]),
                         st.lists(st.sampled_from(NAMES), min_size=1, max_size=3),
                         st.lists(st.sampled_from(NAMES), min_size=1, max_size=3),
                         st.binary(max_size=20_000)), max_size=8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path_factory.mktemp("pserver"), test_ca)
    srv.start()
    yield srv
    srv.stop()


def _apply(root: bytes, op: str, src: list[bytes], dst: list[bytes], data: bytes) -> None:
    a = os.path.join(root, *src)
    b = os.path.join(root, *dst)
    try:
        if op == "write":
            with open(a, "wb") as f:
                f.write(data)
        elif op == "append":
            if os.path.isfile(a) and not os.path.islink(a):
                with open(a, "ab") as f:
                    f.write(data or b"+")
        elif op == "delete":
            if os.path.islink(a) or os.path.isfile(a):
                os.unlink(a)
        elif op == "rename":
            if os.path.lexists(a) and not os.path.lexists(b) and not (b + b"/").startswith(a + b"/"):
                os.rename(a, b)
        elif op == "mkdir":
            os.mkdir(a)
        elif op == "rmtree":
            if os.path.isdir(a) and not os.path.islink(a):
                shutil.rmtree(a)
        elif op == "chmod":
            if os.path.lexists(a) and not os.path.islink(a):
                os.chmod(a, 0o700 if len(data) % 2 else 0o644)
        elif op == "symlink":
            os.symlink(b"../" + dst[-1], a)
        elif op == "link":
            if os.path.isfile(a) and not os.path.islink(a):
                os.link(a, b)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError):
        pass  # the operation does not apply to this tree: skip it


_counter = itertools.count()


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batches=st.lists(ops, min_size=1, max_size=3))
def test_store_matches_tree_after_every_run(server: StoreServer, tmp_path: Path, batches: list[Any]) -> None:
    n = next(_counter)
    account = getattr(server, "_prop_account", None)
    if account is None:
        account = server._prop_account = server.new_account()  # type: ignore[attr-defined]
    tree = tmp_path / f"tree{n}"
    tree.mkdir()
    shared_keys = tmp_path / "keys.dat"  # one keys file: the account's root lists every example's location
    if not shared_keys.exists():
        from boxbox.crypto.keys import create_keys_file
        create_keys_file(shared_keys)
    conf = client_config(tmp_path, server, account, tree, name=f"c{n}", keys=shared_keys)
    text = conf.read_text().replace("[location home]", f"[location loc{n}]")
    conf.write_text(text)
    cfg = load_config(conf)
    keys_file = cfg["client"]["keys_file"]
    keys = load_keys(keys_file)
    data = cfg["client"]["data_directory"]
    data.mkdir()
    root = os.fsencode(tree)
    state = state_mod.ClientState()
    for batch in batches:
        for op in batch:
            _apply(root, *op)
        result = BackupRun(cfg, keys, state, cid=1).run()
        assert result.ok, result.error
        state = state_mod.load_or_rebuild(data / "state")
        stored = {p: (kind, content) for p, (kind, content, _) in store_tree(server, account, keys_file,
                                                                              f"loc{n}").items()}
        assert stored == local_tree(tree)
