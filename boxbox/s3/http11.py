"""One keep-alive HTTP/1.1 client connection, just what S3 requests need.

`http.client` parses every answer's headers through the `email` package: measured against
SeaweedFS on loopback, that was about half the Python time of a small GET. S3 answers need
only a status line, a few headers and a body framed by Content-Length or chunked encoding,
so this reads them with `bytes.find` and `recv_into`. Failures are raised as the
`http.client` exceptions the transport already treats as transient (`RemoteDisconnected`
for a closed keep-alive connection, `IncompleteRead` for a body cut short).
"""

from __future__ import annotations

import http.client
import socket
import ssl

#: an answer's status line and headers together may not be longer than this
MAX_HEAD = 64 * 1024
#: bytes asked of the socket at once while looking for the end of the headers
RECV_SIZE = 64 * 1024
#: bodies up to this size go out in the same send as the headers (one segment for a small PUT)
JOIN_BODY = 64 * 1024


class Answer:
    """A complete answer: status, reason, headers (lower-case names), body; `keep_alive` if the
    connection can carry another request."""

    __slots__ = ("status", "reason", "headers", "body", "keep_alive")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class Connection:
    """A connection to `host:port` (TLS when `context` is given), opened at the first request."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self._timeout = timeout
        self._context = context
        self._sock: socket.socket | None = None
        self._buf = bytearray()  # received and not yet consumed

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf = bytearray()
        if sock is not None:
            sock.close()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, head: bytes, body: bytes, head_only: bool, error_limit: int) -> Answer:
        """Send `head` (request line and headers, ending in a blank line) and `body`; read the answer.

        `head_only`: the answer has no body (HEAD). `error_limit`: read at most this much of
        an error's body (status 300 or more; the rest is not read, the connection not kept).
        """
        sock = self._sock
        if sock is None:
            sock = self._sock = self._connect()
        if len(body) <= JOIN_BODY:
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            sock.sendall(body)
        while True:
            status, reason, headers, keep_alive = self._read_head()
            if not 100 <= status < 200:  # 100 Continue and the like precede the real answer
                break
        if head_only or status in (204, 304):
            return Answer(status, reason, headers, b"", keep_alive)
        limit = error_limit if status >= 300 else None
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body_read, complete = self._read_chunked(limit)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise http.client.HTTPException(f"bad Content-Length {headers['content-length']!r}") from None
            if length < 0:
                raise http.client.HTTPException(f"bad Content-Length {length}")
            complete = limit is None or length <= limit
            body_read = self._read_exact(length if complete else limit)  # type: ignore[arg-type]
        else:  # delimited by the end of the connection
            body_read, complete = self._read_to_close(limit), False
        # bytes beyond the answer would be taken for the next one: such a connection is not reused
        return Answer(status, reason, headers, body_read, keep_alive and complete and not self._buf)

    def _fill(self) -> bool:
        """Receive more into the buffer; False at the end of the stream."""
        chunk = self._sock.recv(RECV_SIZE)  # type: ignore[union-attr]
        self._buf += chunk
        return bool(chunk)

    def _read_head(self) -> tuple[int, str, dict[str, str], bool]:
        buf = self._buf
        start = 0
        while (end := buf.find(b"\r\n\r\n", start)) < 0:
            if len(buf) > MAX_HEAD:
                raise http.client.LineTooLong(f"answer head over {MAX_HEAD} bytes")
            start = max(0, len(buf) - 3)
            if not self._fill():
                if not buf:
                    raise http.client.RemoteDisconnected("Remote end closed connection without response")
                raise http.client.IncompleteRead(bytes(buf))
        head = bytes(buf[:end])
        del buf[:end + 4]
        return parse_head(head)

    def _read_exact(self, n: int) -> bytes:
        buf = self._buf
        if len(buf) >= n:
            data = bytes(buf[:n])
            del buf[:n]
            return data
        out = bytearray(n)
        have = len(buf)
        out[:have] = buf
        buf.clear()
        view = memoryview(out)
        while have < n:
            got = self._sock.recv_into(view[have:])  # type: ignore[union-attr]
            if not got:
                raise http.client.IncompleteRead(bytes(out[:have]), n - have)
            have += got
        return bytes(out)

    def _read_line(self, partial: list[bytes]) -> bytes:
        buf = self._buf
        while (end := buf.find(b"\r\n")) < 0:
            if len(buf) > MAX_HEAD:
                raise http.client.LineTooLong("chunk size line")
            if not self._fill():
                raise http.client.IncompleteRead(b"".join(partial))
        line = bytes(buf[:end])
        del buf[:end + 2]
        return line

    def _read_chunked(self, limit: int | None) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self._read_line(parts)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise http.client.IncompleteRead(b"".join(parts)) from None
            if size == 0:
                while self._read_line(parts):  # trailer fields, up to the blank line
                    pass
                return b"".join(parts), True
            if limit is not None and total + size > limit:
                parts.append(self._read_exact(limit - total))
                return b"".join(parts), False
            try:
                parts.append(self._read_exact(size))
                self._read_exact(2)
            except http.client.IncompleteRead as e:
                raise http.client.IncompleteRead(b"".join(parts) + e.partial, e.expected) from None
            total += size

    def _read_to_close(self, limit: int | None) -> bytes:
        while limit is None or len(self._buf) < limit:
            if not self._fill():
                break
        data = bytes(self._buf[:limit])
        self._buf.clear()
        return data


def parse_head(head: bytes | bytearray) -> tuple[int, str, dict[str, str], bool]:
    """(status, reason, headers with lower-case names, keep-alive) of an answer's head, without its blank line."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise http.client.BadStatusLine(lines[0])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise http.client.HTTPException(f"malformed header line {line[:100]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    return int(code), reason.strip(), headers, keep_alive
