"""Account locks across several servers: lease objects written with conditional PUTs.

On a raidfile disc set one server owns the discs and an flock is the lock. On an S3 store
several servers share the bucket, so the write, housekeeping and info locks of an account
are *lease objects* under `<prefix>/leases/` (outside the account's keys, so `check` never
sees them as strays):

    {"v": 1, "lease": "write", "owner": "host:pid:instance", "token": "<32 hex>", "expires": <unix s>}

- acquire: `PUT If-None-Match: *`. If one is there and its `expires` + `skew` is past by
  our clock, take it over with `PUT If-Match: <its etag>` (two servers racing for a dead
  lease: one wins, the other gets 412 = InUse).
- renew: every `duration / 3` a thread rewrites it with `If-Match: <our etag>`.
- a 412 on our own retry (the success response was lost) is resolved by reading the lease:
  our token there means it is ours.
- release: delete it, only while our own deadline (below) has not passed: until then nobody
  else can have taken it over, so no read is needed; after it, leave it to expire.
- the holder stops writing at `last renewal sent + duration - skew` by its monotonic clock
  (`Lease.check`), so with clocks at most `skew` apart no two writers ever overlap.

See docs/STORE.md "Several servers on one bucket" for the failure model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable, NamedTuple

from boxbox.errors import InUse, NotFound, PreconditionFailed, StorageError

if TYPE_CHECKING:
    from boxbox.s3.client import S3Client

log = logging.getLogger(__name__)

#: One id per process: a lease names the server instance that holds it.
INSTANCE = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
LEASE_VERSION = 1
#: How often a blocking acquire (the info lock) tries again.
POLL = 0.05


class LeaseSettings(NamedTuple):
    """`duration`: how long a lease lives unrenewed; `skew`: the largest clock difference between servers."""

    duration: float = 60.0
    skew: float = 10.0


class LeaseState(NamedTuple):
    """A lease as read from the bucket."""

    etag: str
    owner: str
    token: str
    expires: float


def _body(kind: str, token: str, expires: float) -> bytes:
    return json.dumps({"v": LEASE_VERSION, "lease": kind, "owner": INSTANCE, "token": token,
                       "expires": round(expires, 3)}, sort_keys=True).encode()


def read_lease(client: "S3Client", key: str) -> LeaseState | None:
    """The lease at `key`, or None. HEAD first, then GET: an etag older than the body only makes a
    later If-Match fail (safe); the reverse order could pair a live body with a stale etag."""
    for _ in range(3):
        try:
            etag = client.head_object(key).etag
            body = client.get_object(key)
        except NotFound:
            return None
        if len(etag) == 32 and etag != hashlib.md5(body, usedforsecurity=False).hexdigest():
            continue  # replaced between the two requests (a plain PUT's ETag is its MD5): read again
        try:
            fields = json.loads(body)
            return LeaseState(etag, str(fields["owner"]), str(fields["token"]), float(fields["expires"]))
        except (ValueError, KeyError, TypeError):
            log.warning("lease %s is unreadable; treated as expired", key)
            return LeaseState(etag, "?", "", 0.0)
    raise InUse(f"lease {key} keeps changing")


class Lease:
    """One lease; `acquire` raises InUse while someone else holds it unexpired."""

    expires = True  # the holder stops writing when `check` says so

    def __init__(self, client: Callable[[], "S3Client"], key: str, kind: str, what: str,
                 settings: LeaseSettings, *, blocking: bool = False, renew: bool = True,
                 wait: float = 30.0, held: dict[str, "Lease"] | None = None) -> None:
        self._client = client
        self.key = key
        self.kind = kind
        self.what = what
        self.settings = settings
        self.blocking = blocking
        self.renewing = renew
        self.wait = wait
        self.token = ""
        self.etag = ""
        self._deadline = 0.0  # monotonic: stop writing after this
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = held  # where this process lists the leases it holds (the write leases)

    # ------------------------------------------------------------ acquiring
    def acquire(self) -> "Lease":
        give_up = time.monotonic() + self.wait
        while True:
            try:
                self._try_acquire()
                break
            except InUse:
                if not self.blocking or time.monotonic() > give_up:
                    raise
                time.sleep(POLL)
        self._lost = False
        if self._held is not None:
            self._held[self.key] = self
        if self.renewing:
            self._stop.clear()
            self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.key}", daemon=True)
            self._thread.start()
        return self

    def _try_acquire(self) -> None:
        client = self._client()
        self.token = uuid.uuid4().hex
        for _ in range(4):
            sent = time.monotonic()
            body = _body(self.kind, self.token, time.time() + self.settings.duration)
            try:
                self.etag = client.put_object(self.key, body, if_none_match=True)
                self._deadline = sent + self.settings.duration - self.settings.skew
                return
            except PreconditionFailed:
                pass
            current = read_lease(client, self.key)
            if current is None:
                continue  # released between our PUT and our read: try again
            if current.token == self.token:  # our PUT landed, its reply was lost
                self.etag, self._deadline = current.etag, sent + self.settings.duration - self.settings.skew
                return
            if time.time() <= current.expires + self.settings.skew:
                raise InUse(self._held_message(current), hint="only one writer per account at a time; "
                            "read-only sessions are allowed")
            log.warning("%s: taking over the lease of %s, expired %.0f s ago", self.what, current.owner,
                        time.time() - current.expires)
            try:
                self.etag = client.put_object(self.key, body, if_match=current.etag)
                self._deadline = sent + self.settings.duration - self.settings.skew
                return
            except PreconditionFailed:
                mine = read_lease(client, self.key)
                if mine is not None and mine.token == self.token:
                    self.etag, self._deadline = mine.etag, sent + self.settings.duration - self.settings.skew
                    return
        raise InUse(f"{self.what} is in use: its lease keeps changing hands", hint="try again in a moment")

    def _held_message(self, current: LeaseState) -> str:
        left = max(0.0, current.expires - time.time())
        return f"{self.what} is in use by another client (lease held by {current.owner}, {left:.0f} s left)"

    # ------------------------------------------------------------ holding
    def renew(self) -> None:
        """Extend the lease; marks it lost (and raises StorageError) if someone else has it now."""
        client = self._client()
        sent = time.monotonic()
        body = _body(self.kind, self.token, time.time() + self.settings.duration)
        try:
            self.etag = client.put_object(self.key, body, if_match=self.etag)
        except (PreconditionFailed, NotFound):
            current = read_lease(client, self.key)
            if current is None or current.token != self.token:
                self._lost = True
                raise StorageError(f"{self.what}: lease lost to {current.owner if current else 'nobody'}") from None
            self.etag = current.etag  # our renewal landed, its reply was lost
        self._deadline = sent + self.settings.duration - self.settings.skew

    def _renew_loop(self) -> None:
        period = self.settings.duration / 3
        while not self._stop.wait(period):
            try:
                self.renew()
            except Exception as e:  # noqa: BLE001 - the store unreachable: try again next period
                if self._lost:
                    log.error("%s: %s; its holder stops writing", self.what, e)
                    return
                log.warning("%s: renewing the lease failed (tried again in %.0f s): %s", self.what, period, e)

    def check(self) -> None:
        """Raise StorageError if the lease is lost or may have expired: the holder must stop writing."""
        if self._lost or time.monotonic() > self._deadline:
            raise StorageError(f"{self.what}: the lease could not be renewed in time; the session stops writing "
                               "so that another server can take the account safely",
                               hint="see the server's log; run the backup again")

    def release(self) -> None:
        if not self.token:
            return
        if self._held is not None and self._held.get(self.key) is self:
            del self._held[self.key]
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.token = ""
        if self._lost or time.monotonic() > self._deadline:
            return  # it may be someone else's by now: leave it to expire
        try:  # before our deadline nobody can have taken it over: no need to read it first
            self._client().delete_object(self.key)
        except (StorageError, NotFound, OSError) as e:
            log.warning("%s: releasing the lease failed (it expires by itself): %s", self.what, e)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeaseLocks:
    """The account locks of one S3 store (`boxbox.store.locks.LocalLocks` are the flock ones)."""

    #: seconds between tries while a login waits for housekeeping to let go (each try is a PUT and a read)
    poll = 0.1

    def __init__(self, client: Callable[[], "S3Client"], prefix: str, settings: LeaseSettings) -> None:
        self._client = client
        self._prefix = prefix
        self.settings = settings
        self._yield_seen: dict[int, tuple[float, bool]] = {}
        #: write leases this process holds, by key: whoever holds one (a session, housekeeping, check)
        #: sees the account's objects through a guard that refuses writes once the lease may have expired
        self.held: dict[str, Lease] = {}

    def _key(self, account: int, kind: str) -> str:
        return f"{self._prefix}leases/{account:08x}.{kind}"

    def write_lock(self, account: int) -> Lease:
        return Lease(self._client, self._key(account, "write"), "write", f"account {account:08x}", self.settings,
                     held=self.held)

    def held_write_lease(self, account: int) -> Lease | None:
        return self.held.get(self._key(account, "write"))

    def housekeeping_lock(self, account: int) -> Lease:
        return Lease(self._client, self._key(account, "housekeeping"), "housekeeping", f"account {account:08x}",
                     self.settings)

    def info_lock(self, account: int) -> Lease:
        # Held for one read and one write of the info file: no renewal thread needed.
        return Lease(self._client, self._key(account, "info"), "info", f"info file of account {account:08x}",
                     self.settings, blocking=True, renew=False)

    def request_yield(self, account: int) -> None:
        self._client().put_object(self._key(account, "yield"), repr(time.time()).encode())

    def clear_yield(self, account: int) -> None:
        self._client().delete_object(self._key(account, "yield"))

    def yield_requested(self, account: int, max_age: float) -> bool:
        """A request younger than `max_age` by the requester's clock (with the skew allowed for).

        Asked between directories and deletions, so the answer is cached for 0.2 s (one GET then)."""
        now = time.monotonic()
        seen = self._yield_seen.get(account)
        if seen is not None and now - seen[0] < 0.2:
            return seen[1]
        try:
            stamp = float(self._client().get_object(self._key(account, "yield")))
            answer = time.time() - stamp < max_age + self.settings.skew
        except (NotFound, ValueError):
            answer = False
        self._yield_seen[account] = (now, answer)
        return answer
