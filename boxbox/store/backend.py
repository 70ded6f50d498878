"""The object store interface, and its first backend: RAID files on a disc set.

Everything above this module (accounts, protocol handlers, housekeeping, check) names
objects by key — `"0000002a/info"`, `"0000002a/o/0/01/0000000000000123"` — and never by
path, so an S3-compatible backend (`boxbox/store/s3backend.py`) implements `ObjectStore` alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, Iterator, NamedTuple, Protocol

from boxbox.errors import InUse, IntegrityError, NotFound, ProgrammingError
from boxbox.store.info import BLOCK_SIZE

if TYPE_CHECKING:
    from boxbox.raidfile import DiscSet

#: The prefix under which accounts live on a disc set (Box Backup used `backup/`).
ROOT = "backup"


class Verified(NamedTuple):
    """What verifying an object's redundancy found: `ok` (all copies good), `readable`, `repaired`."""

    ok: bool
    readable: bool
    repaired: bool
    detail: str


class PutStream(Protocol):
    """An object being written: invisible until `commit`, gone after `abort`.

    `commit(durable=False)` (new keys only) may leave the durability owed: the object is
    visible at once and durable after the backend's `sync([...])`, which the store calls
    before anything durable refers to it (docs/STORE.md "Durability"). A backend whose
    commit is always durable ignores the flag and makes `sync` a no-op.
    """

    def write(self, data: bytes | bytearray | memoryview) -> int: ...
    def commit(self, durable: bool = True) -> None: ...
    def abort(self) -> None: ...


class ObjectStore(Protocol):
    #: True if `put(key, exclusive=True)` itself refuses to replace an object (S3 `If-None-Match`),
    #: so a caller allocating a new key need not ask `exists` first.
    exclusive_create: bool

    def put(self, key: str, exclusive: bool = False) -> PutStream:
        """Start writing `key`; commit atomically replaces any previous object (unless `exclusive`
        and the backend has `exclusive_create`: then commit fails with StorageError)."""

    def get(self, key: str) -> BinaryIO:
        """A readable, seekable stream of `key`; NotFound if absent."""

    def delete(self, key: str) -> None:
        """Remove `key`; NotFound if absent."""

    def exists(self, key: str) -> bool:
        """True if `key` is committed."""

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix/` (recursively), in no particular order."""

    def usage_blocks(self, key: str) -> int:
        """4 KiB blocks `key` occupies, including redundancy overhead."""

    def blocks_for_length(self, length: int) -> int:
        """4 KiB blocks an object of `length` bytes will occupy (to refuse an upload early)."""

    def verify(self, key: str, repair: bool) -> Verified:
        """Check every checksum of every copy of `key`; with `repair`, rebuild bad copies from good ones."""

    def sync(self, puts: list[PutStream]) -> None:
        """Make puts committed with `durable=False` durable, all together (a group commit)."""

    # Optional: `commit_all(puts)`, a durable commit of uncommitted puts (overwrites allowed) that
    # shares the fsyncs; without it the store commits each put in turn. Optional too:
    # `sync_and_commit(owed, puts)`, `sync(owed)` then `commit_all(puts)` sharing one round of fsyncs.


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ProgrammingError(f"object key {key!r} is not a clean relative name")
    return key


class RaidObjectStore:
    """`ObjectStore` over a raidfile `DiscSet`: keys are paths under `backup/`."""

    exclusive_create = False  # a new id is checked with `exists` (one stat) by the caller

    def __init__(self, discset: "DiscSet") -> None:
        self.discset = discset

    def _path(self, key: str) -> str:
        return f"{ROOT}/{check_key(key)}"

    def put(self, key: str, exclusive: bool = False) -> PutStream:
        return self.discset.create(self._path(key))

    def sync(self, puts: list[PutStream]) -> None:
        from boxbox.raidfile.writer import sync_all

        sync_all(puts)  # type: ignore[arg-type]

    def commit_all(self, puts: list[PutStream]) -> None:
        """Commit uncommitted puts durably together: every temp fsynced, then the renames, then each
        directory fsynced once (`raidfile.writer.commit_all`); each object stays old or new."""
        from boxbox.raidfile.writer import commit_all

        commit_all(puts)  # type: ignore[arg-type]

    def sync_and_commit(self, owed: list[PutStream], puts: list[PutStream]) -> None:
        """`sync(owed)` and `commit_all(puts)` in one round of fsyncs, no put renamed before every owed
        object is durable (`raidfile.writer.sync_and_commit`); any error fails both."""
        from boxbox.raidfile.writer import sync_and_commit

        sync_and_commit(owed, puts)  # type: ignore[arg-type]

    def get(self, key: str) -> BinaryIO:
        return self.discset.open(self._path(key), settle=False)  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        self.discset.delete(self._path(key))

    def exists(self, key: str) -> bool:
        return self.discset.exists(self._path(key))

    def list(self, prefix: str) -> Iterator[str]:
        stack = [check_key(prefix)]
        while stack:
            here = stack.pop()
            path = f"{ROOT}/{here}"
            for name in self.discset.listdir(path):
                yield f"{here}/{name}"
            stack.extend(f"{here}/{sub}" for sub in self.discset.listdirs(path))

    def names(self, prefix: str) -> set[str]:
        """The names directly under `prefix/` that are committed or have temps (a dead writer's, to settle)."""
        return self.discset.names(self._path(prefix))

    def usage_blocks(self, key: str) -> int:
        return self.discset.usage_blocks(self._path(key)) * self.discset.block_size // BLOCK_SIZE

    def blocks_for_length(self, length: int) -> int:
        return self.discset.blocks_for_length(length) * self.discset.block_size // BLOCK_SIZE

    def verify(self, key: str, repair: bool) -> Verified:
        path = self._path(key)
        report = self.discset.check(path)
        if report.ok or not repair or not report.readable:
            return Verified(report.ok, report.readable, False, str(report))
        try:
            report = self.discset.repair(path)
        except (InUse, NotFound, IntegrityError) as e:
            return Verified(False, report.readable, False, f"{report}; not repaired: {e}")
        return Verified(report.ok, report.readable, report.repaired, str(report))
