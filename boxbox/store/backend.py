"""The object store interface: what accounts, sessions, housekeeping and check need of a store.

Everything above this module (accounts, protocol handlers, housekeeping, check) names
objects by key — `"0000002a/info"`, `"0000002a/o/0/01/0000000000000123"` — and never by
path. Two backends implement it: RAID files on a disc set (`raidstore.py`) and an S3-compatible
bucket (`s3backend.py`).
"""

from __future__ import annotations

from typing import BinaryIO, Iterator, NamedTuple, Protocol

from boxbox.errors import ProgrammingError

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
