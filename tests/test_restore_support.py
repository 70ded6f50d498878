"""Helpers for restore and query tests: a store with content, and tree comparison.

`Uploader` is test scaffolding, not a backup client: it files a local tree on the store the
way the client lays it out (one directory object per directory, one file object per
non-directory, attributes sealed in the entries and directory objects), so restore can be
tested before and beside `boxbox client`. It also makes hostile stores: it seals whatever
names it is given.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

from boxbox.crypto.keys import Keys
from boxbox.objects.attributes import Attributes, FileType, attributes_from_path
from boxbox.objects.directory import FILE, make_entry, seal_directory_attributes
from boxbox.objects.file import encode_file
from boxbox.restore.remote import ROOT_ID
from boxbox.wire.client import Client


class Uploader:
    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def mkdir(self, parent: int, name: bytes, attrs: Attributes | None = None) -> int:
        sealed_name = make_entry(self.keys, parent, name, 0, FILE, None).sealed_name
        sealed = seal_directory_attributes(self.keys, parent, name, attrs) if attrs is not None else b""
        return self.client.create_directory(parent, sealed_name, sealed, attrs.mtime_ns if attrs else 0)

    def put(self, dir_id: int, name: bytes, data: bytes, attrs: Attributes) -> int:
        entry = make_entry(self.keys, dir_id, name, 0, FILE, attrs)
        sink = io.BytesIO()
        encode_file(self.keys, io.BytesIO(data), sink, container_id=dir_id, name=name, attributes=attrs,
                    size=len(data))
        return self.client.store_file(dir_id, entry.sealed_name, io.BytesIO(sink.getvalue()), entry.mtime_ns,
                                      entry.attr_hash, entry.sealed_attributes)

    def delete(self, dir_id: int, name: bytes) -> int:
        return self.client.delete_file(dir_id, make_entry(self.keys, dir_id, name, 0, FILE, None).sealed_name)

    def put_path(self, dir_id: int, name: bytes, path: Path) -> int:
        attrs = attributes_from_path(path)
        data = path.read_bytes() if attrs.file_type is FileType.REGULAR else b""
        return self.put(dir_id, name, data, attrs)

    def tree(self, local: Path, parent: int = ROOT_ID, name: bytes | None = None) -> int:
        """File `local` as `name` under `parent` (recursively); returns the new directory's id."""
        name = os.fsencode(local.name) if name is None else name
        dir_id = self.mkdir(parent, name, attributes_from_path(local))
        self.sync(local, dir_id)
        return dir_id

    def sync(self, local: Path, dir_id: int, known: dict[bytes, int] | None = None) -> None:
        """Upload every entry of `local` into existing directory `dir_id` (new versions of files)."""
        for child in sorted(os.listdir(os.fsencode(local))):
            path = Path(os.fsdecode(os.path.join(os.fsencode(local), child)))
            if stat.S_ISDIR(os.lstat(path).st_mode):
                self.tree(path, dir_id, child)
            else:
                self.put_path(dir_id, child, path)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must reproduce, per relative path: type, mode, mtime, content or target."""
    out: dict[str, tuple[Any, ...]] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.fsdecode(os.path.relpath(p, broot))
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    detail: Any = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = st.st_rdev
            else:
                detail = None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, detail, st.st_uid, st.st_gid)
    return out


def link_groups(root: Path) -> set[frozenset[str]]:
    """Names grouped by inode (only inodes with more than one name), checking st_nlink on the way."""
    by_inode: dict[int, set[str]] = {}
    nlink: dict[int, int] = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            by_inode.setdefault(st.st_ino, set()).add(os.path.relpath(p, root))
            nlink[st.st_ino] = st.st_nlink
    for ino, names in by_inode.items():
        assert nlink[ino] == len(names), names  # no stray name (a temp file) keeps a link
    return {frozenset(v) for v in by_inode.values() if len(v) > 1}


def make_linked_tree(src: Path) -> None:
    """Hard links within and across directories, of files, a fifo and a symlink, beside a plain file."""
    (src / "d1").mkdir(parents=True)
    (src / "d2").mkdir()
    (src / "a").write_bytes(os.urandom(50_000))
    os.link(src / "a", src / "d1" / "a2")
    os.link(src / "a", src / "d2" / "a3")
    (src / "b").write_bytes(b"two names")
    os.link(src / "b", src / "b2")
    (src / "single").write_bytes(b"b's contents, but its own inode")
    os.mkfifo(src / "fifo")
    os.link(src / "fifo", src / "d1" / "fifo2")
    os.symlink("a", src / "sym")
    os.link(src / "sym", src / "d2" / "sym2", follow_symlinks=False)
