"""The command socket between `boxbox ctl` and the client daemon.

A UNIX stream socket created with mode 0600 (umask while binding, then chmod), owned by the
daemon's user; every connection's peer uid (SO_PEERCRED) must be the daemon's own or root.
One request per connection, in the wire protocol's frames (`wire.framing`):

    request  frame CTL_REQUEST, payload JSON {"command": "status", ...}
    reply    frame CTL_REPLY,   payload JSON {"ok": true, ...} or {"ok": false, "error": "..."}

Commands that wait (`sync-and-wait`, `wait-for-sync`, `wait-for-end`) keep their connection
open until the event; each connection has its own thread, so a waiting ctl never blocks
`status` or `terminate`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boxbox.errors import InUse, NotFound, PermissionDenied, ProtocolError
from boxbox.wire.framing import FrameDecoder, encode_frame

log = logging.getLogger(__name__)

CTL_REQUEST = 0x0101
CTL_REPLY = 0x0102
#: requests and replies are small JSON documents
MAX_CTL_FRAME = 1 << 16
_UCRED = struct.Struct("iII")  # pid, uid, gid

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _read_frame(sock: socket.socket, expected: int) -> dict[str, Any]:
    decoder = FrameDecoder(MAX_CTL_FRAME)
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            break
        data = sock.recv(65536)
        if not data:
            raise ProtocolError("the other side closed the command socket")
        decoder.feed(data)
    if frame.type != expected:
        raise ProtocolError(f"command socket: frame type {frame.type:#x}, expected {expected:#x}")
    try:
        value = json.loads(frame.payload)
    except ValueError:
        raise ProtocolError("command socket: the message is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("command socket: the message is not a JSON object")
    return value


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(creds)[1]


class ControlServer:
    """Accepts ctl connections in a thread; each request runs `handler` in its own thread."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.uid = os.getuid()
        self.sock = self._bind(path)
        self._thread = threading.Thread(target=self._serve, name="ctl", daemon=True)
        self._closed = False

    @staticmethod
    def _bind(path: Path) -> socket.socket:
        if path.exists() or path.is_symlink():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(2)
                    probe.connect(str(path))
            except OSError:
                path.unlink()  # a stale socket from a daemon that died
            else:
                raise InUse(f"command socket {path}: another client daemon is running")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as e:
            sock.close()
            raise PermissionDenied(f"command socket {path}: cannot create it: {e.strerror or e}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
        return sock

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._closed:
                    return
                continue
            threading.Thread(target=self._handle, args=(conn,), name="ctl-conn", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                uid = peer_uid(conn)
                if uid not in (self.uid, 0):
                    log.warning("command socket: refused a connection from uid %d", uid)
                    reply: dict[str, Any] = {"ok": False, "error": f"uid {uid} may not control this daemon"}
                else:
                    conn.settimeout(30)
                    request = _read_frame(conn, CTL_REQUEST)
                    conn.settimeout(None)
                    try:
                        reply = self.handler(request)
                    except Exception:  # a bug: say so to ctl rather than leave it waiting
                        log.exception("command socket: %r failed", request.get("command"))
                        reply = {"ok": False, "error": "internal error in the client daemon (see its log)"}
                conn.sendall(encode_frame(CTL_REPLY, json.dumps(reply).encode()))
            except (OSError, ProtocolError) as e:
                log.debug("command socket: %s", e)


def request(path: Path, command: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon at `path` and return its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotFound(f"no client daemon is running (nothing listens on {path})",
                           hint="start it with `boxbox client --config FILE`") from None
        except PermissionError:
            raise PermissionDenied(f"command socket {path}: permission denied (run as the daemon's user)") from None
        sock.sendall(encode_frame(CTL_REQUEST, json.dumps({"command": command, **args}).encode()))
        sock.settimeout(timeout)
        try:
            return _read_frame(sock, CTL_REPLY)
        except ProtocolError:
            raise ProtocolError(f"the client daemon closed the command socket {path} without replying "
                                "(it stopped, or refused this user)") from None
    finally:
        sock.close()
