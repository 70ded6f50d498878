"""The lean HTTP/1.1 connection against canned answers: framing, keep-alive, and cut-short bodies
raised as the http.client exceptions the transport retries."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from boxbox.s3.http11 import Connection

REQUEST = b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"


class Canned:
    """A one-connection server: answers each request (read up to its blank line) with the next canned
    bytes, and closes after the last one; None closes it at once."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answers = answers
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            buf = b""
            for answer in self.answers:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                request, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append(request)
                if answer is None:
                    return
                conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def canned() -> Iterator[type[Canned]]:
    made: list[Canned] = []

    class Made(Canned):
        def __init__(self, answers: list[bytes | None]) -> None:
            super().__init__(answers)
            made.append(self)

    yield Made
    for c in made:
        c.close()


def test_content_length_body_and_keep_alive(canned: type[Canned]) -> None:
    srv = canned([b"HTTP/1.1 200 OK\r\nETag: \"a\"\r\nContent-Length: 5\r\n\r\nhello",
                  b"HTTP/1.1 206 Partial Content\r\ncontent-length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc"])
    conn = Connection("127.0.0.1", srv.port, 5)
    a = conn.request(REQUEST, b"", False, 100)
    assert (a.status, a.reason, a.body, a.keep_alive, a.headers["etag"]) == (200, "OK", b"hello", True, '"a"')
    b = conn.request(REQUEST, b"", False, 100)  # same connection
    assert (b.status, b.body, b.headers["x-a"]) == (206, b"abc", "1, 2")
    conn.close()
    assert len(srv.requests) == 2


def test_chunked_body_with_extensions_and_trailers(canned: type[Canned]) -> None:
    srv = canned([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"])
    conn = Connection("127.0.0.1", srv.port, 5)
    a = conn.request(REQUEST, b"", False, 100)
    assert (a.body, a.keep_alive) == (b"abcde", True)
    conn.close()


def test_head_and_204_have_no_body_and_1xx_is_skipped(canned: type[Canned]) -> None:
    srv = canned([b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                  b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"])
    conn = Connection("127.0.0.1", srv.port, 5)
    a = conn.request(REQUEST, b"", True, 100)
    assert (a.status, a.body, a.keep_alive, a.headers["content-length"]) == (200, b"", True, "99")
    b = conn.request(REQUEST, b"", False, 100)
    assert (b.status, b.body) == (204, b"")
    conn.close()


def test_close_and_http10_end_keep_alive(canned: type[Canned]) -> None:
    for answer in (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
                   b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"):
        srv = canned([answer])
        conn = Connection("127.0.0.1", srv.port, 5)
        assert not conn.request(REQUEST, b"", False, 100).keep_alive
        conn.close()


class OneRecv:
    """A socket whose peer's bytes all arrive in the first recv."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def sendall(self, data: bytes) -> None:
        pass

    def recv(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def close(self) -> None:
        pass


def test_bytes_beyond_the_answer_end_keep_alive() -> None:
    conn = Connection("127.0.0.1", 9, 5)
    conn._sock = OneRecv(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n")  # type: ignore[assignment]
    a = conn.request(REQUEST, b"", False, 100)
    assert (a.body, a.keep_alive) == (b"x", False)
    clean = Connection("127.0.0.1", 9, 5)
    clean._sock = OneRecv(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")  # type: ignore[assignment]
    assert clean.request(REQUEST, b"", False, 100).keep_alive


def test_body_to_the_end_of_the_connection(canned: type[Canned]) -> None:
    srv = canned([b"HTTP/1.1 200 OK\r\n\r\nall of it"])  # then closes
    conn = Connection("127.0.0.1", srv.port, 5)
    a = conn.request(REQUEST, b"", False, 100)
    assert (a.body, a.keep_alive) == (b"all of it", False)
    conn.close()


def test_error_body_is_read_only_up_to_the_limit(canned: type[Canned]) -> None:
    srv = canned([b"HTTP/1.1 500 Internal\r\nContent-Length: 1000\r\n\r\n" + b"e" * 1000])
    conn = Connection("127.0.0.1", srv.port, 5)
    a = conn.request(REQUEST, b"", False, 10)
    assert (a.status, a.body, a.keep_alive) == (500, b"e" * 10, False)
    conn.close()


@pytest.mark.parametrize("answer, partial", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", b"short"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nde", b"abcde"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"abc"),
])
def test_cut_short_body_is_incomplete_read(canned: type[Canned], answer: bytes, partial: bytes) -> None:
    srv = canned([answer])  # then closes
    conn = Connection("127.0.0.1", srv.port, 5)
    with pytest.raises(http.client.IncompleteRead) as e:
        conn.request(REQUEST, b"", False, 100)
    assert e.value.partial == partial
    conn.close()


def test_closed_before_an_answer_is_remote_disconnected(canned: type[Canned]) -> None:
    srv = canned([None])
    conn = Connection("127.0.0.1", srv.port, 5)
    with pytest.raises(http.client.RemoteDisconnected):
        conn.request(REQUEST, b"", False, 100)
    conn.close()


@pytest.mark.parametrize("answer", [b"HTTP/2 200 OK\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"])
def test_malformed_answers_are_http_exceptions(canned: type[Canned], answer: bytes) -> None:
    srv = canned([answer])
    conn = Connection("127.0.0.1", srv.port, 5)
    with pytest.raises(http.client.HTTPException):
        conn.request(REQUEST, b"", False, 100)
    conn.close()


def test_large_body_is_sent_after_the_head(canned: type[Canned]) -> None:
    srv = canned([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    conn = Connection("127.0.0.1", srv.port, 5)
    body = b"x" * 200_000
    head = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
    assert conn.request(head, body, False, 100).status == 200
    conn.close()
