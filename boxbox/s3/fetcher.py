"""Many small GETs in flight from one thread: the restore's read-ahead without a thread per request.

The read-ahead used to run each GET on one of 16 pool threads: per object a hand-off to a
worker, a blocking send and receive with the GIL dropped and taken back around each, and a
hand-off back. Here one thread keeps up to `connections` keep-alive connections (connected and,
for https, handshaken without blocking), sends a signed ranged GET on each free one, and waits
on all of them with one `selectors` call. Only the plain case is handled: an answer framed by
Content-Length with status 206 (the bytes), 404 (`NotFound`) or 416 (past the end: empty).
Anything else (another status, chunked, a closed, refused or slow connection, an untrusted
certificate) fails that fetch alone with a `StorageError` and closes its connection; nothing is
retried here, the caller reads such a key again through `S3Client` with its retries and errors.
"""

from __future__ import annotations

import errno
import http.client
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING

from boxbox.errors import NotFound, StorageError
from boxbox.s3.http11 import MAX_HEAD, RECV_SIZE, parse_head

if TYPE_CHECKING:
    from boxbox.s3.client import S3Client

log = logging.getLogger(__name__)

#: the loop thread ends after this long with nothing to do, closing its connections (servers drop
#: idle keep-alives anyway, and a store that is not restoring keeps no thread)
IDLE_EXIT = 5.0
#: what a connection is doing
CONNECT, HANDSHAKE, SEND, RECEIVE = range(4)


class _Conn:
    """One non-blocking keep-alive connection and the fetch it is serving (None: idle)."""

    __slots__ = ("sock", "state", "buf", "out", "future", "key", "deadline", "events", "body_at", "status",
                 "length")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = CONNECT
        self.buf = bytearray()
        self.out = memoryview(b"")  # the request, as far as it is not sent yet
        self.future: Future[bytes] | None = None
        self.key = ""
        self.deadline = 0.0
        self.events = 0  # registered with the selector for these
        self.body_at = -1  # where the answer's body starts in buf, once its head is in
        self.status = 0
        self.length = 0


class Fetcher:
    """Ranged GETs sent from one loop thread over at most `connections` connections; `get` gives a Future."""

    def __init__(self, client: S3Client, connections: int) -> None:
        self._client = client
        self._connections = connections
        self._lock = threading.Lock()
        self._queue: deque[tuple[Future[bytes], str, int, int]] = deque()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closed = False
        #: the loop waits in `select` with a connection free, and nobody has woken it yet: a new fetch must wake
        #: it (otherwise it looks at the queue whenever an answer lands, without a wake-up's two system calls)
        self._waiting = False

    def get(self, key: str, start: int, end: int) -> Future[bytes]:
        """Bytes [start, end) of `key` (fewer if it is shorter), fetched in the background."""
        future: Future[bytes] = Future()
        with self._lock:
            if self._closed:
                raise StorageError(f"S3 GET {self._client.what(key)}: the read-ahead is closed")
            self._queue.append((future, key, start, end))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="s3 fetcher", daemon=True)
                self._thread.start()
                return future
            wake, self._waiting = self._waiting, False
        if wake:
            self._wake()
        return future

    def close(self) -> None:
        """Fail the fetches running, cancel those waiting, end the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full: a wake-up is pending already

    # ------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        idle: list[_Conn] = []
        busy: set[_Conn] = set()
        quiet_since = time.monotonic()
        address: tuple[int, tuple[object, ...]] | None = None  # (family, address), resolved once per thread
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    room = min(self._connections - len(busy), len(self._queue))
                    starting = [self._queue.popleft() for _ in range(room)]
                    if busy or starting:
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > IDLE_EXIT:
                        self._thread = None  # a `get` from now on starts another
                        break
                for future, key, start, end in starting:  # outside the lock: a failure runs the caller's callbacks
                    if future.set_running_or_notify_cancel():
                        if idle:
                            conn = idle.pop()
                        else:
                            try:
                                conn, address = self._open(address)
                            except OSError as e:  # a name that does not resolve, out of descriptors
                                future.set_exception(StorageError(f"S3 GET {self._client.what(key)}: {e}"))
                                continue
                        busy.add(conn)
                        self._start(sel, conn, future, key, start, end, address)
                self._sweep(sel, busy, idle)
                with self._lock:
                    if self._queue and len(busy) < self._connections:
                        continue  # (fetches ended at once: start more before waiting)
                    self._waiting = len(busy) < self._connections
                now = time.monotonic()
                timeout = min((c.deadline for c in busy), default=now + IDLE_EXIT) - now
                for sk, _ in sel.select(max(0.0, timeout)):
                    conn = sk.data
                    if conn is None:
                        self._drain_wake()
                    elif conn.future is None:  # idle, and readable: the server closed it
                        idle.remove(conn)
                        self._end(sel, conn, "")
                    else:
                        self._step(sel, conn)
                self._sweep(sel, busy, idle)
        finally:
            for conn in busy:
                self._end(sel, conn, "the read-ahead stopped")
            for conn in idle:
                conn.sock.close()
            with self._lock:
                # an idle exit leaves the queue alone: a `get` since has started the next thread, which owns it
                if self._closed or self._thread is threading.current_thread():
                    for future, *_ in self._queue:
                        future.cancel()
                    self._queue.clear()
            sel.close()

    def _sweep(self, sel: selectors.BaseSelector, busy: set[_Conn], idle: list[_Conn]) -> None:
        """Connections whose fetch has ended go back to `idle` (or are gone if closed); overdue fetches fail."""
        now = time.monotonic()
        for conn in [c for c in busy if c.future is None or c.deadline < now]:
            busy.discard(conn)
            if conn.future is not None:
                self._end(sel, conn, f"timed out after {self._client.settings.timeout:g} s")
            elif conn.sock.fileno() >= 0:
                idle.append(conn)

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    def _open(self, address: tuple[int, tuple[object, ...]] | None
              ) -> tuple[_Conn, tuple[int, tuple[object, ...]]]:
        """A new non-blocking socket for the endpoint (its address looked up if not yet), not connected."""
        if address is None:
            port = self._client.transport.endpoint.port
            family, _, _, _, sockaddr = socket.getaddrinfo(self._client.host_name, port, type=socket.SOCK_STREAM)[0]
            address = (family, sockaddr)
        sock = socket.socket(address[0], socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(sock), address

    def _start(self, sel: selectors.BaseSelector, conn: _Conn, future: Future[bytes], key: str,
               start: int, end: int, address: tuple[int, tuple[object, ...]] | None) -> None:
        conn.future, conn.key = future, key
        conn.deadline = time.monotonic() + self._client.settings.timeout
        conn.out = memoryview(self._client.signed_get(key, start, end))
        conn.body_at = -1
        if conn.state != CONNECT:
            conn.state = SEND
            self._step(sel, conn)
            return
        assert address is not None  # (a new connection was opened with it)
        err = conn.sock.connect_ex(address[1])
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._end(sel, conn, f"connect: {errno.errorcode.get(err, err)}")
            return
        self._watch(sel, conn, selectors.EVENT_WRITE)

    def _watch(self, sel: selectors.BaseSelector, conn: _Conn, events: int) -> None:
        if events != conn.events:
            if conn.events:
                sel.modify(conn.sock, events, conn)
            else:
                sel.register(conn.sock, events, conn)
            conn.events = events

    def _step(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """Take `conn` as far as it will go without blocking."""
        try:
            if conn.state == CONNECT:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
                context = self._client.transport.context
                if context is None:
                    conn.state = SEND
                else:
                    sel.unregister(conn.sock)  # the TLS socket takes over the descriptor: registered afresh
                    conn.events = 0
                    conn.sock = context.wrap_socket(conn.sock, server_hostname=self._client.host_name,
                                                    do_handshake_on_connect=False)
                    conn.state = HANDSHAKE
            if conn.state == HANDSHAKE:
                conn.sock.do_handshake()  # type: ignore[attr-defined]
                conn.state = SEND
            if conn.state == SEND:
                while conn.out:
                    conn.out = conn.out[conn.sock.send(conn.out):]
                conn.state = RECEIVE
                self._watch(sel, conn, selectors.EVENT_READ)
                return
            while True:
                chunk = conn.sock.recv(RECV_SIZE)
                if not chunk:
                    raise http.client.RemoteDisconnected("connection closed")
                conn.buf += chunk
                if not isinstance(conn.sock, ssl.SSLSocket) or not conn.sock.pending():
                    break
            self._answer(sel, conn)
        except BlockingIOError:  # (a receive woken for nothing waits to be readable again, not writable)
            self._watch(sel, conn, selectors.EVENT_READ if conn.state == RECEIVE else selectors.EVENT_WRITE)
        except ssl.SSLWantWriteError:
            self._watch(sel, conn, selectors.EVENT_WRITE)
        except ssl.SSLWantReadError:
            self._watch(sel, conn, selectors.EVENT_READ)
        except ssl.SSLCertVerificationError as e:
            self._end(sel, conn, f"TLS certificate of {self._client.host_name} not trusted: {e.verify_message}")
        except (OSError, http.client.HTTPException) as e:
            self._end(sel, conn, f"{type(e).__name__}: {e}")

    def _answer(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        """End the fetch if its whole answer is in."""
        buf = conn.buf
        if conn.body_at < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise http.client.LineTooLong(f"answer head over {MAX_HEAD} bytes")
                return
            status, reason, headers, keep_alive = parse_head(buf[:end])
            length = headers.get("content-length", "")
            if (status not in (206, 404, 416) or not length.isdigit() or not keep_alive
                    or "transfer-encoding" in headers):
                self._end(sel, conn, f"HTTP {status} {reason}: not a plain answer, left to the client")
                return
            conn.body_at, conn.status, conn.length = end + 4, status, int(length)
        if len(buf) < conn.body_at + conn.length:
            return
        if len(buf) > conn.body_at + conn.length:
            self._end(sel, conn, "bytes beyond the answer")
            return
        body = bytes(buf[conn.body_at:])
        buf.clear()
        self._watch(sel, conn, selectors.EVENT_READ)  # idle from now on: readable only if the server closes it
        future, conn.future = conn.future, None
        assert future is not None  # (a connection with no fetch is never read: see _run)
        if conn.status == 404:
            future.set_exception(NotFound(f"S3 GET {self._client.what(conn.key)}: NoSuchKey"))
        else:
            future.set_result(b"" if conn.status == 416 else body)

    def _end(self, sel: selectors.BaseSelector, conn: _Conn, why: str) -> None:
        """Close `conn`; its fetch, if any, fails with `why` (the caller reads the key again)."""
        if conn.events:
            sel.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        future, conn.future = conn.future, None
        if future is not None and not future.done():
            log.debug("S3 read-ahead GET %s: %s", self._client.what(conn.key), why)
            future.set_exception(StorageError(f"S3 GET {self._client.what(conn.key)}: {why}"))
