"""Account locks as an interface: flock files for disc sets, leases for S3 stores (`lease.py`).

A writing session, a housekeeping pass and `check` each hold an account's write lock;
housekeeping and check also hold its housekeeping lock, so a client can tell who has the
account; the info lock serialises edits of the info file by admins, housekeeping and check.
On a disc set one server owns the discs, so an flock on a local file is the lock (the
kernel frees it when its holder dies). On an S3 store several servers share the bucket:
the locks are lease objects there, which can lapse, so whoever holds a write lease sees the
account's objects through `GuardedStore`, which refuses every write once it may have.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Any, Protocol

from boxbox.errors import InUse
from boxbox.store.backend import ObjectStore, PutStream


class Lock(Protocol):
    """An account lock. `expires`: a lease that the holder must stop using when `check` raises."""

    expires: bool

    def acquire(self) -> "Lock": ...
    def release(self) -> None: ...
    def check(self) -> None: ...
    def __enter__(self) -> "Lock": ...
    def __exit__(self, *exc: object) -> None: ...


class AccountLocks(Protocol):
    """The write, housekeeping and info locks of the accounts on one store, and yield requests."""

    #: seconds between tries while waiting for a lock (a try costs a request on S3)
    poll: float

    def write_lock(self, account: int) -> Lock: ...
    def housekeeping_lock(self, account: int) -> Lock: ...
    def info_lock(self, account: int) -> Lock: ...
    def request_yield(self, account: int) -> None: ...
    def clear_yield(self, account: int) -> None: ...
    def yield_requested(self, account: int, max_age: float) -> bool: ...
    def held_write_lease(self, account: int) -> Lock | None: ...


class LocalLocks:
    """flock files in one local directory: the locks of accounts on disc sets."""

    poll = 0.02

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir

    def _dir(self) -> Path:
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.lock_dir

    def write_lock(self, account: int) -> "FileLock":
        return FileLock(self._dir() / f"{account:08x}.write", blocking=False, account=account)

    def info_lock(self, account: int) -> "FileLock":
        return FileLock(self._dir() / f"{account:08x}.info", blocking=True)

    def housekeeping_lock(self, account: int) -> "FileLock":
        return FileLock(self._dir() / f"{account:08x}.housekeeping", blocking=False, account=account)

    def _yield_path(self, account: int) -> Path:
        return self._dir() / f"{account:08x}.yield"

    def request_yield(self, account: int) -> None:
        self._yield_path(account).touch()

    def clear_yield(self, account: int) -> None:
        self._yield_path(account).unlink(missing_ok=True)

    def yield_requested(self, account: int, max_age: float) -> bool:
        try:
            return time.time() - os.stat(self._yield_path(account)).st_mtime < max_age
        except FileNotFoundError:
            return False

    def held_write_lease(self, account: int) -> None:
        """An flock cannot lapse while held: nothing to guard."""


class GuardedStore:
    """An S3 account's objects as the holder of its write lease (session, housekeeping, check) sees
    them: no write once the lease may have expired."""

    def __init__(self, inner: ObjectStore, lock: Lock) -> None:
        self._inner = inner
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put(self, key: str, exclusive: bool = False) -> PutStream:
        self._lock.check()
        return _GuardedPut(self._inner.put(key, exclusive), self._lock)

    def delete(self, key: str) -> None:
        self._lock.check()
        self._inner.delete(key)

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        self._lock.check()
        return self._inner.put_if(key, data, etag)  # type: ignore[attr-defined]

    def sync(self, puts: list[PutStream]) -> None:
        """The barrier sends what commits held back (S3 packs), so it is a write too."""
        self._lock.check()
        self._inner.sync(puts)


class _GuardedPut:
    def __init__(self, put: PutStream, lock: Lock) -> None:
        self._put = put
        self._lock = lock
        self.write = put.write
        self.abort = put.abort

    def commit(self, durable: bool = True) -> None:
        self._lock.check()
        self._put.commit(durable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._put, name)  # what the backend's `sync` needs of its own puts


class FileLock:
    """An flock on a local file: held by an open descriptor, so a dead holder frees it."""

    expires = False

    def __init__(self, path: Path, blocking: bool, account: int | None = None) -> None:
        self.path = path
        self.blocking = blocking
        self.account = account
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                what = f"account {self.account:08x}" if self.account is not None else str(self.path)
                raise InUse(f"{what} is in use by another client", hint="only one writer per account at a time; "
                            "read-only sessions are allowed") from None
            raise
        self._fd = fd
        return self

    def check(self) -> None:
        """An flock cannot be lost while its descriptor is open."""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
