"""Upload streams: a file object encoded block by block as the socket asks for it.

`encode_file` pushes into a sink; an upload must be pulled (`Connection.send_stream`
iterates it), so these generators drive `FileEncoder` one block at a time and hand over
what it wrote. Memory stays one block plus the index, whatever the file size.

A file that changes while it is read must not be stored: the fd's size, mtime and ctime
are compared with the scan's stat before the first byte and after the last. If they
differ, the generator raises `FileChanged` *before* the stream ends, so the transport sends
STREAM_ABORT and the store discards the object (Box Backup stored such files corrupt).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from boxbox.backup.scan import EntryStat
from boxbox.crypto.keys import Keys
from boxbox.objects.attributes import Attributes
from boxbox.objects.file import FileEncoder
from boxbox.objects.index import Index, Reference, delta_blocks
from boxbox.rolling.delta import delta
from boxbox.rolling.layout import block_size_for

#: hand buffered encoder output to the socket once this much has piled up (256 -> 64 KiB: the
#: sink's parts and their join are two copies of it, ~0.4 MiB less peak memory in a big diff)
FLUSH_AT = 64 << 10


class FileChanged(Exception):
    """The file changed between the scan and the end of reading it (internal: never leaves the uploader)."""


class LocalReadError(Exception):
    """Reading the file failed (permissions, I/O error): logged, reported, skipped; internal like FileChanged."""


class _ListSink:
    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.parts.append(bytes(data))
        self.size += len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return out


class RateLimit:
    """At most `rate` bytes per second over the run (0: unlimited): sleeps when ahead."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def spend(self, n: int) -> None:
        if not self.rate:
            return
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def same_file(st: EntryStat | os.stat_result, now: os.stat_result) -> bool:
    """Size, mtime and ctime unchanged (and the same inode)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == \
        (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns)


def _readinto_full(f: BinaryIO, buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _read(f: BinaryIO, buf: memoryview) -> int:
    try:
        return _readinto_full(f, buf)
    except OSError as e:
        raise LocalReadError(f"read failed: {e.strerror or e}") from None


class _Reader:
    """The file as delta() reads it, with read errors turned into LocalReadError."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            return self.f.readinto(buf)  # type: ignore[attr-defined]
        except OSError as e:
            raise LocalReadError(f"read failed: {e.strerror or e}") from None

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except OSError as e:
            raise LocalReadError(f"read failed: {e.strerror or e}") from None


def whole_file(keys: Keys, f: BinaryIO | None, st: EntryStat | os.stat_result, *, container_id: int, name: bytes,
               attributes: Attributes, cipher: str, limit: RateLimit) -> Iterator[bytes]:
    """The encoded object of an open regular file (or, with f None, of an empty one: links, fifos, devices)."""
    sink = _ListSink()
    size = st.st_size if f is not None else 0
    block_size = block_size_for(size)
    enc = FileEncoder(keys, sink, container_id=container_id, name=name, attributes=attributes, cipher=cipher,
                      block_size=block_size)
    if f is not None:
        if not same_file(st, os.fstat(f.fileno())):
            raise FileChanged("changed between the scan and opening it")
        buf = memoryview(bytearray(block_size))
        total = 0
        while n := _read(f, buf):
            total += n
            enc.add_block(buf[:n])
            if sink.size >= FLUSH_AT:
                limit.spend(sink.size)
                yield sink.take()
        if total != st.st_size or not same_file(st, os.fstat(f.fileno())):
            raise FileChanged("changed while it was read")
    enc.finish()
    limit.spend(sink.size)
    yield sink.take()


def diff_file(keys: Keys, f: BinaryIO, st: EntryStat | os.stat_result, index: Index, object_id: int, *,
              container_id: int, name: bytes, attributes: Attributes, cipher: str, limit: RateLimit, deadline: float,
              stats: dict[str, int], keepalive: Callable[[], None] | None = None) -> Iterator[bytes]:
    """A diff upload against `index` (object `object_id`): new data sealed, the rest as references.

    `stats` gets `new_bytes` (clear bytes sent as new blocks) and `ref_blocks`.
    """
    if not same_file(st, os.fstat(f.fileno())):
        raise FileChanged("changed between the scan and opening it")
    sink = _ListSink()
    block_size = block_size_for(st.st_size)
    enc = FileEncoder(keys, sink, container_id=container_id, name=name, attributes=attributes, cipher=cipher,
                      hash_name=index.hash_name, block_size=block_size)
    ops = delta(index.signature(), _Reader(f), deadline=deadline, keepalive=keepalive)
    total = 0
    for block in delta_blocks(index, object_id, ops, block_size):
        if isinstance(block, Reference):
            enc.add_reference(block)
            total += block.entry.clear_size
            stats["ref_blocks"] = stats.get("ref_blocks", 0) + 1
        else:
            enc.add_block(block)
            total += len(block)
            stats["new_bytes"] = stats.get("new_bytes", 0) + len(block)
        if sink.size >= FLUSH_AT:
            limit.spend(sink.size)
            yield sink.take()
    if total != st.st_size or not same_file(st, os.fstat(f.fileno())):
        raise FileChanged("changed while it was read")
    enc.finish()
    limit.spend(sink.size)
    # The finder's lookup tables and the signature refer to each other (rolling/tables.py), so they
    # outlive the delta until a collection finds the cycle: drop the finder (its generator may not have
    # run to its end) and let a young-generation collection (~0.1 ms) free them before the next diff
    # builds its own (full-scale incremental: peak RSS -0.7 MiB).
    del ops
    gc.collect(1)
    yield sink.take()
