"""The store as the restoring client sees it: opened directory listings, paths, version choice.

A listing is opened entry by entry (`open_entry` checks name, attributes, mtime and attribute
hash); an entry that fails is kept aside with its error rather than failing the whole
directory, so one damaged entry does not hide its siblings. Listings of many directories
are pipelined: all requests go out, then the replies are read in order.

Point in time (`select_at`) uses what the store records today: each version's mtime and
the store's flags; see docs/RESTORE.md for the precision that gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from boxbox.crypto.keys import Keys
from boxbox.errors import BoxboxError, IntegrityError, NotFound
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.directory import DELETED, DIR, FILE, OLD, Directory, open_directory_attributes, open_entry
from boxbox.wire import messages as m
from boxbox.wire.client import Client

ROOT_ID = 1


@dataclass(slots=True)
class RemoteEntry:
    """One opened directory entry (one version of one name)."""

    object_id: int
    flags: int
    name: bytes
    attributes: Attributes | None
    mtime_ns: int
    size_blocks: int
    newer: int
    older: int

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & DIR)

    @property
    def is_file(self) -> bool:
        return bool(self.flags & FILE)

    @property
    def deleted(self) -> bool:
        return bool(self.flags & DELETED)

    @property
    def old(self) -> bool:
        return bool(self.flags & OLD)

    @property
    def file_type(self) -> FileType:
        if self.is_dir:
            return FileType.DIRECTORY
        return self.attributes.file_type if self.attributes is not None else FileType.REGULAR


@dataclass(slots=True)
class Listing:
    """A directory as listed: its own attributes, its opened entries, the entries that failed."""

    dir_id: int
    container_id: int
    attributes: Attributes | None
    entries: list[RemoteEntry]
    errors: list[str] = field(default_factory=list)


def flag_string(flags: int) -> str:
    """Box Backup style: f/d, then X for deleted, o for old."""
    return ("d" if flags & DIR else "f") + ("X" if flags & DELETED else "-") + ("o" if flags & OLD else "-")


class Remote:
    """A logged-in session plus the keys: lists, resolves and names things on the store."""

    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def open_listing(self, data: bytes, dir_id: int, name: bytes | None) -> Listing:
        """Parse and open one ListDirectory reply; `name` is the directory's name in its parent."""
        try:
            d = Directory.parse(data)
        except BoxboxError as e:
            raise IntegrityError(f"directory {dir_id:#x}: {e}") from None
        attrs = None
        errors = []
        if name is not None:
            try:
                attrs = open_directory_attributes(self.keys, d, name, expected_id=dir_id,
                                                  label=f"directory {dir_id:#x}")
            except IntegrityError as e:
                errors.append(str(e))
        elif d.object_id != dir_id:
            raise IntegrityError(f"directory {dir_id:#x}: the store sent directory {d.object_id:#x}")
        entries = []
        for e in d.entries:
            try:
                ename, eattrs = open_entry(self.keys, dir_id, e, f"entry in directory {dir_id:#x}")
            except IntegrityError as err:
                errors.append(str(err))
                continue
            entries.append(RemoteEntry(e.object_id, e.flags, ename, eattrs, e.mtime_ns, e.size_blocks,
                                       e.newer, e.older))
        return Listing(dir_id, d.container_id, attrs, entries, errors)

    def list(self, dir_id: int, name: bytes | None = None) -> Listing:
        return self.list_many([(dir_id, name)])[0]

    def list_many(self, dirs: Iterable[tuple[int, bytes | None]]) -> list[Listing | BoxboxError]:
        """Listings of many directories for one round trip; a failed one is its error in place."""
        dirs = list(dirs)
        pending = [self.client.submit(m.ListDirectory(d, 0, 0, 1), download=True) for d, _ in dirs]
        out: list[Listing | BoxboxError] = []
        for (dir_id, name), p in zip(dirs, pending):
            try:
                _, stream = p.result()
                out.append(self.open_listing(stream.read(), dir_id, name))
            except BoxboxError as e:
                out.append(e)
        if len(out) == 1 and isinstance(out[0], BoxboxError):
            raise out[0]
        return out

    # ------------------------------------------------------------ paths
    def resolve(self, path: str | bytes, cwd: list[tuple[bytes, int]], at_ns: int | None = None,
                deleted: bool = False) -> list[tuple[bytes, int]]:
        """A remote directory path -> the chain of (name, id) from the root (b"", 1) down.

        Absolute paths start at the root, others at `cwd`; `..` goes up, `.` stays.
        """
        raw = os.fsencode(path)
        chain = [(b"", ROOT_ID)] if raw.startswith(b"/") else list(cwd)
        for part in raw.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b"..":
                if len(chain) > 1:
                    chain.pop()
                continue
            entry = self.lookup(chain[-1][1], part, at_ns=at_ns, deleted=deleted, want_dir=True)
            chain.append((part, entry.object_id))
        return chain

    def lookup(self, dir_id: int, name: bytes, *, at_ns: int | None = None, deleted: bool = False,
               want_dir: bool | None = None) -> RemoteEntry:
        """The entry `name` would restore as in `dir_id` (current, or as chosen by `at_ns`/`deleted`)."""
        listing = self.list(dir_id)
        for e in select(listing, at_ns=at_ns, deleted=deleted):
            if e.name == name and (want_dir is None or e.is_dir == want_dir):
                return e
        what = "directory" if want_dir else "file" if want_dir is False else "entry"
        raise NotFound(f"no {what} {os.fsdecode(name)!r} in remote directory {dir_id:#x}")

    def path_of(self, chain: list[tuple[bytes, int]]) -> str:
        return "/" + "/".join(os.fsdecode(n) for n, _ in chain[1:])

    def usage(self) -> m.AccountUsage:
        return self.client.usage()


def versions_of(listing: Listing, name: bytes) -> list[RemoteEntry]:
    """Every stored version of `name`, newest first (by mtime, then by object id)."""
    found = [e for e in listing.entries if e.name == name]
    return sorted(found, key=lambda e: (e.mtime_ns, e.object_id), reverse=True)


def _newest(versions: list[RemoteEntry]) -> RemoteEntry:
    return max(versions, key=lambda e: (e.mtime_ns, e.object_id))


def select(listing: Listing, *, at_ns: int | None = None, deleted: bool = False, old: bool = False
           ) -> list[RemoteEntry]:
    """The entries a restore or listing shows: one version per name unless `old`.

    Default: current entries. `deleted`: also the newest version of each deleted name.
    `at_ns`: for each name, the newest version with mtime <= at_ns, with deleted names included
    unless the directory's own mtime (a change of its names, such as a deletion) is <= at_ns
    (see docs/RESTORE.md, "Point in time").
    """
    if old:
        return [e for e in listing.entries if deleted or not e.deleted]
    groups: dict[tuple[bytes, bool], list[RemoteEntry]] = {}
    for e in listing.entries:
        groups.setdefault((e.name, e.is_dir), []).append(e)
    out = []
    for (_, is_dir), versions in groups.items():
        if at_ns is None:
            live = [e for e in versions if not e.deleted and not e.old]
            if live:
                out.append(_newest(live))
            elif deleted:
                gone = [e for e in versions if e.deleted]
                if gone:
                    out.append(_newest(gone))
            continue
        chosen = _at(listing, versions, is_dir, at_ns)
        if chosen is not None:
            out.append(chosen)
    out.sort(key=lambda e: e.name)
    return out


def _at(listing: Listing, versions: list[RemoteEntry], is_dir: bool, at_ns: int) -> RemoteEntry | None:
    if is_dir:  # a directory has no versions; its mtime moves with its contents, so it cannot date it
        candidates = versions
    else:
        candidates = [e for e in versions if e.mtime_ns <= at_ns]
    if not candidates:
        return None
    chosen = _newest(candidates)
    if chosen.deleted:  # deleting a name marks all its versions; when is not recorded
        dir_mtime = listing.attributes.mtime_ns if listing.attributes is not None else None
        if dir_mtime is not None and dir_mtime <= at_ns:
            return None  # the directory had already changed to its present names (without this one)
    return chosen
