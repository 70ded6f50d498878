"""A hostile store swaps or replays objects on its discs: the restoring client notices and writes no wrong bytes.

Block flips, swaps and truncations inside one object are covered by
tests/property/test_objects_props.py; a damaged object named on restore by
tests/test_restore.py (test_damaged_object_is_named_and_the_rest_restored); hostile names by
test_hostile_store_names_never_write_outside and planted symlinks by
test_writer_never_follows_a_planted_symlink; cross-account ids by
tests/test_server.py::test_accounts_are_isolated. Here the store itself moves whole objects
between names, with every RAID stripe consistent, so only the client's checks stand between
the hostile store and the restored files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from boxbox.crypto.keys import load_keys
from boxbox.objects.directory import DELETED, OLD, Directory, open_entry
from boxbox.raidfile import DiscSet
from boxbox.store.account import object_key
from boxbox.store.raidstore import RaidObjectStore
from boxbox.wire import tls
from boxbox.wire.client import Client
from tests.conftest import boxbox_command, boxbox_env
from tests.fault.harness import Setup

pytestmark = pytest.mark.e2e


def _entries(s: Setup) -> dict[bytes, list[tuple[int, int]]]:
    """Clear name -> [(object id, flags)] in the location's top directory, every version."""
    keys = load_keys(s.conf.parent / "keys.dat")
    d = s.server.ca.client_dir(s.account)
    ctx = tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")
    out: dict[bytes, list[tuple[int, int]]] = {}
    with Client.connect("127.0.0.1", s.server.port, ctx, server_hostname="localhost", timeout=10) as c:
        c.login(read_only=True)
        root = Directory.parse(c.list_directory(1, flags_not_set=OLD | DELETED))
        loc = next(e.object_id for e in root.entries if open_entry(keys, 1, e)[0] == b"home")
        for e in Directory.parse(c.list_directory(loc)).entries:
            name, _ = open_entry(keys, loc, e)
            out.setdefault(name, []).append((e.object_id, e.flags))
    return out


def _serve(s: Setup, contents: dict[int, bytes]) -> None:
    """Make the store serve `contents` (object id -> stored bytes) in place of what it holds, each object
    rewritten whole and consistent (a RAID file of its own, shadowing any pack member), as a hostile store
    with the discs in hand would."""
    store = RaidObjectStore(DiscSet("0", s.server.discs))
    keys = [object_key(s.account, i) for i in contents]
    store.delete_all(keys)
    for key, data in zip(keys, contents.values()):
        put = store.put(key)
        put.write(data)
        put.commit()


def _stored(s: Setup, object_id: int) -> bytes:
    with RaidObjectStore(DiscSet("0", s.server.discs)).get(object_key(s.account, object_id)) as f:
        return f.read()


def _restore(s: Setup, out: Path) -> subprocess.CompletedProcess[str]:
    if out.exists():
        shutil.rmtree(out)
    return subprocess.run([*boxbox_command(), "query", "--config", str(s.conf), "--quiet", "restore", "/home",
                           str(out)], capture_output=True, text=True, env=boxbox_env(), timeout=120)


@pytest.fixture()
def setup(tmp_path: Path, test_ca: Any) -> Any:
    s = Setup(tmp_path, test_ca, files=0)
    (s.src / "alpha.txt").write_bytes(b"alpha " * 300)
    (s.src / "beta.txt").write_bytes(b"BETA! " * 300)
    s.finish()
    yield s
    s.server.stop()


def test_swapped_objects_are_detected(setup: Setup) -> None:
    s = setup
    ids = _entries(s)
    a, b = ids[b"alpha.txt"][0][0], ids[b"beta.txt"][0][0]
    _serve(s, {a: _stored(s, b), b: _stored(s, a)})
    r = _restore(s, s.tmp / "out")
    assert r.returncode != 0, "a restore of swapped objects reported success"
    assert "Traceback" not in r.stderr
    assert "alpha.txt" in r.stderr + r.stdout or "beta.txt" in r.stderr + r.stdout, r.stderr
    for name, want in ((b"alpha.txt", b"alpha "), (b"beta.txt", b"BETA! ")):
        p = s.tmp / "out" / os.fsdecode(name)
        assert not p.exists() or p.read_bytes() == want * 300, f"{name!r} restored with another file's bytes"


@pytest.mark.xfail(strict=True, reason="a store that serves an older version of the same file in place of the "
                   "current one is not detected: file objects are bound to directory and name, not to object id or "
                   "version, so restore silently returns the old content (rollback)")
def test_replayed_old_version_is_detected(setup: Setup) -> None:
    s = setup
    (s.src / "alpha.txt").write_bytes(b"ALPHA2 " * 100)  # small: stored whole, the first version kept as OLD
    s.finish()
    versions = _entries(s)[b"alpha.txt"]
    old = [i for i, f in versions if f & OLD]
    new = [i for i, f in versions if not f & (OLD | DELETED)]
    assert old and new, versions
    _serve(s, {new[0]: _stored(s, old[0])})
    r = _restore(s, s.tmp / "out")
    restored = (s.tmp / "out" / "alpha.txt")
    assert r.returncode != 0 or not restored.exists() or restored.read_bytes() == b"ALPHA2 " * 100, \
        "restore returned the replayed old version as current, with no error"
