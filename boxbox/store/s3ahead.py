"""The S3 store's read-ahead: keys a read-only session will read next, fetched in the background.

A restore reads objects in ascending id order (ids follow upload order), and a GET costs ~1 ms of
latency it would otherwise pay per file, one after another. `S3ObjectStore.prefetch` locates the
next keys (standalone, or a member of a pack) and hands them here; the client's fetcher
(`S3Client.fetch_ahead`) sends the GETs. A standalone key is fetched for its first `small` bytes,
a pack once, whole, for all its members, and let go when its last member is taken or reading has
passed it. Memory is bounded by READ_AHEAD_BYTES whatever the sizes. A fetch that failed is
never an error here: the read is made again in the foreground, which raises the store's own error.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import TYPE_CHECKING

from boxbox.errors import NotFound
from boxbox.store.s3pack import Entry, Location

if TYPE_CHECKING:
    from boxbox.s3.client import S3Client

#: Keys a read-only session's read-ahead keeps track of (started or waiting to start): a GET costs ~1 ms of
#: latency, which a restore otherwise pays per file. The client's fetcher sends them (`S3Client.fetch_ahead`).
READ_AHEAD = 32
#: Bytes of read-ahead held at once: fetched and not yet taken, plus `small` for each fetch in flight (its
#: size is unknown until it lands). Keys beyond wait for room, so memory stays bounded whatever the sizes.
READ_AHEAD_BYTES = 16 << 20


class _Fetch:
    """A read ahead: its future once started, and the bytes it counts for in READ_AHEAD_BYTES (`small`, or a pack's
    size, until it lands). A pack's fetch serves `members`, the keys read ahead from it and not yet taken."""

    __slots__ = ("future", "held", "members")

    def __init__(self, held: int, members: set[str] | None = None) -> None:
        self.future: Future[bytes]
        self.held = held
        self.members = members


class ReadAhead:
    """The fetches ahead of one store (shared by its sessions' threads)."""

    def __init__(self, client: "S3Client", prefix: str, small: int) -> None:
        self.client = client
        self.prefix = prefix
        self.small = small
        self.started: OrderedDict[str, _Fetch] = OrderedDict()  # oldest first
        self._held = 0  # bytes held: see held_bytes
        self._wanted: OrderedDict[str, _Fetch] = OrderedDict()  # asked for, waiting for room in READ_AHEAD_BYTES
        self._via: dict[str, str] = {}  # a key read ahead from a pack: the pack's S3 key
        self._last_pack: str | None = None  # the pack of the last member taken
        self._lock = threading.RLock()  # a fetch's done-callback may run in the thread that started it

    def want(self, found: list[tuple[str, Location | None]]) -> None:
        """Fetch these keys ahead (None: a standalone object; else the member's place in a pack), oldest first;
        past READ_AHEAD keys, the oldest not taken are let go."""
        with self._lock:
            for s3key, loc in found:
                if s3key in self.started or s3key in self._wanted or s3key in self._via:
                    continue
                if loc is None:
                    self._wanted[s3key] = _Fetch(self.small)
                    continue
                pack = s3key.rpartition("/")[0] + "/" + loc.pack
                fetch = self.started.get(pack) or self._wanted.get(pack)
                if fetch is None:
                    fetch = self._wanted[pack] = _Fetch(loc.size, set())
                fetch.members.add(s3key)  # type: ignore[union-attr]
                self._via[s3key] = pack
            while len(self.started) + len(self._wanted) > READ_AHEAD:  # never taken (skipped ids): oldest go
                if self.started:
                    fetch = self.started.popitem(last=False)[1]
                    self._held -= fetch.held
                    fetch.future.cancel()
                else:
                    fetch = self._wanted.popitem(last=False)[1]
                for member in fetch.members or ():
                    self._via.pop(member, None)
            self._fill()

    def held_bytes(self) -> int:
        """The read-ahead's memory: bytes fetched and not taken, `small` (a pack: its size) for each fetch running."""
        return self._held

    def _fill(self) -> None:
        """Start waiting keys, oldest first, while they fit in READ_AHEAD_BYTES (one at least when none runs)."""
        with self._lock:
            while self._wanted and (not self.started
                                    or self._held + next(iter(self._wanted.values())).held <= READ_AHEAD_BYTES):
                s3key, fetch = self._wanted.popitem(last=False)
                self.started[s3key] = fetch
                self._held += fetch.held
                fetch.future = self.client.fetch_ahead(s3key, 0, self.small if fetch.members is None else fetch.held)
                fetch.future.add_done_callback(functools.partial(self._landed, s3key, fetch))

    def _landed(self, s3key: str, fetch: "_Fetch", future: "Future[bytes]") -> None:
        """A fetch ahead ended: count its real size instead of `small` (landing small frees room), start more."""
        if future.cancelled():
            return
        with self._lock:
            if self.started.get(s3key) is fetch:
                size = len(future.result()) if future.exception() is None else 0
                self._held += size - fetch.held
                fetch.held = size
            self._fill()

    def _pop(self, s3key: str) -> "_Fetch | None":
        """Take `s3key` out of the read-ahead (started or waiting); the caller holds the lock."""
        fetch = self.started.pop(s3key, None)
        self._wanted.pop(s3key, None)
        if fetch is not None:
            self._held -= fetch.held
        return fetch

    def take(self, s3key: str) -> bytes | None:
        """A standalone key's first `small` bytes if it was read ahead; None: read it in the foreground."""
        with self._lock:
            fetch = self._pop(s3key)  # not started yet: read in the foreground now
        if fetch is None:
            return None
        future = fetch.future
        try:
            return None if future.cancelled() else future.result()
        except NotFound:
            raise
        except Exception:  # noqa: BLE001 - read it again in the foreground, with its own error
            return None
        finally:
            self._fill()  # once it has landed: until then its bytes are still held

    def take_member(self, s3key: str, entry: Entry) -> bytes | None:
        """A member's bytes from its pack read ahead (the pack is let go once its last member is taken); None if
        it was not read ahead, or the fetch failed (read it in the foreground)."""
        with self._lock:
            pack = self._via.pop(s3key, None)
            fetch = None if pack is None else self.started.get(pack)
            if fetch is None:
                waiting = None if pack is None else self._wanted.get(pack)
                if waiting is not None:
                    waiting.members.discard(s3key)  # type: ignore[union-attr]
                    if not waiting.members:
                        del self._wanted[pack]  # type: ignore[arg-type]
                return None
            fetch.members.discard(s3key)  # type: ignore[union-attr]
            if not fetch.members:
                self._pop(pack)  # type: ignore[arg-type]
            if pack != self._last_pack:
                self._last_pack = pack  # type: ignore[assignment]
                self._pass_over(pack, s3key)  # type: ignore[arg-type]
        try:
            body = None if fetch.future.cancelled() else fetch.future.result()
        except Exception:  # noqa: BLE001 - read it again in the foreground, with its own error
            return None
        finally:
            self._fill()
        if body is None or len(body) < entry.offset + entry.length:
            return None
        return body[entry.offset:entry.offset + entry.length]

    def _pass_over(self, pack: str, s3key: str) -> None:
        """Reading forward has reached a new pack: packs of the account (started or waiting) whose members
        not taken are all below `s3key` were passed over (old versions a restore skips), and are let go
        rather than hold READ_AHEAD_BYTES. The caller holds the lock."""
        root = s3key[len(self.prefix):].split("/", 1)[0]
        taken = int(s3key.rpartition("/")[2], 16)
        for queue in (self.started, self._wanted):
            for other, fetch in list(queue.items()):
                if (fetch.members is not None and other != pack
                        and other[len(self.prefix):].split("/", 1)[0] == root
                        and all(int(m.rpartition("/")[2], 16) < taken for m in fetch.members)):
                    self._release(other)

    def _release(self, s3key: str) -> None:
        """Let a read ahead go, taken or not (the caller holds the lock)."""
        waiting = self._wanted.get(s3key)
        fetch = self._pop(s3key)  # (takes a waiting one out too, returning only a started one)
        if fetch is not None:
            fetch.future.cancel()
        else:
            fetch = waiting
        for member in (fetch.members or ()) if fetch is not None else ():
            self._via.pop(member, None)

    def drop(self, s3key: str) -> None:
        """`s3key` was written or deleted here: what was fetched of it is stale."""
        with self._lock:
            pack = self._via.pop(s3key, None)
            fetch = None if pack is None else (self.started.get(pack) or self._wanted.get(pack))
            if fetch is not None:
                fetch.members.discard(s3key)  # type: ignore[union-attr]
                if not fetch.members:
                    self._release(pack)  # type: ignore[arg-type]
            fetch = self._pop(s3key)
            if fetch is None:
                return
            fetch.future.cancel()
            self._fill()
