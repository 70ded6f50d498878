"""A framed connection over a (TLS) socket: coalesced writes, timed reads, chunked streams.

Small messages are queued and written with one `sendall` when the caller flushes, so a
batch of pipelined requests or replies costs one TLS record and one segment, not one
round trip each. Bulk data travels as STREAM_DATA frames ending in STREAM_END (or
STREAM_ABORT, after which the sender follows up with an Error message if it has one).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, BinaryIO, Iterable, Iterator

from boxbox.errors import PermissionDenied, ProtocolError
from boxbox.wire import messages
from boxbox.wire.framing import (
    HEADER, STREAM_ABORT, STREAM_CHUNK, STREAM_DATA, STREAM_END, STREAM_TYPES, Frame, FrameDecoder, encode_frame,
    frame_header,
)

RECV_SIZE = 256 << 10
FLUSH_AT = 256 << 10  # queued bytes that force a write even without an explicit flush


def set_nodelay(sock: socket.socket) -> None:
    """Nagle + delayed ACK cost Box Backup most of its wall time; turn Nagle off."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Connection:
    """Frames in and out of one socket; not thread-safe (one thread per connection)."""

    def __init__(self, sock: socket.socket, *, idle_timeout: float | None = None,
                 read_timeout: float | None = None) -> None:
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []
        self._out_size = 0
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._timeout: float | None = -1.0  # unknown until first set
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------ writing
    def send(self, msg: Any) -> None:
        """Queue a catalogue message; written at the next flush (never before: the server
        makes the changes its queued replies report durable first)."""
        frame_type, payload = messages.encode(msg)
        data = encode_frame(frame_type, payload)
        self._out.append(data)
        self._out_size += len(data)

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        self._set_timeout(self.read_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise ProtocolError(f"peer did not accept data for {self.read_timeout:.0f} s") from None
        except OSError as e:
            raise ProtocolError(f"connection lost while sending: {e}") from None
        self.bytes_out += len(data)

    def send_stream(self, source: BinaryIO | Iterable[bytes]) -> int:
        """Send a file-like (read in STREAM_CHUNK pieces) or an iterable of chunks; ABORT if it fails.

        Returns the number of bytes sent. If reading the source raises, the peer gets
        STREAM_ABORT (so the connection stays usable) and the exception propagates.
        """
        total = 0
        try:
            for chunk in _chunks(source):
                total += len(chunk)
                self._queue(frame_header(STREAM_DATA, len(chunk)) + chunk)
        except BaseException:
            self.abort_stream()
            raise
        self._queue(frame_header(STREAM_END, 0))
        return total

    def abort_stream(self) -> None:
        """Queue STREAM_ABORT without flushing, so it is safe inside an error handler."""
        self._out.append(frame_header(STREAM_ABORT, 0))
        self._out_size += HEADER.size

    # ------------------------------------------------------------ reading
    def _set_timeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def has_buffered_frame(self) -> bool:
        """A complete frame is already here: the peer pipelined, so do not flush yet."""
        return self._decoder.has_frame()

    def read_frame(self) -> Frame | None:
        """The next frame; None on a clean close between frames."""
        decoder = self._decoder
        while (frame := decoder.next_frame()) is None:
            idle = decoder.at_boundary()
            self._set_timeout(self.idle_timeout if idle else self.read_timeout)
            direct = decoder.direct_buffer()
            try:
                n = self.sock.recv_into(self._rview) if direct is None else _fill(self.sock.recv_into, direct)
            except TimeoutError:
                what = "idle" if idle else "silent mid-message"
                limit = self.idle_timeout if idle else self.read_timeout
                raise ProtocolError(f"peer {what} for more than {limit:.0f} s") from None
            except ssl.SSLError as e:  # e.g. the server's alert for a revoked certificate
                reason = str(e.reason or e)
                if "ALERT_" in reason:  # SSLV3_ALERT_CERTIFICATE_REVOKED -> "certificate revoked"
                    reason = reason.split("ALERT_", 1)[1].lower().replace("_", " ")
                raise PermissionDenied(f"the peer refused the TLS session: {reason}") from None
            except OSError as e:
                raise ProtocolError(f"connection lost while receiving: {e}") from None
            if n == 0:
                if idle:
                    return None
                raise ProtocolError(f"connection closed in the middle of a frame ({decoder.missing()} bytes missing)")
            self.bytes_in += n
            if direct is None:
                decoder.feed(self._rview[:n])
            else:
                decoder.filled(n)
        return frame

    def read_message(self) -> Any | None:
        """The next catalogue message; None on a clean close; stream frames here are an error."""
        frame = self.read_frame()
        if frame is None:
            return None
        if frame.type in STREAM_TYPES:
            raise ProtocolError(f"unexpected stream frame {frame.type:#06x} where a message was expected")
        return messages.decode(frame.type, frame.payload)

    def read_reply(self) -> Any:
        """A reply message; an Error reply is raised as the server's BoxboxError subclass."""
        msg = self.read_message()
        if msg is None:
            raise ProtocolError("server closed the connection")
        if isinstance(msg, messages.Error):
            raise messages.error_from_reply(msg)
        return msg

    def stream_reader(self, after_abort_reply: bool = False) -> "InStream":
        return InStream(self, after_abort_reply)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _fill(recv_into: Any, view: memoryview) -> int:
    """Receive into `view` until it is full or the peer closes: the rest of a big frame in one
    tight loop (TLS hands over one 16 KiB record per call; going round `read_frame` for each
    cost ~3 us of Python a record)."""
    got, want = 0, len(view)
    while got < want:
        n = recv_into(view[got:])
        if not n:
            break
        got += n
    return got


def _chunks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    """Split a source into frames of at most STREAM_CHUNK bytes."""
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(STREAM_CHUNK):
            yield chunk
        return
    for piece in source:  # type: ignore[union-attr]
        for start in range(0, len(piece), STREAM_CHUNK):
            yield bytes(piece[start:start + STREAM_CHUNK]) if len(piece) > STREAM_CHUNK else piece


class InStream:
    """The receiving end of a stream: file-like `read`, or `chunks()`; bounded memory.

    On STREAM_ABORT it raises: when `after_abort_reply` is set (client side), the sender
    follows an abort with an Error message, and that error is raised instead.
    """

    def __init__(self, conn: Connection, after_abort_reply: bool = False) -> None:
        self._conn = conn
        self._after_abort_reply = after_abort_reply
        self._pending: bytes | memoryview = b""
        self._pos = 0
        self.done = False
        self.aborted = False
        self.size = 0

    def _next_chunk(self) -> bytes | bytearray | None:
        if self.done:
            return None
        frame = self._conn.read_frame()
        if frame is None:
            self.done = True
            raise ProtocolError("connection closed in the middle of a stream")
        if frame.type == STREAM_DATA:
            self.size += len(frame.payload)
            return frame.payload
        self.done = True
        if frame.type == STREAM_END:
            return None
        if frame.type == STREAM_ABORT:
            self.aborted = True
            if self._after_abort_reply:
                self._conn.read_reply()  # raises the sender's error
            raise ProtocolError("stream aborted by the sender")
        raise ProtocolError(f"unexpected frame {frame.type:#06x} inside a stream")

    def chunks(self) -> Iterator[bytes | bytearray | memoryview]:
        """Each frame's payload as received (no copy); big frames arrive as bytearrays."""
        if self._pos < len(self._pending):
            yield self._pending[self._pos:]
        self._pending, self._pos = b"", 0
        while (chunk := self._next_chunk()) is not None:
            yield chunk

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            return b"".join(self.chunks())
        parts: list[bytes] = []
        want = n
        while want > 0:
            if self._pos >= len(self._pending):
                chunk = self._next_chunk()
                if chunk is None:
                    break
                # a frame received in place is a bytearray: slice it through a view, so that what
                # read() returns is bytes, copied once
                self._pending, self._pos = memoryview(chunk) if isinstance(chunk, bytearray) else chunk, 0
                if not chunk:
                    continue
            piece = self._pending[self._pos:self._pos + want]
            if isinstance(piece, memoryview):
                piece = bytes(piece)
            self._pos += len(piece)
            want -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def drain(self) -> None:
        """Discard the rest of the stream so the connection can carry the next message."""
        self._pending, self._pos = b"", 0
        while self._next_chunk() is not None:
            pass
