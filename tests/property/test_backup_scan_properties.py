"""The scanner yields exactly the directories whose listing changed, after any series of edits."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from hypothesis import given, strategies as st

from boxbox.backup.records import Records
from boxbox.backup.scan import Scanner

# a fixed starting tree, and edits on paths that mostly exist in it (or could, after an edit)
BASE_DIRS = ["a", "a/b", "d"]
BASE_FILES = ["f", "a/f", "a/b/f", "d/f\udcff"]
PATHS = BASE_DIRS + BASE_FILES + ["g", "a/g", "a/b/c", "d/e", "d/e/f"]
ops = st.lists(st.tuples(st.sampled_from(["write", "append", "chmod", "mkdir", "rmdir", "unlink", "rename"]),
                         st.sampled_from(PATHS), st.sampled_from(PATHS)), max_size=8)


def apply(root: Path, op: str, p: str, q: str) -> None:
    """One edit; edits that do not fit the tree as it is (a missing parent, say) are skipped."""
    a, b = root / p, root / q
    try:
        if op == "write":
            a.write_bytes(b"w" * len(q))  # sometimes the same size: mtime/ctime must tell
        elif op == "append":
            with open(a, "ab") as f:
                f.write(b"+")
        elif op == "chmod":
            os.chmod(a, 0o700 if stat.S_IMODE(os.lstat(a).st_mode) != 0o700 else 0o755)
        elif op == "mkdir":
            a.mkdir()
        elif op == "rmdir":
            a.rmdir()
        elif op == "unlink":
            a.unlink()
        else:
            os.rename(a, b)
    except OSError:
        pass


def signatures(root: Path) -> dict[bytes, object]:
    """What each directory's listing is, by the documented definition, walked the plain way."""
    sigs: dict[bytes, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = os.lstat(dirpath)
        listing = []
        for name in dirnames + filenames:
            s = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISDIR(s.st_mode):
                listing.append((name, s.st_mode, s.st_uid, s.st_gid, s.st_ino))
            else:
                listing.append((name, s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino))
        rel = os.path.relpath(dirpath, root)
        key = b"" if rel == "." else os.fsencode(rel)
        sigs[key] = ((d.st_mode, d.st_uid, d.st_gid, d.st_mtime_ns, d.st_ctime_ns, d.st_ino), sorted(listing))
    return sigs


def sync(root: Path, previous: Records | None) -> tuple[Records, set[bytes]]:
    scanner = Scanner(root, previous=previous, racy_window=0)
    changed = set()
    for n, change in enumerate(scanner, 1):
        change.store_id = change.store_id or n + 1000
        change.done = True
        changed.add(change.path)
    assert scanner.errors == []
    return scanner.records, changed


@given(ops, ops)
def test_yields_exactly_the_changed_directories(setup: list, edits: list) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in BASE_DIRS:
            (root / d).mkdir()
        for f in BASE_FILES:
            (root / f).write_bytes(f.encode("utf-8", "surrogateescape"))
        for op in setup:
            apply(root, *op)
        records, _ = sync(root, None)
        before = signatures(root)
        for op in edits:
            apply(root, *op)
        after = signatures(root)
        records, changed = sync(root, records)
        assert changed == {p for p, sig in after.items() if before.get(p) != sig}
        assert [p for _, p in records.paths()] == sorted(after, key=lambda p: p.split(b"/"))
        _, again = sync(root, records)
        assert again == set()
