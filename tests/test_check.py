"""`accounts check`: every damage case found without changing anything, fixed by --fix, clean after,
and everything still recoverable restores."""

from __future__ import annotations

import hashlib
import io
import json
import os
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from boxbox.objects.directory import DIR, FILE, Directory, Entry
from boxbox.objects.file import decode_file
from boxbox.store.account import ROOT_DIRECTORY_ID, Store, info_key, object_key
from boxbox.store.check import LOST_FOUND_NAME, check_account
from boxbox.store.housekeep import housekeep

from tests.conftest import run_boxbox
from tests.serverutil import make_store, upload, upload_diff
from tests.test_store_support import make_keys, sealed_dir_name, session_client

A = 0x4D
KEYS = make_keys()


class Tree:
    """A small account: root/{top, docs/{a (2 versions), b, deep/{c}}}; what each object holds."""

    def __init__(self, store: Store) -> None:
        c, t = session_client(store, A)
        c.login()
        rng = __import__("random").Random(5)
        self.docs = c.create_directory(1, sealed_dir_name(KEYS, 1, b"docs"))
        self.deep = c.create_directory(self.docs, sealed_dir_name(KEYS, self.docs, b"deep"))
        self.data: dict[int, bytes] = {}
        a1 = rng.randbytes(60_000)
        a2 = a1[:30_000] + b"edit" + a1[30_000:]
        self.top = self._put(c, upload, 1, b"top", rng.randbytes(9000))
        self.a1 = self._put(c, upload, self.docs, b"a", a1)
        self.a2 = self._put(c, upload_diff, self.docs, b"a", a2, self.a1)
        self.b = self._put(c, upload, self.docs, b"b", rng.randbytes(20_000))
        self.c = self._put(c, upload, self.deep, b"c", rng.randbytes(5000))
        c.finish()
        t.join(5)

    def _put(self, c: Any, how: Callable[..., int], dir_id: int, name: bytes, data: bytes, base: int = 0) -> int:
        obj = how(c, KEYS, dir_id, name, base, data) if base else how(c, KEYS, dir_id, name, data)
        self.data[obj] = data
        return obj


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Store, Tree, Path]:
    store = make_store(tmp_path, (A, 100_000, 200_000))
    tree = Tree(store)
    housekeep(store, A)  # leaves a housekeeping state (the info file's limits survive its loss)
    return store, tree, tmp_path


def disc_snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for i in range(3) for p in (root / f"d{i}").rglob("*") if p.is_file()}


def restorable(store: Store) -> list[bytes]:
    """Every file version reachable from the root, decoded and verified by the client."""
    c, t = session_client(store, A)
    c.login(read_only=True)
    out = []
    stack = [ROOT_DIRECTORY_ID]
    while stack:
        dir_id = stack.pop()
        for e in Directory.parse(c.list_directory(dir_id)).entries:
            if e.flags & DIR:
                stack.append(e.object_id)
                continue
            sink = io.BytesIO()
            decode_file(KEYS, io.BytesIO(c.get_file(dir_id, e.object_id).read()), sink)
            out.append(sink.getvalue())
    c.finish()
    t.join(5)
    return sorted(out)


def rewrite(store: Store, object_id: int, data: bytes) -> None:
    put = store.backend(A).put(object_key(A, object_id))
    put.write(data)
    put.commit()


def directory(store: Store, object_id: int) -> Directory:
    with store.backend(A).get(object_key(A, object_id)) as f:
        return Directory.parse(f.read())


def stripe_files(root: Path, disc: int) -> list[Path]:
    return sorted((root / f"d{disc}" / "backup" / f"{A:08x}" / "o").rglob("*.rf"))


def _delete_stripes(store: Store, tree: Tree, root: Path) -> None:
    for p in stripe_files(root, 1):
        p.unlink()


def _flip_bytes(store: Store, tree: Tree, root: Path) -> None:
    """One stripe of every object damaged, on a different disc for each object."""
    for k, first in enumerate(stripe_files(root, 0)):
        f = root / f"d{k % 3}" / first.relative_to(root / "d0")
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x5A
        f.write_bytes(bytes(data))


def _flip_roles(root: Path, roles: set[int]) -> int:
    """Flip a byte in the middle of every stripe file of the given roles (one per object at most)."""
    from boxbox.raidfile.layout import HEADER, parse_header

    flipped = 0
    for first in stripe_files(root, 0):
        for disc in range(3):
            f = root / f"d{disc}" / first.relative_to(root / "d0")
            data = bytearray(f.read_bytes())
            if parse_header(bytes(data[:HEADER.size])).role in roles and len(data) > 2 * HEADER.size:
                data[HEADER.size + (len(data) - HEADER.size) // 2] ^= 0x5A
                f.write_bytes(bytes(data))
                flipped += 1
                break
    return flipped


def _flip_data_bytes(store: Store, tree: Tree, root: Path) -> None:
    assert _flip_roles(root, {0, 1}) > 5


def _orphan_subtree(store: Store, tree: Tree, root: Path) -> None:
    d = directory(store, ROOT_DIRECTORY_ID)
    d.entries = [e for e in d.entries if e.object_id != tree.docs]
    rewrite(store, ROOT_DIRECTORY_ID, d.serialize())


def _twice(store: Store, tree: Tree, root: Path) -> None:
    deep = directory(store, tree.deep)
    deep.entries.append(Entry(tree.b, FILE, sealed_dir_name(KEYS, tree.deep, b"b2"), 0, 5))
    rewrite(store, tree.deep, deep.serialize())


def _container(store: Store, tree: Tree, root: Path) -> None:
    deep = directory(store, tree.deep)
    deep.container_id = tree.deep + 1000
    rewrite(store, tree.deep, deep.serialize())


DAMAGE: dict[str, tuple[Callable[[Store, Tree, Path], None], Callable[[Tree], set[int]]]] = {
    "delete the info file": (lambda s, t, r: s.backend(A).delete(info_key(A)), lambda t: set()),
    "delete a directory object": (lambda s, t, r: s.backend(A).delete(object_key(A, t.deep)), lambda t: set()),
    "delete a file object": (lambda s, t, r: s.backend(A).delete(object_key(A, t.b)), lambda t: {t.b}),
    "delete the newest version of a chain": (lambda s, t, r: s.backend(A).delete(object_key(A, t.a2)),
                                             lambda t: {t.a1, t.a2}),
    "corrupt a directory": (lambda s, t, r: rewrite(s, t.docs, b"BXDO" + os.urandom(100)), lambda t: set()),
    "change a container id": (_container, lambda t: set()),
    "reference one object from two directories": (_twice, lambda t: set()),
    "orphan a subtree": (_orphan_subtree, lambda t: set()),
    "replace the root with garbage": (lambda s, t, r: rewrite(s, ROOT_DIRECTORY_ID, os.urandom(300)),
                                      lambda t: set()),
    "delete one RAID stripe of many objects": (_delete_stripes, lambda t: set()),
    "flip bytes in data stripes": (_flip_data_bytes, lambda t: set()),
    "flip bytes in stripes, parity included (scrub)": (_flip_bytes, lambda t: set()),
}
#: Cases found only by verifying every stripe (a read never needs a good object's parity).
SCRUB_CASES = {"flip bytes in stripes, parity included (scrub)"}


def test_clean_account_checks_clean(setup: tuple[Store, Tree, Path]) -> None:
    store, tree, _ = setup
    report = check_account(store, A)
    assert report.errors == 0, [str(p) for p in report.problems]
    assert (report.directories, report.files) == (3, 5)
    assert report.counts["blocks_used"] == store.read_info(A).blocks_used


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damage_found_fixed_and_clean_after(setup: tuple[Store, Tree, Path], case: str) -> None:
    store, tree, root = setup
    damage, lost = DAMAGE[case]
    damage(store, tree, root)
    scrub = case in SCRUB_CASES
    before = disc_snapshot(root)
    found = check_account(store, A, scrub=scrub)
    assert found.errors > 0 and found.remaining == found.errors
    assert disc_snapshot(root) == before, "check without --fix changed something"
    fixed = check_account(store, A, fix=True, scrub=scrub)
    assert fixed.errors == found.errors and fixed.remaining == 0, [str(p) for p in fixed.problems]
    again = check_account(store, A, scrub=True)  # every stripe of every object
    assert again.errors == 0, [str(p) for p in again.problems]
    expected = sorted(data for obj, data in tree.data.items() if obj not in lost(tree))
    assert restorable(store) == expected
    info = store.read_info(A)
    assert info.blocks_used == again.counts["blocks_used"]
    assert (info.soft_limit, info.hard_limit) == (100_000, 200_000)


def test_orphans_land_in_lost_and_found(setup: tuple[Store, Tree, Path]) -> None:
    store, tree, root = setup
    _orphan_subtree(store, tree, root)
    check_account(store, A, fix=True)
    names = {e.sealed_name: e for e in directory(store, ROOT_DIRECTORY_ID).entries}
    lost = directory(store, names[LOST_FOUND_NAME].object_id)
    assert [e.object_id for e in lost.entries] == [tree.docs]
    assert directory(store, tree.docs).container_id == lost.object_id


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "server.conf"
    path.write_text(textwrap.dedent(f"""\
        [server]
        certificate = server.crt
        private_key = server.key
        ca_certificate = ca.crt
        account_database = {tmp_path / 'accounts.db'}

        [discset 0]
        directories = d0, d1, d2
        """))
    return path


def test_cli_exit_codes_and_json(setup: tuple[Store, Tree, Path], conf: Path) -> None:
    store, tree, root = setup
    args = ("accounts", "--config", str(conf), "check")
    assert "0 errors" in run_boxbox(*args, f"{A:x}").stdout
    _twice(store, tree, root)
    report = json.loads(run_boxbox(*args, f"{A:x}", "--json", exit_code=4).stdout)
    assert report["errors"] == report["remaining"] == 1 and report["problems"][0]["kind"] == "duplicate"
    assert "1 fixed, 0 remain" in run_boxbox(*args, f"{A:x}", "--fix", exit_code=3).stdout
    [one] = json.loads(run_boxbox(*args, "--all", "--json").stdout)
    assert one["account"] == f"{A:08x}" and one["errors"] == 0
    assert "needs an ACCOUNT or --all" in run_boxbox(*args, exit_code=2).stderr
    out = run_boxbox("accounts", "--config", str(conf), "housekeep", f"{A:x}").stdout
    assert f"account {A:08x}: 3 directories" in out


def test_scrub_rebuilds_damaged_stripes_only(setup: tuple[Store, Tree, Path]) -> None:
    from boxbox.store.check import scrub_account

    store, tree, root = setup
    _flip_bytes(store, tree, root)
    keys, repaired, failed = scrub_account(store, A)
    # every key (small new objects share packs), and each RAID file once: one stripe of each was flipped
    assert keys == len(list(store.backend(A).list(f"{A:08x}"))) and failed == []
    assert repaired == len(stripe_files(root, 0)) > len(list(root.glob("d0/**/pack~*.rf"))) > 0
    assert check_account(store, A).errors == 0
    assert restorable(store) == sorted(tree.data.values())


def test_cli_retention_and_info(setup: tuple[Store, Tree, Path], conf: Path) -> None:
    base = ("accounts", "--config", str(conf))
    out = run_boxbox(*base, "retention", f"{A:x}", "--keep-days", "30", "--keep-versions", "3").stdout
    assert "30 days, at least 3" in out
    info = json.loads(run_boxbox(*base, "info", f"{A:x}", "--json").stdout)
    assert (info["keep_versions_days"], info["keep_min_versions"]) == (30, 3)
    assert "30 days, at least 3 versions" in run_boxbox(*base, "info", f"{A:x}").stdout
    assert "needs --keep-days" in run_boxbox(*base, "retention", f"{A:x}", exit_code=2).stderr
    run_boxbox(*base, "retention", f"{A:x}", "--keep-days", "-1", exit_code=2)


def test_parity_damage_needs_a_scrub(setup: tuple[Store, Tree, Path]) -> None:
    """A read never touches a good object's parity, so only --scrub (and check --all) finds it there."""
    store, tree, root = setup
    assert _flip_roles(root, {2}) > 5
    assert check_account(store, A).errors == 0
    found = check_account(store, A, scrub=True)
    assert found.errors > 5 and {p.kind for p in found.problems} == {"stripes"}
    assert check_account(store, A, fix=True, scrub=True).remaining == 0
    assert check_account(store, A, scrub=True).errors == 0


def _unfinished_session(store: Store, tree: Tree) -> int:
    """What a session that stored an object and then failed to write its directories leaves: the
    object above the info's last id, listed nowhere, and the writer flag still set."""
    info = store.read_info(A)
    with store.backend(A).get(object_key(A, tree.b)) as f:
        data = f.read()
    left = info.last_object_id + 1
    rewrite(store, left, data)
    store.update_info(A, writer_open=True)
    return left


def test_an_unfinished_session_is_pending_not_damage(setup: tuple[Store, Tree, Path]) -> None:
    """Without --fix, what a failed session left is reported as pending (its next writer removes it),
    not as orphans; --fix does that removal now, and the account is clean either way."""
    store, tree, root = setup
    left = _unfinished_session(store, tree)
    before = disc_snapshot(root)
    report = check_account(store, A)
    assert report.errors == 0, [str(p) for p in report.problems]
    assert len(report.pending) == 1 and f"{left:#x}" in report.pending[0]
    assert disc_snapshot(root) == before, "check without --fix changed something"
    fixed = check_account(store, A, fix=True)
    assert [p.kind for p in fixed.problems] == ["writer"] and fixed.remaining == 0
    assert not store.backend(A).exists(object_key(A, left)) and not store.read_info(A).writer_open
    again = check_account(store, A)
    assert again.errors == 0 and again.pending == []
    assert restorable(store) == sorted(tree.data.values())


def test_an_orphan_without_an_unfinished_session_is_damage(setup: tuple[Store, Tree, Path]) -> None:
    store, tree, root = setup
    left = _unfinished_session(store, tree)
    store.update_info(A, writer_open=False)
    report = check_account(store, A)
    assert report.pending == [] and any(p.kind == "orphan" and p.object_id == left for p in report.problems)
