"""Frames: length-prefixed, typed byte strings. No I/O: fed bytes in, whole frames out.

Layout of one frame (little-endian):

    offset  size  field
    0       4     payload length (bytes after this header), at most MAX_FRAME_SIZE
    4       2     frame type (a message id from `boxbox.wire.messages`, or a stream type)
    6       n     payload

The length is checked against the limit as soon as the header is complete, before any
payload is buffered, so a hostile peer cannot make us allocate more than the limit.
"""

from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

from boxbox.errors import ProtocolError

HEADER = struct.Struct("<IH")
assert HEADER.size == 6

#: Largest payload accepted; bulk data travels as many STREAM_DATA frames of STREAM_CHUNK.
MAX_FRAME_SIZE = 1 << 20
#: Payload size of stream data frames: big enough to amortise per-frame Python work
#: (256 KiB -> 2048 frames per 512 MiB), small enough to keep buffers bounded.
STREAM_CHUNK = 256 << 10
#: Frames at least this big are received in place (see FrameDecoder.direct_buffer).
DIRECT_MIN = 64 << 10

# Stream frame types share the 16-bit type space with messages; messages stay below 0xFF00.
STREAM_DATA = 0xFF01  # payload: a piece of the stream
STREAM_END = 0xFF02  # payload empty: the stream finished normally
STREAM_ABORT = 0xFF03  # payload empty: the sender gave up; discard what came so far
STREAM_TYPES = frozenset((STREAM_DATA, STREAM_END, STREAM_ABORT))


class Frame(NamedTuple):
    type: int
    payload: bytes  # a bytearray for big STREAM_DATA frames received in place (see next_frame)


def encode_frame(frame_type: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Header plus payload as one bytes object, ready to be coalesced with others."""
    if len(payload) > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds the limit of {MAX_FRAME_SIZE}")
    return HEADER.pack(len(payload), frame_type) + payload


def frame_header(frame_type: int, length: int) -> bytes:
    """Just the header, for senders that write a big payload separately (no copy)."""
    if length > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame payload of {length} bytes exceeds the limit of {MAX_FRAME_SIZE}")
    return HEADER.pack(length, frame_type)


class FrameDecoder:
    """Accumulates received bytes and splits them into frames."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None  # (type, length) of the frame being received
        self._direct: bytearray | None = None  # a big frame's payload, received into in place
        self._filled = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._direct is not None:
            raise ProtocolError("internal: bytes fed while a frame is being received in place")
        self._buf += data
        # Check a header as soon as it is complete, so an oversized length fails now,
        # not after the peer has been allowed to send megabytes.
        if self._need is None and len(self._buf) >= HEADER.size:
            self._parse_header()

    def _parse_header(self) -> None:
        length, frame_type = HEADER.unpack_from(self._buf)
        if length > self.max_frame_size:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.max_frame_size}")
        self._need = (frame_type, length)

    def direct_buffer(self) -> memoryview | None:
        """Where the rest of a big frame's payload can be received in place, or None.

        For a frame of at least DIRECT_MIN bytes whose header is here, the reader may
        `recv_into` this view and report with `filled(n)`: one copy per byte fewer than
        `feed`, which matters for bulk streams. Only the declared (checked) length is allocated.
        """
        if self._direct is None:
            if self._need is None or self._need[1] < DIRECT_MIN:
                return None
            length = self._need[1]
            have = len(self._buf) - HEADER.size
            if have >= length:
                return None
            self._direct = bytearray(length)
            self._direct[:have] = self._buf[HEADER.size:]
            self._filled = have
            self._buf.clear()
        return memoryview(self._direct)[self._filled:]

    def filled(self, n: int) -> None:
        """`n` more bytes were received into the view from `direct_buffer()`."""
        self._filled += n

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed."""
        if self._direct is not None:
            if self._filled < len(self._direct):
                return None
            assert self._need is not None
            frame_type, payload = self._need[0], self._direct
            # stream data is handed over as received (a fresh buffer per frame, never reused):
            # bytes() here copied every restored byte once more; messages stay immutable bytes
            frame = Frame(frame_type, payload if frame_type == STREAM_DATA else bytes(payload))
            self._direct = None
            self._need = None
            return frame
        if self._need is None:
            if len(self._buf) < HEADER.size:
                return None
            self._parse_header()
        assert self._need is not None
        frame_type, length = self._need
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view:  # one copy out (slicing the bytearray would make two)
            payload = bytes(view[HEADER.size:end])
        del self._buf[:end]
        self._need = None
        if len(self._buf) >= HEADER.size:
            self._parse_header()
        return Frame(frame_type, payload)

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def has_frame(self) -> bool:
        """True when a complete frame is already buffered (no read needed)."""
        if self._direct is not None:
            return self._filled >= len(self._direct)
        if self._need is None:
            return False
        return len(self._buf) >= HEADER.size + self._need[1]

    def missing(self) -> int:
        """Bytes still needed to complete the frame in progress (at least 1 when idle)."""
        if self._direct is not None:
            return len(self._direct) - self._filled
        if self._need is None:
            return max(1, HEADER.size - len(self._buf))
        return max(0, HEADER.size + self._need[1] - len(self._buf))

    @property
    def buffered(self) -> int:
        return len(self._buf) + (self._filled if self._direct is not None else 0)

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for the peer to stop)."""
        return not self._buf and self._direct is None
