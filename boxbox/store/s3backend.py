"""`ObjectStore` over an S3-compatible bucket: the store with no local discs at all.

Keys are `<prefix>/<key>` in the bucket. Redundancy is the object store's job (replication
or erasure coding in the cluster): boxbox adds none, so `usage_blocks` is the object's
stored size in 4 KiB blocks with no RAID overhead, and `verify` cannot repair anything: it
only tells a good object from a damaged one.

Every object carries its own checksum in a trailer (layout in s3pack.py), because the checksum
must survive what S3 headers do not: a multipart upload's ETag is not a digest of the content,
`x-amz-checksum-sha256` is not honoured by every S3-compatible store (SeaweedFS among them), and
user metadata needs a HEAD per object to read back. A trailer (not a header) because a streamed
upload learns its digest only at the end.

Requests per stored object: one PUT (multipart above the client's part size). Objects are
created with `If-None-Match: *`, so a new id never replaces an object and no HEAD is needed
before; sizes of objects written or read are remembered, so usage needs no HEAD either.
New objects of a batch (`commit(durable=False)`) are sent by writer threads (a big one's last
part and CompleteMultipartUpload too) and awaited at the store's barrier (`sync`), so a session
does not wait for each PUT in turn. A sync's rewrites (directories) go out in parallel (`commit_all`).

Packs: a new object of a batch up to PACK_MEMBER bytes named by an object id is held in memory
until its `sync`, which sends the batch's members as one pack per shard directory (s3pack.py;
SeaweedFS spends ~0.38 ms of CPU per request whatever its size). A standalone object always wins
over a member of the same name, so rewrites stay plain PUTs and a read tries the standalone object
first unless a view says the key is a member. What a shard holds is known from its view: one LIST
plus the index of each pack in it (indexes are immutable, kept apart), kept up to date with this
server's own changes and dropped when another server may have changed it: when this server takes
an account's write lease (`forget`) and when a session starts (its read of the account's info).
Deleting a member writes the other live members of its pack standalone, deletes the pack, then
the key's standalone object: each state in between reads the same, and nothing deleted comes back.

A read is one ranged GET of the first `SMALL` bytes: a small object (most of them) is then
checked against its trailer and served from memory; a bigger one continues with ranged GETs.
A read-only session reading objects in ascending id order (a restore: ids follow upload
order) has the next ones fetched ahead in the background (`prefetch`, used by the account; s3ahead.py), a
pack once for all its members, within a bound of memory; a fetch ahead that failed is read again
in the foreground, so the read raises the store's own error.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import logging
import os
import stat
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, NamedTuple

from boxbox.errors import (
    BoxboxError, ConfigError, FormatError, IntegrityError, NotFound, PermissionDenied, PreconditionFailed,
    ProgrammingError, StorageError,
)
from boxbox.store.backend import PutStream, Verified, check_key
from boxbox.store.info import BLOCK_SIZE
from boxbox.store.lease import LeaseSettings
from boxbox.store.s3ahead import ReadAhead
from boxbox.store.s3pack import (
    TRAILER, Entry, Location, ShardView, build, checked, index_start, is_id_name, is_pack_name, pack_name,
    parse_index, parse_trailer, seal, trailer,
)

if TYPE_CHECKING:
    from boxbox.s3.client import S3Client, S3Settings

log = logging.getLogger(__name__)

#: First read of every object; anything up to this size is fetched, checked and served in one GET.
SMALL = 1 << 20
#: Sizes remembered; past this the cache starts over (a few MB of memory).
SIZE_CACHE = 200_000
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
#: New objects of a batch up to this size (payload + trailer) are held until `sync` and then sent as one pack
#: per shard directory (s3pack.py): a restore then reads ~64 of them with one GET instead of 64.
PACK_MEMBER = 256 << 10
#: A sync's members in one directory beyond this go into another pack: the read-ahead fetches a pack whole,
#: within its READ_AHEAD_BYTES (s3ahead.py).
PACK_BYTES = 4 << 20
#: Members held store-wide waiting for their sync; beyond, a new object is sent on its own as before.
HELD_BYTES = 64 << 20
#: Shard views kept (a LIST of up to 256 names and the indexes of its packs); past this the cache starts over.
VIEWS = 4096
#: Pack indexes kept (a pack is never rewritten, only deleted, so an index never goes stale).
INDEXES = 16384
#: The last bytes of a pack read to find its index: 64 members take 1.6 kB of it.
INDEX_TAIL = 8 << 10


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
        #: the key, if commit(durable=False) left the object held for `sync` to send in a pack
        self.held: str | None = None

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
        if self._exclusive:
            store.check_new(key)
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
            if not durable and self._exclusive and size <= PACK_MEMBER and store.hold(key, bytes(self._buf)):
                self.held = key
                self._buf = bytearray()
                return
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
        self.ahead = ReadAhead(client, self.prefix, SMALL)
        self._pending: dict[str, Future[Any]] = {}  # PUTs sent behind, not yet landed (or failed, until synced)
        self._writers: ThreadPoolExecutor | None = None
        self._rewriters: ThreadPoolExecutor | None = None
        self._room = threading.Condition()
        self._in_flight = 0
        # Packs (s3pack.py). Under _lock: the shard views; a generation per shard, bumped by every change this
        # server makes there, so a view LISTed while one landed is used once but not kept (it may miss it);
        # the immutable pack indexes; the members held until their sync, and their bytes.
        self._views: dict[str, ShardView] = {}
        self._gens: dict[str, int] = {}
        self._epoch = 0  # bumped when the generations start over: a load begun before is not kept
        self._loading: dict[str, int] = {}  # shards being LISTed, by how many threads
        self._count = itertools.count(1)
        self._indexes: OrderedDict[str, dict[str, Entry]] = OrderedDict()
        self._members: dict[str, bytes] = {}
        self._members_bytes = 0

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def label(self, s3key: str) -> str:
        return f"s3 store {self.name}: {s3key[len(self.prefix):]}"

    def remember(self, s3key: str, size: int) -> None:
        with self._lock:
            if len(self._sizes) >= SIZE_CACHE:
                self._sizes.clear()
            self._sizes[s3key] = size

    # ------------------------------------------------------------ shard views
    @staticmethod
    def _shard(s3key: str) -> tuple[str, str] | None:
        """(directory, name) of a key that may be a pack member (an object id); None for any other key."""
        shard, _, name = s3key.rpartition("/")
        return (shard, name) if shard and is_id_name(name) else None

    def _changed(self, shard: str, change: Callable[[ShardView], object] | None = None) -> None:
        """Record a change this server made in `shard` (S3 has it already): applied to the view if one is kept."""
        with self._lock:
            if len(self._gens) >= 16 * VIEWS:
                self._gens.clear()
                self._views.clear()
                self._epoch += 1
            self._gens[shard] = next(self._count)
            view = self._views.get(shard)
            if view is not None and change is not None:
                change(view)

    def _stale(self, shard: str) -> None:
        """Drop a view found out of date (another server changed the shard), and any load of it under way."""
        with self._lock:
            self._gens[shard] = next(self._count)
            self._views.pop(shard, None)

    def _drop_views(self, start: str) -> None:
        """Forget the views of every shard under `start` (another server may have changed them), and keep none
        being LISTed now."""
        with self._lock:
            for shard in [s for s in [*self._views, *self._loading] if (s + "/").startswith(start)]:
                self._gens[shard] = next(self._count)
                self._views.pop(shard, None)

    def _view(self, shard: str) -> tuple[ShardView, bool]:
        """The shard's view, and whether it was LISTed just now (False: kept from before)."""
        with self._lock:
            view = self._views.get(shard)
            if view is not None:
                return view, False
            gen, epoch = self._gens.get(shard, 0), self._epoch
            self._loading[shard] = self._loading.get(shard, 0) + 1
        start = shard + "/"
        try:
            for _ in range(3):
                plain: dict[str, int] = {}
                packs: dict[str, int] = {}
                for info in self.client.list_objects(start):
                    name = info.key[len(start):]
                    if "/" not in name:
                        (packs if is_pack_name(name) else plain)[name] = info.size
                indexes = self._load_indexes(start, packs)
                if len(indexes) == len(packs):
                    break
                # a pack deleted since the LIST: its live members were written standalone first, list again
            view = ShardView(plain, {p: (packs[p], i) for p, i in indexes.items() if i is not None})
        finally:
            with self._lock:
                left = self._loading.pop(shard) - 1
                if left:
                    self._loading[shard] = left
        with self._lock:
            if self._gens.get(shard, 0) == gen and self._epoch == epoch:
                if len(self._views) >= VIEWS:
                    self._views.clear()
                self._views[shard] = view
        return view, True

    def _load_indexes(self, start: str, packs: dict[str, int]) -> dict[str, dict[str, Entry] | None]:
        """The member index of each pack (name -> size) under `start`; a pack gone is left out, a damaged one is
        None (logged: its members read as missing, and `list` shows the pack itself, for `check` to report)."""
        found: dict[str, dict[str, Entry] | None] = {}
        with self._lock:
            for name in packs:
                index = self._indexes.get(start + name)
                if index is not None:
                    found[name] = index
        # the missing ones all at once, on the read-ahead's connections
        tails = {name: self.client.fetch_ahead(start + name, max(0, size - INDEX_TAIL), size)
                 for name, size in packs.items() if name not in found}
        for name, future in tails.items():
            s3key, size = start + name, packs[name]
            try:
                try:
                    tail = future.result()
                except NotFound:
                    raise
                except Exception:  # noqa: BLE001 - read it again through the client, with its retries
                    tail = self.client.get_object(s3key, max(0, size - INDEX_TAIL), size)
                begin = index_start(tail, size, self.label(s3key))
                if size - begin > len(tail):
                    tail = self.client.get_object(s3key, begin, size)
                entries = parse_index(tail, size, self.label(s3key))
            except NotFound:
                continue
            except (FormatError, IntegrityError) as e:
                log.warning("%s; its members cannot be read", e)
                found[name] = None
                continue
            found[name] = self._keep_index(s3key, {f"{i:016x}": e for i, e in entries.items()})
        return found

    def _keep_index(self, s3key: str, index: dict[str, Entry]) -> dict[str, Entry]:
        with self._lock:
            self._indexes[s3key] = index
            while len(self._indexes) > INDEXES:
                self._indexes.popitem(last=False)
        return index

    def _locate(self, s3key: str) -> tuple[Location | None, bool]:
        """The pack member a read of an id key gets (None: read the standalone object), and whether the
        view was LISTed just now."""
        shard, name = self._shard(s3key)  # type: ignore[misc]
        view, fresh = self._view(shard)
        return view.where(name), fresh

    # ------------------------------------------------------------ read-ahead
    def prefetch(self, keys: list[str]) -> None:
        """Start reading `keys` (the first SMALL bytes of each, or the pack holding it) in the background, for `get`
        to take (s3ahead.ReadAhead)."""
        found: list[tuple[str, Location | None]] = []
        for key in keys:  # views are LISTed outside the lock: landing fetches take it
            s3key = self._key(key)
            if s3key in self._members:  # (held: read from memory)
                continue
            loc = None
            if self._shard(s3key) is not None:
                try:
                    loc = self._locate(s3key)[0]
                except BoxboxError:  # (fetched as a standalone object: the read finds the error again)
                    pass
            found.append((s3key, loc))
        self.ahead.want(found)

    def forget(self, prefix: str) -> None:
        """Drop remembered sizes and shard views under `prefix`: another server may have written there (a lease
        changed hands)."""
        start = self._key(prefix) + "/"
        with self._lock:
            for k in [k for k in self._sizes if k.startswith(start)]:
                del self._sizes[k]
        self._drop_views(start)

    # ------------------------------------------------------------ ObjectStore
    def put(self, key: str, exclusive: bool = False) -> PutStream:
        s3key = self._key(key)
        if is_pack_name(s3key.rpartition("/")[2]):
            raise ProgrammingError(f"{self.label(s3key)}: names pack~<16 hex digits> are the store's own")
        return _Put(self, s3key, exclusive)

    def get(self, key: str) -> BinaryIO:
        s3key = self._key(key)
        self.settle(s3key)
        held = self._members.get(s3key)
        if held is not None:
            return io.BytesIO(checked(held, self.label(s3key)))
        shard = self._shard(s3key)
        if shard is None:
            # reading an account's info is how every session starts: from here on this server's views of the
            # account are as new as that (another server may have written while it held the lease)
            self._drop_views(s3key.rpartition("/")[0] + "/")
            return self._get_plain(s3key)
        with self._lock:
            view = self._views.get(shard[0])
        loc = None if view is None else view.where(shard[1])
        if loc is not None:
            data = self._member(s3key, loc)
            if data is not None:
                return io.BytesIO(data)
        try:  # a standalone object wins over a member, so it is read first unless a view says otherwise
            return self._get_plain(s3key)
        except NotFound:
            self._stale(shard[0])  # a view kept may predate a pack another server wrote
        loc, _ = self._locate(s3key)
        data = None if loc is None else self._member(s3key, loc)
        if data is None:
            raise NotFound(self.label(s3key))
        return io.BytesIO(data)

    def _get_plain(self, s3key: str) -> BinaryIO:
        try:
            head = self.ahead.take(s3key)
            if head is None:
                head = self.client.get_object(s3key, 0, SMALL)
        except NotFound:
            raise NotFound(self.label(s3key)) from None
        if len(head) < SMALL:
            self.remember(s3key, len(head))
            return io.BytesIO(checked(head, self.label(s3key)))
        return _Window(self.client, s3key, head)  # type: ignore[return-value]

    def _member(self, s3key: str, loc: Location) -> bytes | None:
        """A pack member's payload, checked; None if the pack is gone (the view is then dropped)."""
        shard = s3key.rpartition("/")[0]
        entry = loc.entry
        data = self.ahead.take_member(s3key, entry)
        if data is None:
            try:
                data = self.client.get_object(f"{shard}/{loc.pack}", entry.offset, entry.offset + entry.length)
            except NotFound:
                self._stale(shard)
                return None
        if len(data) != entry.length:
            raise FormatError(f"{self.label(s3key)}: {len(data)} bytes read from {loc.pack}, its index says "
                              f"{entry.length}")
        return checked(data, self.label(s3key))

    def sync(self, puts: list[PutStream]) -> None:
        """The barrier: send the held members of these commits as packs, wait for every PUT sent in the background
        by them; the first error is raised."""
        first: BaseException | None = None
        held = [put for put in puts if getattr(put, "held", None) is not None]
        if held:
            try:
                # Sent here, not at their commit: the lease is checked by the caller's guard
                # (`locks.GuardedStore.sync`), as the members' ids have no If-None-Match of their own.
                self._send_packs([put.held for put in held])  # type: ignore[attr-defined]
            except BaseException as e:  # noqa: BLE001 - wait for the rest, then raise the first
                first = e
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
        futures = [self._rewriter().submit(put.commit) for put in puts]
        wait(futures)
        failed = [(put, f.exception()) for put, f in zip(puts, futures) if f.exception() is not None]
        for put, _ in failed:
            put.abort()
        if failed:
            raise failed[0][1]  # type: ignore[misc]

    def _rewriter(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._rewriters is None:
                self._rewriters = ThreadPoolExecutor(REWRITE_THREADS, thread_name_prefix=f"s3 rewrite {self.name}")
            return self._rewriters

    def _all(self, calls: list[Callable[[], object]]) -> None:
        """Run `calls` in parallel on the rewrite threads; the first error is raised once all have ended."""
        if len(calls) == 1:
            calls[0]()
            return
        futures = [self._rewriter().submit(call) for call in calls]
        wait(futures)
        for f in futures:
            if f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    # ------------------------------------------------------------ packs
    def hold(self, s3key: str, data: bytes) -> bool:
        """Keep a new small object (payload + trailer) for its sync to send in a pack; False if it cannot be
        (not an object id, or HELD_BYTES are held already): then it is sent on its own."""
        if self._shard(s3key) is None:
            return False
        with self._lock:
            if self._members_bytes + len(data) > HELD_BYTES:
                return False
            self._members[s3key] = data
            self._members_bytes += len(data)
        return True

    def _unhold(self, s3key: str) -> bytes | None:
        with self._lock:
            data = self._members.pop(s3key, None)
            if data is not None:
                self._members_bytes -= len(data)
        return data

    def check_new(self, s3key: str) -> None:
        """An exclusive write of a key held, or a member of a pack this server knows of, fails as a standalone
        object's would (its If-None-Match cannot see a pack member)."""
        shard = self._shard(s3key)
        if shard is None:
            return
        with self._lock:
            view = self._views.get(shard[0])
            if s3key in self._members or (view is not None and view.size(shard[1]) is not None):
                raise self.exists_error(s3key)

    def _send_packs(self, keys: list[str]) -> None:
        """Send the members held under `keys`: one pack per shard directory (more past PACK_BYTES), in parallel."""
        by_shard: dict[str, list[tuple[str, bytes]]] = {}
        with self._lock:
            for s3key in keys:
                data = self._members.get(s3key)
                if data is not None:  # (deleted, or written over standalone, since)
                    by_shard.setdefault(s3key.rpartition("/")[0], []).append((s3key, data))
        calls: list[Callable[[], object]] = []
        for shard, members in by_shard.items():
            chunk: list[tuple[str, bytes]] = []
            for member in sorted(members):
                if chunk and sum(len(d) for _, d in chunk) + len(member[1]) > PACK_BYTES:
                    calls.append(functools.partial(self._send_pack, shard, chunk))
                    chunk = []
                chunk.append(member)
            calls.append(functools.partial(self._send_pack, shard, chunk))
        self._all(calls)

    def _send_pack(self, shard: str, members: list[tuple[str, bytes]]) -> None:
        """One pack with `If-None-Match`; a member whose name exists already is left out and fails the sync, as
        its own exclusive PUT would have."""
        try:
            view, _ = self._view(shard)
            taken = [k for k, _ in members if view.size(k.rpartition("/")[2]) is not None]
            live = [(int(k.rpartition("/")[2], 16), d) for k, d in members if k not in taken]
            if live:
                name = pack_name(int.from_bytes(os.urandom(8), "big"))
                body = build(live)
                s3key = f"{shard}/{name}"
                try:
                    self.client.put_object(s3key, body, if_none_match=True)
                except PreconditionFailed:
                    raise self.exists_error(s3key) from None
                index = self._keep_index(s3key, {f"{i:016x}": e
                                                 for i, e in parse_index(body, len(body), self.label(s3key)).items()})
                self._changed(shard, lambda v: v.add_pack(name, len(body), index))
            if taken:
                raise self.exists_error(taken[0])
        finally:
            for s3key, _ in members:
                self._unhold(s3key)

    def _unpack(self, shard: str, pack: str, name: str, view: ShardView) -> None:
        """Delete a pack holding `name` without losing its other members: each one live (not shadowed) is written
        standalone first (identical bytes, and a standalone object wins), then the pack goes. Every state in
        between reads the same, and `name` is left only as its standalone object, if any."""
        index = view.packs[pack][1]
        s3key = f"{shard}/{pack}"
        others = [n for n in index if n != name and n not in view.plain]
        if others:
            try:
                body = self.client.get_object(s3key)
            except NotFound:
                body = b""  # gone already (a delete cut short after this step): its members were written
            if body:
                self._all([functools.partial(self._unpacked, shard, n, body[index[n].offset:index[n].offset
                                                                             + index[n].length]) for n in others])
        self.client.delete_object(s3key)
        with self._lock:
            self._indexes.pop(s3key, None)
        self._changed(shard, lambda v: v.drop_pack(pack))

    def _unpacked(self, shard: str, name: str, data: bytes) -> None:
        try:
            self.client.put_object(f"{shard}/{name}", data, if_none_match=True)
        except PreconditionFailed:
            pass  # written standalone already: that one wins anyway
        self._changed(shard, lambda v: v.plain.__setitem__(name, len(data)))

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
        """A standalone object was written: it wins over a member held or packed under its key."""
        self.remember(s3key, size)
        self.ahead.drop(s3key)
        self._unhold(s3key)
        shard = self._shard(s3key)
        if shard is not None:
            self._changed(shard[0], lambda v: v.plain.__setitem__(shard[1], size))

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
        return checked(data, self.label(s3key)), etag

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
        """Remove `key`. Unlike a disc set, a missing key is not an error (S3 cannot tell without a HEAD).

        A pack member: every pack holding it is unpacked first (`_unpack`), then its standalone object goes, so
        a delete cut short anywhere leaves every other object readable and never brings an old version back."""
        s3key = self._key(key)
        self.settle(s3key)
        if self._unhold(s3key) is not None:
            return  # held for its sync: nothing stored yet
        shard = self._shard(s3key)
        if shard is not None:
            view, _ = self._view(shard[0])
            for pack in view.holding(shard[1]):
                self._unpack(shard[0], pack, shard[1], view)
        self.client.delete_object(s3key)
        self.ahead.drop(s3key)
        with self._lock:
            self._sizes.pop(s3key, None)
        if shard is not None:
            self._changed(shard[0], lambda v: v.plain.pop(shard[1], None))

    def exists(self, key: str) -> bool:
        try:
            self._size(self._key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix/`: standalone objects, then the members of packs not shadowed (a pack whose
        index is damaged: the pack), then those held."""
        start = self._key(prefix) + "/"
        self._settle_under(start)
        seen: set[str] = set()
        packs: dict[str, dict[str, int]] = {}
        for info in self.client.list_objects(start):
            shard, _, name = info.key.rpartition("/")
            if is_pack_name(name):
                packs.setdefault(shard + "/", {})[name] = info.size
                continue
            self.remember(info.key, info.size)
            seen.add(info.key)
            yield info.key[len(self.prefix):]
        for shard, found in packs.items():
            for pack, index in self._load_indexes(shard, found).items():
                if index is None:  # damaged: shown as it is, a key `check` reports as stray
                    yield shard[len(self.prefix):] + pack
                    continue
                for name in index:
                    if shard + name not in seen:
                        seen.add(shard + name)
                        yield shard[len(self.prefix):] + name
        with self._lock:
            held = [k for k in self._members if k.startswith(start) and k not in seen]
        for s3key in held:
            yield s3key[len(self.prefix):]

    def _size(self, s3key: str) -> int:
        """The stored size (payload + trailer) of `s3key`, held, packed or standalone; NotFound if none."""
        self.settle(s3key)
        held = self._members.get(s3key)
        if held is not None:
            return len(held)
        size = self._sizes.get(s3key)  # (a standalone object seen, which wins over any member)
        if size is not None:
            return size
        shard = self._shard(s3key)
        if shard is not None:
            size = self._view(shard[0])[0].size(shard[1])
            if size is None:
                raise NotFound(self.label(s3key))
            return size
        try:
            size = self.client.head_object(s3key).size
        except NotFound:
            raise NotFound(self.label(s3key)) from None
        self.remember(s3key, size)
        return size

    def usage_blocks(self, key: str) -> int:
        """The stored size in 4 KiB blocks, a pack member's as if it were standalone; no redundancy overhead is
        ours to count."""
        return -(-self._size(self._key(key)) // BLOCK_SIZE)

    def blocks_for_length(self, length: int) -> int:
        return -(-(length + TRAILER.size) // BLOCK_SIZE)

    def verify(self, key: str, repair: bool) -> Verified:
        """Read the whole object and check its SHA-256; nothing to repair from (the cluster's redundancy is below us)."""
        s3key = self._key(key)
        self.settle(s3key)
        label = self.label(s3key)
        held = self._members.get(s3key)
        if held is not None:
            try:
                checked(held, label)
            except (FormatError, IntegrityError) as e:
                return Verified(False, False, False, str(e))
            return Verified(True, True, False, f"{label}: SHA-256 ok (held for its sync)")
        loc = self._locate(s3key)[0] if self._shard(s3key) is not None else None
        if loc is not None:
            try:
                data = self._member(s3key, loc)
            except (FormatError, IntegrityError) as e:
                return Verified(False, False, False, str(e))
            if data is not None:  # (None: the pack is gone, its live members are standalone now)
                return Verified(True, True, False, f"{label}: SHA-256 ok (in {loc.pack})")
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
