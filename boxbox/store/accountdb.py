"""The account database: which accounts exist and which disc set each lives on.

Byte layout (little-endian):

    offset  size  field
    0       4     magic b"BXAD"
    4       2     version (1)
    6       2     reserved, zero
    8       4     number of accounts n
    12      ...   n entries, sorted by account: u32 account, u16 disc set name length m, name (UTF-8)

Written atomically (Box Backup's was not); changes by `boxbox accounts` take a lock file
beside it, so two admins cannot lose each other's edits. The server re-reads the file
when it changes, so accounts can be created while it runs.

Accounts on an S3 store are listed, in the same format, in the object `<prefix>accounts` of
its bucket, so every server on the bucket sees them; it is changed with conditional PUTs
(`If-Match` the ETag read, `If-None-Match: *` for the first), read again and retried on 412,
so two servers or admins never lose each other's edits. `StoreDatabase` is the union the
store uses.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

from boxbox import magic
from boxbox.atomic import write_atomic
from boxbox.errors import FormatError, NotFound, PreconditionFailed, StorageError

if TYPE_CHECKING:
    from boxbox.s3.client import S3Client

MAGIC = magic.ACCOUNT_DB
VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct("<4sHHI")
ENTRY = struct.Struct("<IH")
assert HEADER.size == 12 and ENTRY.size == 6
MAX_ACCOUNTS = 1 << 24


class FileStamp(NamedTuple):
    """Enough of stat() to notice a replaced file cheaply."""

    ino: int
    mtime_ns: int
    size: int


def _stamp(path: Path) -> FileStamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStamp(st.st_ino, st.st_mtime_ns, st.st_size)


def encode(accounts: dict[int, str]) -> bytes:
    parts = [HEADER.pack(MAGIC, VERSION, 0, len(accounts))]
    for account in sorted(accounts):
        name = accounts[account].encode("utf-8")
        parts += (ENTRY.pack(account, len(name)), name)
    return b"".join(parts)


def decode(data: bytes, where: str) -> dict[int, str]:
    if len(data) < HEADER.size:
        raise FormatError(f"{where}: account database of {len(data)} bytes, expected at least {HEADER.size}")
    magic_, version, _, count = HEADER.unpack_from(data)
    if magic_ != MAGIC:
        raise FormatError(f"{where}: magic {magic_!r}, expected {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{where}: version {version}, expected one of {SUPPORTED_VERSIONS}")
    if count > min(MAX_ACCOUNTS, (len(data) - HEADER.size) // ENTRY.size):
        raise FormatError(f"{where}: {count} accounts declared in {len(data)} bytes")
    pos = HEADER.size
    accounts: dict[int, str] = {}
    for _ in range(count):
        if len(data) - pos < ENTRY.size:
            raise FormatError(f"{where}: truncated at entry {len(accounts)}")
        account, n = ENTRY.unpack_from(data, pos)
        pos += ENTRY.size
        if len(data) - pos < n:
            raise FormatError(f"{where}: entry for account {account:08x} truncated")
        try:
            accounts[account] = data[pos:pos + n].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{where}: disc set name of account {account:08x} is not UTF-8") from None
        pos += n
    if pos != len(data):
        raise FormatError(f"{where}: {len(data) - pos} unexpected bytes after the last entry")
    return accounts


class AccountDatabase:
    """The database file, cached and re-read when it changes on disc."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._accounts: dict[int, str] = {}
        self._stamp: FileStamp | None = None
        self.reload()

    def reload(self) -> None:
        stamp = _stamp(self.path)
        if stamp is None:
            self._accounts, self._stamp = {}, None
            return
        self._accounts = decode(self.path.read_bytes(), str(self.path))
        self._stamp = stamp

    def refresh(self) -> None:
        """Re-read if the file was replaced since the last read (one stat call)."""
        if _stamp(self.path) != self._stamp:
            self.reload()

    def accounts(self) -> dict[int, str]:
        return dict(self._accounts)

    def discset_of(self, account: int) -> str:
        try:
            return self._accounts[account]
        except KeyError:
            raise NotFound(f"account {account:08x} is not in the account database {self.path}") from None

    def __contains__(self, account: int) -> bool:
        return account in self._accounts

    @contextmanager
    def editing(self) -> Iterator[dict[int, str]]:
        """Lock, re-read, yield the mapping to change, write it atomically on clean exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.reload()
            accounts = dict(self._accounts)
            yield accounts
            write_atomic(self.path, encode(accounts), mode=0o600)
            self.reload()


class BucketAccountDatabase:
    """The accounts of one S3 store, kept in its bucket; every entry names that store."""

    def __init__(self, client: "S3Client", key: str, store_name: str) -> None:
        self._client = client
        self.key = key
        self.store_name = store_name
        self._accounts: dict[int, str] = {}
        self._etag: str | None = None
        self.reload()

    def _read(self) -> tuple[dict[int, str], str | None]:
        try:
            info = self._client.head_object(self.key)
            data = self._client.get_object(self.key)
        except NotFound:
            return {}, None
        accounts = decode(data, f"s3://{self._client.settings.bucket}/{self.key}")
        return {a: self.store_name for a in accounts}, info.etag

    def reload(self) -> None:
        self._accounts, self._etag = self._read()

    def refresh(self) -> None:
        """Re-read if another server or admin changed it (one HEAD: every login asks)."""
        try:
            etag: str | None = self._client.head_object(self.key).etag
        except NotFound:
            etag = None
        if etag != self._etag:
            self.reload()

    def accounts(self) -> dict[int, str]:
        return dict(self._accounts)

    def update(self, change: Callable[[dict[int, str]], None]) -> None:
        """Apply `change` to a fresh copy and write it back only if nobody wrote meanwhile; else redo."""
        for _ in range(20):
            accounts, etag = self._read()
            change(accounts)
            data = encode(accounts)
            try:
                if etag is None:
                    self._client.put_object(self.key, data, if_none_match=True)
                else:
                    self._client.put_object(self.key, data, if_match=etag)
            except PreconditionFailed:
                time.sleep(0.05)
                continue
            self.reload()
            return
        raise StorageError(f"s3://{self._client.settings.bucket}/{self.key}: the account database kept changing "
                           "under 20 tries", hint="try again in a moment")


class StoreDatabase:
    """The local database file (accounts on disc sets) plus the bucket databases of the S3 stores."""

    def __init__(self, local: AccountDatabase, buckets: dict[str, BucketAccountDatabase]) -> None:
        self.local = local
        self.buckets = buckets
        self.path = local.path

    def reload(self) -> None:
        self.local.reload()
        for b in self.buckets.values():
            b.reload()

    def refresh(self) -> None:
        self.local.refresh()
        for b in self.buckets.values():
            b.refresh()

    def accounts(self) -> dict[int, str]:
        merged = self.local.accounts()
        for b in self.buckets.values():
            merged.update(b.accounts())
        return merged

    def discset_of(self, account: int) -> str:
        for b in self.buckets.values():
            if account in b.accounts():
                return b.store_name
        return self.local.discset_of(account)

    def __contains__(self, account: int) -> bool:
        return account in self.local or any(account in b.accounts() for b in self.buckets.values())
