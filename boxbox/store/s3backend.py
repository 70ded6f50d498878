"""`ObjectStore` over an S3-compatible bucket: the store with no local discs at all.

Keys are `<prefix>/<key>` in the bucket. Redundancy is the object store's job (replication
or erasure coding in the cluster): boxbox adds none, so `usage_blocks` is the object's
stored size in 4 KiB blocks with no RAID overhead, and `verify` cannot repair anything: it
only tells a good object from a damaged one.

Every object carries its own checksum in a trailer, because the checksum must survive
what S3 headers do not: a multipart upload's ETag is not a digest of the content,
`x-amz-checksum-sha256` is not honoured by every S3-compatible store (SeaweedFS among
them), and user metadata needs a HEAD per object to read back. A trailer (not a header)
because a streamed upload learns its digest only at the end.

Trailer byte layout (little-endian), after the payload:

    offset  size  field
    0       4     magic b"BXST"
    4       2     version (1)
    6       2     reserved, zero
    8       8     payload length
    16      32    SHA-256 of the payload

Requests per stored object: one PUT (multipart above the client's part size). Objects are
created with `If-None-Match: *`, so a new id never replaces an object and no HEAD is needed
before; sizes of objects written or read are remembered, so usage needs no HEAD either.
New objects of a batch (`commit(durable=False)`) are sent by writer threads (a big one's last
part and CompleteMultipartUpload too) and awaited at the store's barrier (`sync`), so a session
does not wait for each PUT in turn. A sync's rewrites (directories) go out in parallel (`commit_all`).
A read is one ranged GET of the first `SMALL` bytes: a small object (most of them) is then
checked against its trailer and served from memory; a bigger one continues with ranged GETs.
A read-only session reading objects in ascending id order (a restore: ids follow upload
order) has the next ones fetched ahead in the background (`prefetch`, used by the account), as many
at once as READ_AHEAD_BYTES of memory allows; a fetch ahead that failed is read again in the foreground,
so the read raises the store's own error.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import struct
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, NamedTuple

from boxbox import magic
from boxbox.errors import (
    ConfigError, FormatError, IntegrityError, NotFound, PermissionDenied, PreconditionFailed, StorageError,
)
from boxbox.store.backend import PutStream, Verified, check_key
from boxbox.store.info import BLOCK_SIZE
from boxbox.store.lease import LeaseSettings

if TYPE_CHECKING:
    from boxbox.s3.client import S3Client, S3Settings

MAGIC = magic.S3_TRAILER
VERSION = 1
SUPPORTED_VERSIONS = (1,)
TRAILER = struct.Struct("<4sHHQ32s")
assert TRAILER.size == 48
#: First read of every object; anything up to this size is fetched, checked and served in one GET.
SMALL = 1 << 20
#: Sizes remembered; past this the cache starts over (a few MB of memory).
SIZE_CACHE = 200_000
#: Keys a read-only session's read-ahead keeps track of (started or waiting to start): a GET costs ~1 ms of
#: latency, which a restore otherwise pays per file. The client's fetcher sends them (`S3Client.fetch_ahead`).
READ_AHEAD = 32
#: Bytes of read-ahead held at once: fetched and not yet taken, plus SMALL for each fetch in flight (its
#: size is unknown until it lands). Keys beyond wait for room, so memory stays bounded whatever the sizes.
READ_AHEAD_BYTES = 16 << 20
#: Bytes per ranged GET of a big object (the client's default is 1 MiB): 4 MiB read 15 MB objects
#: at ~280 MB/s instead of ~160 on loopback SeaweedFS.
BIG_READ = 4 << 20
#: New objects of a batch are sent by writer threads while the session goes on (a PUT is ~1-2 ms
#: of latency each), and awaited at the batch's barrier (`sync`) before a directory lists them.
#: 32 threads rather than 8: `benchmarks/s3.py --quick`, S3 backup median 2.40 s against 2.47 s
#: (three interleaved runs each, noisy); SeaweedFS alone takes ~1,000 PUTs/s whatever the threads.
WRITE_BEHIND_THREADS = 32
WRITE_BEHIND_BYTES = 32 << 20
#: A sync's rewrites (its directories, usually one to three) are sent at once by these threads.
REWRITE_THREADS = 8


class S3Store(NamedTuple):
    """A parsed `[s3 NAME]` section: where the bucket is, and the lease timings of its accounts."""

    name: str
    settings: "S3Settings"
    prefix: str
    lease: LeaseSettings

    @classmethod
    def from_config(cls, name: str, values: dict[str, Any], source: str) -> "S3Store":
        """Build from a parsed `[s3 NAME]` section; errors name `source:s3 NAME.key`."""
        from boxbox.s3.client import S3Settings

        where = f"{source}:s3 {name}"
        lease = LeaseSettings(values["lease_time"], values["clock_skew"])
        if not 0 < 2 * lease.skew < lease.duration:
            raise ConfigError(f"{where}.clock_skew: {lease.skew:g} s must be above 0 and under half of "
                              f"lease_time ({lease.duration:g} s)")
        endpoint = values["endpoint"]
        if endpoint.startswith("http://") and not values["allow_http"]:
            raise ConfigError(f"{where}.endpoint: {endpoint} is plain http",
                              hint="use https, or set allow_http = yes on a network you trust")
        ca = values["ca_certificate"]
        settings = S3Settings(endpoint=endpoint, bucket=values["bucket"], region=values["region"],
                              access_key=values["access_key"],
                              secret_key=read_secret(values["secret_key_file"], f"{where}.secret_key_file"),
                              addressing=values["addressing"], ca_file=str(ca) if ca else None,
                              allow_http=values["allow_http"], read_ahead=BIG_READ)
        return cls(name, settings, values["prefix"].strip("/"), lease)


def read_secret(path: Path, where: str) -> str:
    """The S3 secret key: a regular file readable by its owner only (checked like the keys file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"{where}: cannot open {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise PermissionDenied(f"{where}: {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}, "
                                   "expected 0600)", hint=f"chmod 600 {path}")
        secret = f.read(4096).decode("utf-8", "replace").strip()
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return secret


def seal(payload: bytes | bytearray | memoryview) -> bytes:
    """Payload + trailer, for a small object written in one go."""
    return bytes(payload) + trailer(len(payload), hashlib.sha256(payload).digest())


def trailer(length: int, digest: bytes) -> bytes:
    return TRAILER.pack(MAGIC, VERSION, 0, length, digest)


def parse_trailer(data: bytes, size: int, where: str) -> tuple[int, bytes]:
    """(payload length, SHA-256) from the last TRAILER.size bytes of an object of `size` bytes."""
    if size < TRAILER.size or len(data) != TRAILER.size:
        raise FormatError(f"{where}: object of {size} bytes, expected at least {TRAILER.size}")
    magic_, version, _, length, digest = TRAILER.unpack(data)
    if magic_ != MAGIC:
        raise FormatError(f"{where}: trailer magic {magic_!r}, expected {MAGIC!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{where}: trailer version {version}, expected one of {SUPPORTED_VERSIONS}")
    if length != size - TRAILER.size:
        raise FormatError(f"{where}: trailer says {length} bytes of payload, the object holds {size - TRAILER.size}")
    return length, digest


class _Put:
    """Buffers up to the part size and sends one PUT; beyond that streams a multipart upload."""

    def __init__(self, store: "S3ObjectStore", key: str, exclusive: bool) -> None:
        self._store = store
        self._key = key
        self._exclusive = exclusive
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._writer = None  # type: ignore[var-annotated]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self._hash.update(data)
        self._size += n
        if self._writer is not None:
            self._writer.write(data)
        else:
            self._buf += data
            if len(self._buf) >= self._store.client.settings.part_size:
                self._writer = self._store.client.writer(self._key, if_none_match=self._exclusive)
                self._writer.write(self._buf)
                self._buf = bytearray()
        return n

    def commit(self, durable: bool = True) -> None:
        """Send it. `durable=False` (a new id) sends it, or the multipart upload's last part and completion, in
        the background: `sync` waits for it, and until then this server's own reads and writes of the key
        wait for it too."""
        tail = trailer(self._size, self._hash.digest())
        self._hash.update(tail)  # now the SHA-256 of the whole object, for the PUT: one pass over the bytes, not two
        self._store.settle(self._key)  # an earlier write of the key lands first
        store, key, size = self._store, self._key, self._size + TRAILER.size
        if self._writer is not None:
            self._writer.write(tail)
            if durable:
                self._complete()
                store.landed(key, size)
            else:
                from boxbox.s3.multipart import PARTS_IN_FLIGHT

                # held until it lands: the last part and the parts still in flight
                held = store.client.settings.part_size * (PARTS_IN_FLIGHT + 1)
                self.pending = store.send_behind(key, size, self._complete, held)
        else:
            self._buf += tail
            send = functools.partial(store.send, key, self._buf, self._exclusive, self._hash.digest())
            if durable:
                send()
                store.landed(key, size)
            else:
                self.pending = store.send_behind(key, size, send, size)
        self._buf = bytearray()

    def _complete(self) -> None:
        """The multipart upload's last part and CompleteMultipartUpload."""
        try:
            self._writer.commit()  # type: ignore[union-attr]
        except PreconditionFailed:
            raise self._store.exists_error(self._key) from None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._buf = bytearray()


class _Window(io.RawIOBase):
    """The payload of a big object: its first SMALL bytes already read, the rest by ranged GETs."""

    def __init__(self, client: "S3Client", key: str, head: bytes) -> None:
        super().__init__()
        self._client = client
        self._key = key
        self._head = head
        self._raw: BinaryIO | None = None
        self._size = -1
        self._pos = 0

    def _opened(self) -> BinaryIO:
        if self._raw is None:
            self._raw = self._client.open(self._key)
            self._size = self._raw.seek(0, io.SEEK_END) - TRAILER.size
        return self._raw

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def payload_size(self) -> int:
        self._opened()
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}.get(whence)
        if base is None:
            base = self.payload_size()
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        want = len(b)
        if self._pos + want <= len(self._head) - TRAILER.size:  # surely payload, whatever the size
            b[:want] = self._head[self._pos:self._pos + want]
            self._pos += want
            return want
        raw = self._opened()
        want = max(0, min(want, self._size - self._pos))
        if want == 0:
            return 0
        raw.seek(self._pos)
        data = raw.read(want)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.payload_size() - self._pos
        buf = bytearray(max(0, size))
        n = self.readinto(buf)
        return bytes(buf[:n])

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        super().close()


class _Fetch:
    """A read ahead: its future, and the bytes it counts for in READ_AHEAD_BYTES (SMALL until it lands)."""

    __slots__ = ("future", "held")

    def __init__(self) -> None:
        self.future: Future[bytes]
        self.held = SMALL


class S3ObjectStore:
    """`ObjectStore` on one bucket under one prefix; one per configured `[s3 NAME]`, shared by threads."""

    #: `put(key, exclusive=True)` refuses to replace an object, so callers need not check first.
    exclusive_create = True

    def __init__(self, client: "S3Client", prefix: str, name: str = "s3") -> None:
        self.client = client
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.name = name
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ahead: OrderedDict[str, _Fetch] = OrderedDict()  # started, oldest first
        self._held = 0  # bytes the read-ahead holds: see _ahead_bytes
        self._wanted: OrderedDict[str, None] = OrderedDict()  # asked for, waiting for room in READ_AHEAD_BYTES
        self._ahead_lock = threading.RLock()  # a fetch's done-callback may run in the thread that started it
        self._pending: dict[str, Future[Any]] = {}  # PUTs sent behind, not yet landed (or failed, until synced)
        self._writers: ThreadPoolExecutor | None = None
        self._rewriters: ThreadPoolExecutor | None = None
        self._room = threading.Condition()
        self._in_flight = 0

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def label(self, s3key: str) -> str:
        return f"s3 store {self.name}: {s3key[len(self.prefix):]}"

    def remember(self, s3key: str, size: int) -> None:
        with self._lock:
            if len(self._sizes) >= SIZE_CACHE:
                self._sizes.clear()
            self._sizes[s3key] = size

    def prefetch(self, keys: list[str]) -> None:
        """Start reading `keys` (the first SMALL bytes of each) in the background, for `get` to take: as many
        at once as READ_AHEAD_BYTES has room for, the rest as reads are taken."""
        with self._ahead_lock:
            for key in keys:
                s3key = self._key(key)
                if s3key not in self._ahead:
                    self._wanted[s3key] = None
            while len(self._ahead) + len(self._wanted) > READ_AHEAD:  # never taken (skipped ids): oldest go
                if self._ahead:
                    fetch = self._ahead.popitem(last=False)[1]
                    self._held -= fetch.held
                    fetch.future.cancel()
                else:
                    self._wanted.popitem(last=False)
            self._fill_ahead()

    def _ahead_bytes(self) -> int:
        """The read-ahead's memory: bytes fetched and not taken, SMALL for each fetch still running."""
        return self._held

    def _fill_ahead(self) -> None:
        """Start waiting keys, oldest first, while they fit in READ_AHEAD_BYTES (one at least when none runs)."""
        with self._ahead_lock:
            while self._wanted and (not self._ahead or self._held + SMALL <= READ_AHEAD_BYTES):
                s3key, _ = self._wanted.popitem(last=False)
                fetch = _Fetch()
                self._ahead[s3key] = fetch
                self._held += SMALL
                fetch.future = self.client.fetch_ahead(s3key, 0, SMALL)
                fetch.future.add_done_callback(functools.partial(self._landed_ahead, s3key, fetch))

    def _landed_ahead(self, s3key: str, fetch: "_Fetch", future: "Future[bytes]") -> None:
        """A fetch ahead ended: count its real size instead of SMALL (landing small frees room), start more."""
        if future.cancelled():
            return
        with self._ahead_lock:
            if self._ahead.get(s3key) is fetch:
                size = len(future.result()) if future.exception() is None else 0
                self._held += size - fetch.held
                fetch.held = size
            self._fill_ahead()

    def _pop_ahead(self, s3key: str) -> "_Fetch | None":
        """Take `s3key` out of the read-ahead (started or waiting); the caller holds _ahead_lock."""
        fetch = self._ahead.pop(s3key, None)
        self._wanted.pop(s3key, None)
        if fetch is not None:
            self._held -= fetch.held
        return fetch

    def _take_ahead(self, s3key: str) -> bytes | None:
        with self._ahead_lock:
            fetch = self._pop_ahead(s3key)  # not started yet: read in the foreground now
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
            self._fill_ahead()  # once it has landed: until then its bytes are still held

    def _drop_ahead(self, s3key: str) -> None:
        with self._ahead_lock:
            fetch = self._pop_ahead(s3key)
            if fetch is None:
                return
            fetch.future.cancel()
            self._fill_ahead()

    def forget(self, prefix: str) -> None:
        """Drop remembered sizes under `prefix`: another server may have written there (a lease changed hands)."""
        start = self._key(prefix) + "/"
        with self._lock:
            for k in [k for k in self._sizes if k.startswith(start)]:
                del self._sizes[k]

    # ------------------------------------------------------------ ObjectStore
    def put(self, key: str, exclusive: bool = False) -> PutStream:
        return _Put(self, self._key(key), exclusive)

    def get(self, key: str) -> BinaryIO:
        s3key = self._key(key)
        self.settle(s3key)
        try:
            head = self._take_ahead(s3key)
            if head is None:
                head = self.client.get_object(s3key, 0, SMALL)
        except NotFound:
            raise NotFound(self.label(s3key)) from None
        if len(head) < SMALL:
            self.remember(s3key, len(head))
            return io.BytesIO(self._checked(s3key, head))
        return _Window(self.client, s3key, head)  # type: ignore[return-value]

    def _checked(self, s3key: str, data: bytes) -> bytes:
        length, digest = parse_trailer(data[-TRAILER.size:], len(data), self.label(s3key))
        payload = data[:length]
        if hashlib.sha256(payload).digest() != digest:
            raise IntegrityError(f"{self.label(s3key)}: SHA-256 of the {length} bytes stored does not match "
                                 "the object's trailer")
        return payload

    def sync(self, puts: list[PutStream]) -> None:
        """The barrier: wait for every PUT sent in the background by these commits; the first error is raised."""
        first: BaseException | None = None
        for put in puts:
            pending = getattr(put, "pending", None)
            if pending is None:
                continue
            try:
                self._wait(*pending)
            except BaseException as e:  # noqa: BLE001 - wait for the rest, then raise the first
                first = first or e
        if first is not None:
            raise first

    def commit_all(self, puts: list[PutStream]) -> None:
        """Commit rewrites (a sync's directories, reverse patches) with their PUTs in parallel rather than one
        after another; each object is its old or its new version whatever fails. The first error is raised
        once all have ended."""
        if len(puts) == 1:
            puts[0].commit()
            return
        with self._lock:
            if self._rewriters is None:
                self._rewriters = ThreadPoolExecutor(REWRITE_THREADS, thread_name_prefix=f"s3 rewrite {self.name}")
        futures = [self._rewriters.submit(put.commit) for put in puts]
        wait(futures)
        failed = [(put, f.exception()) for put, f in zip(puts, futures) if f.exception() is not None]
        for put, _ in failed:
            put.abort()
        if failed:
            raise failed[0][1]  # type: ignore[misc]

    # ------------------------------------------------------------ writing behind
    def exists_error(self, s3key: str) -> StorageError:
        return StorageError(f"{self.label(s3key)} already exists; a new object never replaces one",
                            hint="run `boxbox accounts check --fix` on the account")

    def send(self, s3key: str, data: bytes | bytearray, exclusive: bool, sha256: bytes) -> str:
        try:
            return self.client.put_object(s3key, data, if_none_match=exclusive, sha256=sha256)
        except PreconditionFailed:
            raise self.exists_error(s3key) from None

    def landed(self, s3key: str, size: int) -> None:
        self.remember(s3key, size)
        self._drop_ahead(s3key)

    def send_behind(self, s3key: str, size: int, send: Callable[[], object], held: int) -> tuple[str, "Future[Any]"]:
        """Run `send` (storing `size` bytes under `s3key`) on a writer thread; `held`: the bytes it keeps in memory
        until done (at most WRITE_BEHIND_BYTES in flight: beyond, wait)."""
        with self._room:
            while self._in_flight and self._in_flight + held > WRITE_BEHIND_BYTES:
                self._room.wait()
            self._in_flight += held
            if self._writers is None:
                self._writers = ThreadPoolExecutor(WRITE_BEHIND_THREADS, thread_name_prefix=f"s3 writer {self.name}")
            future = self._writers.submit(send)
            self._pending[s3key] = future

        def done(f: "Future[Any]") -> None:
            with self._room:
                self._in_flight -= held
                self._room.notify_all()
                if f.exception() is None:
                    if self._pending.get(s3key) is f:
                        del self._pending[s3key]
                    self.landed(s3key, size)

        future.add_done_callback(done)
        return s3key, future

    def _wait(self, s3key: str, future: "Future[Any]") -> None:
        try:
            future.result()
        finally:
            with self._room:
                if self._pending.get(s3key) is future:
                    del self._pending[s3key]

    def settle(self, s3key: str) -> None:
        """Wait for a PUT of `s3key` still in flight (its error, if any, is left for `sync` to raise)."""
        future = self._pending.get(s3key)
        if future is not None:
            wait([future])

    def _settle_under(self, start: str) -> None:
        wait([f for k, f in list(self._pending.items()) if k.startswith(start)])

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """A small object's payload and its ETag, for a later `put_if` (HEAD first: a newer body with an
        older tag only makes the conditional write fail, never succeed wrongly)."""
        s3key = self._key(key)
        self.settle(s3key)
        try:
            etag = self.client.head_object(s3key).etag
            data = self.client.get_object(s3key)
        except NotFound:
            raise NotFound(self.label(s3key)) from None
        self.remember(s3key, len(data))
        return self._checked(s3key, data), etag

    def put_if(self, key: str, data: bytes, etag: str | None) -> str:
        """Write a small object only if it is still the version `etag` (None: unconditionally); its new ETag.
        PreconditionFailed if it changed."""
        s3key = self._key(key)
        self.settle(s3key)
        sealed = seal(data)
        new = self.client.put_object(s3key, sealed, if_match=etag)
        self.landed(s3key, len(sealed))
        return new

    def delete(self, key: str) -> None:
        """Remove `key`. Unlike a disc set, a missing key is not an error (S3 cannot tell without a HEAD)."""
        s3key = self._key(key)
        self.settle(s3key)
        self.client.delete_object(s3key)
        self._drop_ahead(s3key)
        with self._lock:
            self._sizes.pop(s3key, None)

    def exists(self, key: str) -> bool:
        try:
            self._size(self._key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        start = self._key(prefix) + "/"
        self._settle_under(start)
        for info in self.client.list_objects(start):
            self.remember(info.key, info.size)
            yield info.key[len(self.prefix):]

    def _size(self, s3key: str) -> int:
        self.settle(s3key)
        size = self._sizes.get(s3key)
        if size is None:
            try:
                size = self.client.head_object(s3key).size
            except NotFound:
                raise NotFound(self.label(s3key)) from None
            self.remember(s3key, size)
        return size

    def usage_blocks(self, key: str) -> int:
        """The stored size in 4 KiB blocks; no redundancy overhead is ours to count."""
        return -(-self._size(self._key(key)) // BLOCK_SIZE)

    def blocks_for_length(self, length: int) -> int:
        return -(-(length + TRAILER.size) // BLOCK_SIZE)

    def verify(self, key: str, repair: bool) -> Verified:
        """Read the whole object and check its SHA-256; nothing to repair from (the cluster's redundancy is below us)."""
        s3key = self._key(key)
        self.settle(s3key)
        try:
            f = self.client.open(s3key)
        except NotFound:
            return Verified(False, False, False, f"{self.label(s3key)}: missing")
        try:
            size = f.seek(0, io.SEEK_END)
            if size < TRAILER.size:
                raise FormatError(f"{self.label(s3key)}: object of {size} bytes, expected at least {TRAILER.size}")
            f.seek(size - TRAILER.size)
            length, digest = parse_trailer(f.read(TRAILER.size), size, self.label(s3key))
            f.seek(0)
            h = hashlib.sha256()
            left = length
            while left:
                chunk = f.read(min(left, SMALL))
                if not chunk:
                    raise FormatError(f"{self.label(s3key)}: ended {left} bytes early")
                h.update(chunk)
                left -= len(chunk)
        except (FormatError, IntegrityError, NotFound) as e:
            return Verified(False, False, False, str(e))
        finally:
            f.close()
        if h.digest() != digest:
            return Verified(False, False, False, f"{self.label(s3key)}: SHA-256 does not match the trailer")
        return Verified(True, True, False, f"{self.label(s3key)}: SHA-256 ok")
