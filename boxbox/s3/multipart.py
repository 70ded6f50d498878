"""Streaming writes to S3 with memory bounded by one part.

Data collects in one buffer of `part_size` bytes. If the whole object fits, `commit` sends
it as one PUT; otherwise each full buffer becomes an UploadPart as soon as more data
arrives, and `commit` sends the last part and CompleteMultipartUpload. Parts go out on the
client's part threads, PARTS_IN_FLIGHT at a time, while the next part fills: a part of 8 MiB
takes SeaweedFS ~100 ms here, during which the writer would otherwise receive nothing. Any
failure, an exception in a `with` block or `abort()` aborts the multipart upload (after the
parts in flight have ended), so S3 is not left holding invisible parts that cost space.
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING

from boxbox.errors import BoxboxError, LimitExceeded, ProgrammingError

if TYPE_CHECKING:
    from boxbox.s3.client import S3Client

log = logging.getLogger(__name__)

#: S3 allows at most this many parts in one upload
MAX_PARTS = 10000
#: parts of one upload being sent at once; memory is this many parts plus the one filling
PARTS_IN_FLIGHT = 2


class S3Writer:
    """Write an object in pieces; `commit()` makes it visible and returns its ETag."""

    def __init__(self, client: S3Client, key: str, *, if_none_match: bool = False,
                 if_match: str | None = None) -> None:
        self._client = client
        self.key = key
        self._part_size = client.settings.part_size
        self._if_none_match = if_none_match
        self._if_match = if_match
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future[str]] = []  # UploadPart of each part, in order; the result is its ETag
        self._done = False
        #: bytes accepted so far
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ProgrammingError(f"S3 write to {self.key} after commit or abort")
        view = memoryview(data).cast("B")
        n = view.nbytes
        try:
            while view:
                if len(self._buffer) == self._part_size:
                    self._send_part()  # only now: a full buffer with nothing after it is one PUT
                take = self._part_size - len(self._buffer)
                self._buffer += view[:take]
                view = view[take:]
        except BaseException:
            self.abort()
            raise
        self.size += n
        return n

    def _send_part(self) -> None:
        """Start sending the full buffer as the next part, once fewer than PARTS_IN_FLIGHT are on their way;
        a part that failed meanwhile raises here."""
        if self._upload_id is None:
            self._upload_id = self._client.create_upload(self.key)
            log.debug("S3 multipart upload of %s started", self.key)
        if len(self._parts) >= MAX_PARTS:
            raise LimitExceeded(f"S3 object {self.key}: more than {MAX_PARTS} parts of "
                                f"{self._part_size} bytes; raise part_size")
        while True:
            running = [f for f in self._parts if not f.done()]
            for f in self._parts:
                if f.done() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            if len(running) < PARTS_IN_FLIGHT:
                break
            wait(running, return_when=FIRST_COMPLETED)
        data, self._buffer = self._buffer, bytearray()
        self._parts.append(self._client.part_threads().submit(
            self._client.upload_part, self.key, self._upload_id, len(self._parts) + 1, data))

    def commit(self) -> str:
        """Make the object visible; returns its ETag. Conditions apply to this final step."""
        if self._done:
            raise ProgrammingError(f"S3 commit of {self.key} after commit or abort")
        try:
            if self._upload_id is None:
                etag = self._client.put_object(self.key, self._buffer, if_none_match=self._if_none_match,
                                               if_match=self._if_match)
            else:
                if self._buffer or not self._parts:
                    self._send_part()
                etags = [f.result() for f in self._parts]
                etag = self._client.complete_upload(self.key, self._upload_id, etags,
                                                    if_none_match=self._if_none_match, if_match=self._if_match)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buffer = bytearray()
        return etag

    def abort(self) -> None:
        """Forget the data; abort the multipart upload if one was started (once its parts in flight have
        ended, so none lands after the abort). Safe to call twice."""
        self._done = True
        self._buffer = bytearray()
        parts, self._parts = self._parts, []
        for f in parts:
            f.cancel()
        wait(parts)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                self._client.abort_upload(self.key, upload_id)
            except BoxboxError as e:
                # the upload stays until abort_incomplete_uploads or a lifecycle rule removes it
                log.warning("could not abort S3 multipart upload of %s: %s", self.key, e)

    def __enter__(self) -> S3Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()
