"""Wire layer: framing limits, error mapping, dispatcher + client stub over a socket pair."""

from __future__ import annotations

import io
import socket
import threading
from typing import Any

import pytest

from boxbox import errors
from boxbox.errors import BoxboxError, LimitExceeded, NotFound, PermissionDenied, ProtocolError
from boxbox.wire import messages as m
from boxbox.wire.client import Client
from boxbox.wire.commands import NONE, READ, WRITE, Access, Command, Dispatcher, StreamReply, command
from boxbox.wire.framing import HEADER, MAX_FRAME_SIZE, STREAM_CHUNK, FrameDecoder, encode_frame
from boxbox.wire.transport import Connection


# ------------------------------------------------------------------ framing
def test_frames_split_across_feeds() -> None:
    data = encode_frame(0x10, b"abc") + encode_frame(0x11, b"") + encode_frame(0x12, b"x" * 1000)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(data), 7):
        dec.feed(data[i:i + 7])
        out.extend(dec)
    assert [(f.type, len(f.payload)) for f in out] == [(0x10, 3), (0x11, 0), (0x12, 1000)]
    assert dec.at_boundary()


def test_big_frames_are_received_in_place() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB, above DIRECT_MIN
    data = encode_frame(0xFF01, payload) + encode_frame(0x10, b"next")
    dec = FrameDecoder()
    dec.feed(data[:1000])
    view = dec.direct_buffer()
    assert view is not None and len(view) == len(payload) - (1000 - HEADER.size)
    rest = data[1000:HEADER.size + len(payload)]
    view[:len(rest)] = rest
    dec.filled(len(rest))
    assert not dec.at_boundary() or dec.has_frame()
    frame = dec.next_frame()
    assert frame is not None and frame.payload == payload and dec.at_boundary()
    dec.feed(data[HEADER.size + len(payload):])
    assert dec.next_frame() == (0x10, b"next")
    small = FrameDecoder()
    small.feed(encode_frame(0x10, b"x" * 100)[:50])
    assert small.direct_buffer() is None  # small frames go through feed()


def test_in_place_stream_frames_are_handed_over_and_reads_stay_bytes() -> None:
    """A big stream frame comes out as the buffer it was received into (no copy); a message, or
    what `InStream.read` returns, is still immutable bytes."""
    payload = bytes(range(256)) * 1024
    for frame_type, kind in ((0xFF01, bytearray), (0x10, bytes)):
        dec = FrameDecoder()
        data = encode_frame(frame_type, payload)
        dec.feed(data[:HEADER.size])
        view = dec.direct_buffer()
        assert view is not None
        view[:] = data[HEADER.size:]
        dec.filled(len(payload))
        frame = dec.next_frame()
        assert frame is not None and type(frame.payload) is kind and frame.payload == payload
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=a.sendall, args=(encode_frame(0xFF01, payload) * 2 + encode_frame(0xFF02),))
        sender.start()
        stream = Connection(b).stream_reader()
        first = stream.read(1000)
        rest = stream.read()
        sender.join()
    assert type(first) is bytes and type(rest) is bytes and first + rest == payload * 2


def test_oversized_length_refused_from_header_alone() -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        dec.feed(HEADER.pack(MAX_FRAME_SIZE + 1, 0x10))  # no payload sent at all
    with pytest.raises(ProtocolError):
        encode_frame(0x10, bytes(MAX_FRAME_SIZE + 1))


def test_has_frame_only_when_complete() -> None:
    dec = FrameDecoder()
    frame = encode_frame(0x10, b"hello")
    dec.feed(frame[:-1])
    assert not dec.has_frame() and dec.next_frame() is None
    dec.feed(frame[-1:])
    assert dec.has_frame()


# ------------------------------------------------------------------ errors as data
@pytest.mark.parametrize("cls", errors.all_error_classes())
def test_every_error_class_survives_the_wire(cls: type[BoxboxError]) -> None:
    original = cls("object 0x1f in directory 0x2", hint="try again")
    t, payload = m.encode(m.error_reply(original))
    back = m.error_from_reply(m.decode(t, payload))
    assert type(back) is cls
    assert str(back) == str(original)
    assert back.hint == "try again"


def test_wire_codes_are_distinct() -> None:
    codes = [c.wire_code for c in errors.all_error_classes()]
    assert len(codes) == len(set(codes))


def test_unknown_and_truncated_messages() -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        m.decode(0x7777, b"")
    t, payload = m.encode(m.StoreFile(1, 2, b"hash8byt", 4, b"name", b"attrs"))
    with pytest.raises(ProtocolError, match="only"):
        m.decode(t, payload[:-1])
    with pytest.raises(ProtocolError, match="unexpected bytes"):
        m.decode(t, payload + b"\0")
    with pytest.raises(ProtocolError, match="out of range"):
        m.encode(m.Success(-1))


# ------------------------------------------------------------------ dispatcher + client
class FakeSession:
    def __init__(self) -> None:
        self.access = NONE
        self.stored: dict[int, bytes] = {}


def make_table() -> dict[type, Command]:
    table: dict[type, Command] = {}

    @command(m.Login, access=NONE, table=table)
    def login(session: FakeSession, req: m.Login, stream: Any) -> m.LoginReply:
        session.access = READ if req.flags & m.LOGIN_READ_ONLY else WRITE
        return m.LoginReply(7, req.flags, 0, 0, 0, 0, 4096)

    @command(m.StoreFile, stream_in=True, table=table)
    def store(session: FakeSession, req: m.StoreFile, stream: Any) -> m.Success:
        if req.diff_from:
            raise LimitExceeded("diff uploads refused")
        data = stream.read()
        oid = len(session.stored) + 1
        session.stored[oid] = data
        return m.Success(oid)

    @command(m.GetObject, access=READ, table=table)
    def get(session: FakeSession, req: m.GetObject, stream: Any) -> Any:
        if req.object_id not in session.stored:
            raise NotFound(f"object {req.object_id:#x}")
        return StreamReply(m.Success(req.object_id), io.BytesIO(session.stored[req.object_id]))

    @command(m.GetFile, access=READ, table=table)
    def broken_get(session: FakeSession, req: m.GetFile, stream: Any) -> Any:
        def gen() -> Any:
            yield b"a" * 1000
            raise NotFound("block 3 vanished")
        return StreamReply(m.Success(1), gen())

    @command(m.KeepAlive, access=READ, table=table)
    def keep_alive(session: FakeSession, req: m.KeepAlive, stream: Any) -> m.Success:
        return m.Success(0)

    @command(m.DeleteFile, table=table)
    def crash(session: FakeSession, req: m.DeleteFile, stream: Any) -> m.Success:
        raise RuntimeError("/secret/server/path exploded")

    return table


class CountingSocket:
    """Counts sendall calls to show that pipelined requests are coalesced."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends = 0

    def sendall(self, data: bytes) -> None:
        self.sends += 1
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.fixture()
def pair() -> Any:
    a, b = socket.socketpair()
    session = FakeSession()
    server_conn = Connection(b, idle_timeout=10, read_timeout=10)
    result: dict[str, Any] = {}

    def serve() -> None:
        try:
            result["finished"] = Dispatcher(server_conn, session, make_table()).run()
        except BoxboxError as e:
            result["error"] = e
        finally:
            b.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    counting = CountingSocket(a)
    client = Client(Connection(counting, idle_timeout=10, read_timeout=10))  # type: ignore[arg-type]
    client.hello()
    yield client, counting, session, result
    client.close()
    t.join(5)


def test_access_is_checked_before_the_handler(pair: Any) -> None:
    client, _, session, _ = pair
    with pytest.raises(PermissionDenied, match="log in first"):
        client.store_file(1, b"n", [b"data"])
    assert session.stored == {}
    client.login(read_only=True)
    with pytest.raises(PermissionDenied, match="needs write access"):
        client.store_file(1, b"n", [b"data"])
    assert session.stored == {}


def test_upload_download_and_errors_keep_connection_usable(pair: Any) -> None:
    client, _, session, result = pair
    client.login()
    payload = bytes(range(256)) * (3 * STREAM_CHUNK // 256 + 17)
    oid = client.store_file(1, b"n", io.BytesIO(payload))
    assert client.get_object(oid).read() == payload
    with pytest.raises(NotFound, match="object 0x63"):
        client.get_object(0x63)
    with pytest.raises(LimitExceeded):
        client.store_file(1, b"n", [b"x" * 5000], diff_from=3)  # refused; stream drained
    stream = client.get_file(1, 1)
    with pytest.raises(NotFound, match="block 3 vanished"):
        stream.read()
    with pytest.raises(errors.ProgrammingError) as exc:
        client.delete_file(1, b"n")
    assert "/secret" not in str(exc.value)
    assert client.get_object(oid).read(10) == payload[:10]  # partial read, rest discarded
    assert client.call(m.KeepAlive()).object_id == 0
    client.finish()


def test_aborted_upload_leaves_connection_usable(pair: Any) -> None:
    client, _, session, _ = pair
    client.login()

    def failing() -> Any:
        yield b"x" * 100_000
        raise OSError("disk read error on the client")

    with pytest.raises(OSError):
        client.submit(m.StoreFile(1, 0, bytes(8), 0, b"n", b""), upload=failing())
    with pytest.raises(ProtocolError, match="aborted"):
        client._queue[-1].result()
    assert session.stored == {}
    assert client.store_file(1, b"n", [b"ok"]) == 1


def test_pipelined_requests_are_one_write_and_answered_in_order(pair: Any) -> None:
    client, counting, session, _ = pair
    client.login()
    before = counting.sends
    pendings = [client.submit(m.StoreFile(1, 0, bytes(8), 0, b"n", b""), upload=[b"%d" % i]) for i in range(50)]
    missing = client.submit(m.GetObject(999))
    results = [p.result().object_id for p in pendings]
    assert counting.sends - before == 1
    assert results == list(range(1, 51))
    assert session.stored[37] == b"36"
    with pytest.raises(NotFound):
        missing.result()


def test_non_request_ends_the_connection(pair: Any) -> None:
    client, _, _, result = pair
    client.conn.send(m.Success(1))
    client.conn.flush()
    assert client.conn.read_frame() is None
    client.close()
    assert isinstance(result.get("error"), ProtocolError)


def test_hello_must_come_first() -> None:
    a, b = socket.socketpair()
    err: list[BaseException] = []

    def serve() -> None:
        try:
            Dispatcher(Connection(b, idle_timeout=5, read_timeout=5), FakeSession(), {}).run()
        except BoxboxError as e:
            err.append(e)

    t = threading.Thread(target=serve)
    t.start()
    conn = Connection(a)
    conn.send(m.Login(0))
    conn.flush()
    t.join(5)
    assert err and "expected Hello" in str(err[0])
    a.close()
    b.close()


def test_wrong_protocol_version_refused() -> None:
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: pytest.raises(
        ProtocolError, Dispatcher(Connection(b, idle_timeout=5), FakeSession(), {}).run))
    t.start()
    conn = Connection(a, idle_timeout=5)
    conn.send(m.Hello(m.WIRE_MAGIC, 99, "future"))
    conn.flush()
    with pytest.raises(ProtocolError, match="version 99"):
        conn.read_reply()
    t.join(5)
    a.close()
    b.close()


def test_idle_timeout() -> None:
    a, b = socket.socketpair()
    conn = Connection(b, idle_timeout=0.2, read_timeout=0.2)
    with pytest.raises(ProtocolError, match="idle for more than"):
        conn.read_frame()
    a.sendall(HEADER.pack(10, 0x10) + b"abc")
    with pytest.raises(ProtocolError, match="silent mid-message"):
        conn.read_frame()
    a.close()
    b.close()


def test_access_levels_are_ordered() -> None:
    assert Access.NONE < Access.READ < Access.WRITE
    with pytest.raises(errors.ProgrammingError):
        command(m.Success)


def test_unbounded_pipelining_reads_replies_as_it_goes(pair: Any) -> None:
    client, _, session, _ = pair
    client.login()
    from boxbox.wire.client import MAX_IN_FLIGHT

    pendings = [client.submit(m.KeepAlive()) for _ in range(3 * MAX_IN_FLIGHT)]
    assert len(client._queue) <= MAX_IN_FLIGHT
    assert all(p.result().object_id == 0 for p in pendings)
