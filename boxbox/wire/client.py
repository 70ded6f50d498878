"""Client stub: one method per command, plus `submit` for pipelining.

`submit` queues a request (and its upload stream) without waiting; replies arrive in
request order and are read when a `Pending.result()` needs them, so a client can send a
hundred small operations and wait once. The synchronous methods are `submit(...).result()`.
A download stream must be read (or is discarded) before the next reply is read.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from typing import Any, BinaryIO, Iterable

from boxbox import __version__
from boxbox.errors import BoxboxError, PermissionDenied, ProtocolError
from boxbox.wire import messages as m
from boxbox.wire.transport import Connection, InStream, set_nodelay

#: Unread replies allowed before `submit` reads some (each is ~20 bytes; 256 fit any socket buffer).
MAX_IN_FLIGHT = 256
#: Seconds to wait for a TCP connection before trying the next configured server.
CONNECT_TIMEOUT = 15.0


class Pending:
    """The reply to a submitted request; `result()` flushes and reads replies up to this one."""

    __slots__ = ("_client", "download", "done", "value", "error")

    def __init__(self, client: "Client", download: bool) -> None:
        self._client = client
        self.download = download
        self.done = False
        self.value: Any = None
        self.error: BoxboxError | None = None

    def result(self) -> Any:
        """The reply message (or `(reply, InStream)` for downloads); the server's error is raised."""
        self._client._resolve(self)
        if self.error is not None:
            raise self.error
        return self.value


def _tls_error(e: ssl.SSLError | OSError, host: str) -> BoxboxError:
    """Turn handshake failures into one clear line."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return PermissionDenied(f"server {host} failed certificate verification: {e.verify_message}")
    reason = getattr(e, "reason", None) or str(e)
    return PermissionDenied(f"server {host} refused the TLS session: {reason}")


def server_addresses(servers: str, port: int) -> list[tuple[str, int]]:
    """`[client] server`: host names separated by commas or spaces, each optionally `:PORT`."""
    out = []
    for item in servers.replace(",", " ").split():
        host, sep, port_text = item.rpartition(":")
        if sep and port_text.isdigit() and host and not host.endswith(":"):
            out.append((host.strip("[]"), int(port_text)))
        else:
            out.append((item.strip("[]"), port))
    if not out:
        raise ProtocolError("no store server address given")
    return out


class Client:
    """A logged-in or not-yet-logged-in session with a store server."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._queue: deque[Pending] = deque()
        self._stream: InStream | None = None
        self.server_software = ""

    @classmethod
    def connect(cls, host: str, port: int, context: ssl.SSLContext, *, server_hostname: str | None = None,
                timeout: float = 300.0) -> "Client":
        """TCP connect, TCP_NODELAY, TLS 1.3 handshake checking `server_hostname` (default: host), hello."""
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ProtocolError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        return cls._over(raw, context, server_hostname or host, timeout)

    @classmethod
    def connect_any(cls, servers: str, port: int, context: ssl.SSLContext, *, timeout: float = 300.0) -> "Client":
        """Connect to the first of `servers` ("a.example, b.example:2202") that accepts a TCP connection.

        Several servers sharing one S3 bucket serve the same accounts; one that is down is
        skipped. Each name must match its own certificate. Only a failed connect moves on: a
        server that answers and refuses (certificate, account in use) is the answer.
        """
        addresses = server_addresses(servers, port)
        failures = []
        for host, p in addresses:
            try:  # a host that is down may not answer at all: give up on it sooner than `timeout`
                raw = socket.create_connection((host, p), timeout=min(timeout, CONNECT_TIMEOUT))
            except OSError as e:
                failures.append(f"{host}:{p}: {e.strerror or e}")
                continue
            raw.settimeout(timeout)
            return cls._over(raw, context, host, timeout)
        raise ProtocolError(f"cannot connect to {'; '.join(failures)}")

    @classmethod
    def _over(cls, raw: socket.socket, context: ssl.SSLContext, host: str, timeout: float) -> "Client":
        """TLS and hello over a connected socket."""
        set_nodelay(raw)
        try:
            sock = context.wrap_socket(raw, server_hostname=host)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise _tls_error(e, host) from None
        client = cls(Connection(sock, idle_timeout=timeout, read_timeout=timeout))
        try:
            client.hello()
        except ProtocolError as e:
            try:  # the refusal may be waiting as an alert even though our write failed first
                client.conn.read_frame()
            except PermissionDenied:
                client.close()
                raise
            except BoxboxError:
                pass
            client.close()
            # In TLS 1.3 the server checks our certificate after the client's handshake is
            # done; a refusal shows up as a dropped connection on the first exchange.
            raise PermissionDenied(f"server {host} ended the session during hello "
                                   f"(it probably refused this client's certificate): {e.args[0]}") from None
        except BoxboxError:
            client.close()
            raise
        return client

    # ------------------------------------------------------------ pipelining core
    def submit(self, request: Any, upload: BinaryIO | Iterable[bytes] | None = None,
               download: bool = False) -> Pending:
        """Queue `request` (then `upload` as a stream) without waiting for the reply.

        At most MAX_IN_FLIGHT replies are left unread: beyond that the oldest are read (and
        kept for their `result()`), so neither side can fill its socket buffers and stall.
        """
        while len(self._queue) >= MAX_IN_FLIGHT and not self._queue[0].download:
            self._resolve(self._queue[0])
        pending = Pending(self, download)
        self.conn.send(request)
        self._queue.append(pending)
        if upload is not None:
            self.conn.send_stream(upload)  # on a local read error the server gets ABORT
        return pending

    def flush(self) -> None:
        self.conn.flush()

    def _resolve(self, target: Pending) -> None:
        if target.done:
            return
        self.conn.flush()
        while not target.done:
            if not self._queue:
                raise ProtocolError("reply requested for a request that was never sent")
            if self._stream is not None:
                self._stream.drain()
                self._stream = None
            head = self._queue.popleft()
            msg = self._read_message()
            head.done = True
            if isinstance(msg, m.Error):
                head.error = m.error_from_reply(msg)
            elif head.download:
                self._stream = self.conn.stream_reader(after_abort_reply=True)
                head.value = (msg, self._stream)
            else:
                head.value = msg

    def _read_message(self) -> Any:
        """The next message; transport failures raise (they end the session)."""
        msg = self.conn.read_message()
        if msg is None:
            raise ProtocolError("server closed the connection")
        return msg

    def call(self, request: Any, upload: BinaryIO | Iterable[bytes] | None = None) -> Any:
        return self.submit(request, upload).result()

    def _expect(self, reply: Any, cls: type) -> Any:
        if not isinstance(reply, cls):
            raise ProtocolError(f"expected {cls.__name__} reply, got {type(reply).__name__}")
        return reply

    # ------------------------------------------------------------ commands
    def hello(self) -> None:
        self.conn.send(m.Hello(m.WIRE_MAGIC, m.PROTOCOL_VERSION, f"boxbox {__version__}"))
        self.conn.flush()
        reply = self._read_message()
        if isinstance(reply, m.Error):
            raise m.error_from_reply(reply)
        reply = self._expect(reply, m.Hello)
        if reply.magic != m.WIRE_MAGIC or reply.version not in m.SUPPORTED_VERSIONS:
            raise ProtocolError(f"server speaks {reply.magic!r} version {reply.version}, "
                                f"expected {m.WIRE_MAGIC!r} version {m.PROTOCOL_VERSION}")
        self.server_software = reply.software

    def login(self, read_only: bool = False) -> m.LoginReply:
        return self._expect(self.call(m.Login(m.LOGIN_READ_ONLY if read_only else 0)), m.LoginReply)

    def usage(self) -> m.AccountUsage:
        return self._expect(self.call(m.GetAccountUsage()), m.AccountUsage)

    def list_directory(self, dir_id: int, flags_must_be_set: int = 0, flags_not_set: int = 0,
                       attributes: bool = True) -> bytes:
        """The directory object (entries filtered by flags) as bytes."""
        _, stream = self.submit(m.ListDirectory(dir_id, flags_must_be_set, flags_not_set, int(attributes)),
                                download=True).result()
        return stream.read()

    def create_directory(self, parent_id: int, name: bytes, attributes: bytes = b"", attributes_mtime: int = 0) -> int:
        return self.call(m.CreateDirectory(parent_id, attributes_mtime, name, attributes)).object_id

    def change_dir_attributes(self, dir_id: int, attributes: bytes, attributes_mtime: int = 0) -> int:
        return self.call(m.ChangeDirAttributes(dir_id, attributes_mtime, attributes)).object_id

    def store_file(self, dir_id: int, name: bytes, source: BinaryIO | Iterable[bytes], mtime: int = 0,
                   attributes_hash: bytes = bytes(8), attributes: bytes = b"", diff_from: int = 0) -> int:
        """Upload a file object; `name`, `attributes` are the entry's sealed parts. Returns the new id."""
        return self.call(m.StoreFile(dir_id, mtime, attributes_hash, diff_from, name, attributes),
                         upload=source).object_id

    def get_file(self, dir_id: int, object_id: int) -> InStream:
        return self.submit(m.GetFile(dir_id, object_id), download=True).result()[1]

    def get_block_index(self, object_id: int) -> InStream:
        return self.submit(m.GetBlockIndexByID(object_id), download=True).result()[1]

    def get_block_index_by_name(self, dir_id: int, name: bytes) -> tuple[int, InStream]:
        reply, stream = self.submit(m.GetBlockIndexByName(dir_id, name), download=True).result()
        return reply.object_id, stream

    def get_object(self, object_id: int) -> InStream:
        return self.submit(m.GetObject(object_id), download=True).result()[1]

    def delete_file(self, dir_id: int, name: bytes) -> int:
        return self.call(m.DeleteFile(dir_id, name)).object_id

    def undelete_file(self, dir_id: int, object_id: int) -> int:
        return self.call(m.UndeleteFile(dir_id, object_id)).object_id

    def delete_directory(self, dir_id: int) -> int:
        return self.call(m.DeleteDirectory(dir_id)).object_id

    def undelete_directory(self, dir_id: int) -> int:
        return self.call(m.UndeleteDirectory(dir_id)).object_id

    def move_object(self, object_id: int, from_dir: int, to_dir: int, new_name: bytes, flags: int = 0,
                    entry_attributes: bytes = b"", attributes_hash: bytes = bytes(8), place: bytes = b"") -> int:
        """Move/rename; pass the entry's re-sealed attributes and hash and the object's new place."""
        return self.call(m.MoveObject(object_id, from_dir, to_dir, flags, attributes_hash, new_name,
                                      entry_attributes, place)).object_id

    def get_object_name(self, object_id: int, containing_dir: int) -> m.ObjectName:
        return self._expect(self.call(m.GetObjectName(object_id, containing_dir)), m.ObjectName)

    def set_client_store_marker(self, marker: int) -> None:
        self.call(m.SetClientStoreMarker(marker))

    def keep_alive(self) -> Pending:
        """Queued and flushed without waiting; the reply is read with the next result."""
        pending = self.submit(m.KeepAlive())
        self.conn.flush()
        return pending

    def finish(self) -> None:
        """Finished, then close; earlier pipelined replies are read (and their errors dropped)."""
        try:
            pending = self.submit(m.Finished())
            self._resolve(pending)
        finally:
            self.close()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.finish()
        else:
            self.close()
