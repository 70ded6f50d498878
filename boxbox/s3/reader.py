"""A read-only, seekable file over one S3 object, for code written against local files.

Reads go through a read-ahead buffer filled by ranged GETs of `read_ahead` bytes, so the
many small reads of a header-then-records parser cost one request per MiB, not one each.
Every GET carries `If-Match` with the ETag seen at open: if the object is replaced while
it is being read, the read fails (PreconditionFailed) rather than mixing two versions.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from boxbox.errors import StorageError

if TYPE_CHECKING:
    from boxbox.s3.client import ObjectInfo, S3Client


class S3Reader(io.RawIOBase):
    """File-like view of `info.key`; `size` and `etag` are those seen when it was opened."""

    def __init__(self, client: S3Client, key: str, info: ObjectInfo) -> None:
        super().__init__()
        self._client = client
        self.key = key
        self.size = info.size
        self.etag = info.etag
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self._read_ahead = max(1, client.settings.read_ahead)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        out = []
        while self._pos < end:
            offset = self._pos - self._buf_start
            if 0 <= offset < len(self._buf):
                piece = self._buf[offset:offset + end - self._pos]
            elif end - self._pos >= self._read_ahead:
                piece = self._fetch(self._pos, end)  # a big read goes straight through
            else:
                self._buf_start = self._pos
                self._buf = self._fetch(self._pos, min(self.size, self._pos + self._read_ahead))
                piece = self._buf[:end - self._pos]
            out.append(piece)
            self._pos += len(piece)
        return b"".join(out)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(memoryview(b).cast("B")))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def _fetch(self, start: int, end: int) -> bytes:
        data = self._client.get_range(self.key, start, end, self.etag)
        if len(data) != end - start:
            raise StorageError(f"S3 GET s3://{self._client.settings.bucket}/{self.key} bytes {start}-{end - 1}: "
                              f"got {len(data)} bytes, expected {end - start} (object changed?)")
        return data

    def close(self) -> None:
        self._buf = b""
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed S3 object file")
