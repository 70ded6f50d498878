"""Server side of the protocol: registered command handlers and the per-connection dispatcher.

Only registered request types are served, and each declares the access it needs
(WRITE unless it says otherwise). `hello` comes first; replies go out in request order,
flushed only when no further pipelined request is already buffered.
"""

from __future__ import annotations

import enum
import logging
import select
from typing import Any, BinaryIO, Callable, Iterable, NamedTuple, Protocol

from boxbox import __version__
from boxbox.errors import BoxboxError, PermissionDenied, ProgrammingError, ProtocolError, storage_error
from boxbox.wire import messages
from boxbox.wire.transport import Connection, InStream

log = logging.getLogger(__name__)

#: Requests answered per sync-and-flush at most, however long the client keeps pipelining,
#: so changes are made durable (and replies sent) at least this often.
MAX_BATCH = 64
#: Group commit: with unsaved changes and no request buffered, wait this long for the client's next
#: one before syncing. A client streaming small files sends one every ~0.5-1 ms, a little slower than
#: the server serves them; without the wait every request paid its own sync (3,100 uploads, 6,275
#: syncs, 19 s of a 32 s first backup at scale 0.3). A client that is waiting for a reply pays it once.
COMMIT_DELAY = 0.002


class Access(enum.IntEnum):
    NONE = 0  # before login: hello, login, finished
    READ = 1
    WRITE = 2


NONE, READ, WRITE = Access.NONE, Access.READ, Access.WRITE


class StreamReply(NamedTuple):
    """A reply message followed by a stream read from `source` (closed afterwards if it can be)."""

    message: Any
    source: BinaryIO | Iterable[bytes]


class Session(Protocol):
    """What the dispatcher needs of a session; an optional `sync()` runs before each reply flush, an
    optional `finish()` before Finished is answered, an optional `unsaved()` says a sync has work."""

    access: Access


Handler = Callable[[Any, Any, "InStream | None"], Any]


class Command(NamedTuple):
    handler: Handler
    access: Access
    stream_in: bool


COMMANDS: dict[type, Command] = {}


def command(request: type, access: Access = WRITE, stream_in: bool = False,
            table: dict[type, Command] = COMMANDS) -> Callable[[Handler], Handler]:
    """Register `handler(session, request, stream)` for a request type; WRITE access by default."""
    if request not in messages.REQUESTS or request in (messages.Hello,):
        raise ProgrammingError(f"{getattr(request, '__name__', request)} is not a registrable request")

    def register(handler: Handler) -> Handler:
        if request in table:
            raise ProgrammingError(f"{request.__name__} registered twice")
        table[request] = Command(handler, access, stream_in)
        return handler

    return register


def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


class Dispatcher:
    """Runs one connection: hello, then requests in order until Finished or the peer goes."""

    def __init__(self, conn: Connection, session: Session, commands: dict[type, Command] | None = None) -> None:
        self.conn = conn
        self.session = session
        self.commands = COMMANDS if commands is None else commands
        self.requests = 0

    def hello(self) -> None:
        msg = self.conn.read_message()
        if msg is None:
            raise ProtocolError("client closed the connection before hello")
        if not isinstance(msg, messages.Hello):
            raise ProtocolError(f"expected Hello first, got {type(msg).__name__}")
        if msg.magic != messages.WIRE_MAGIC:
            raise ProtocolError(f"bad protocol magic {msg.magic!r}, expected {messages.WIRE_MAGIC!r}")
        if msg.version not in messages.SUPPORTED_VERSIONS:
            self.conn.send(messages.error_reply(ProtocolError(
                f"client speaks protocol version {msg.version}, this server {sorted(messages.SUPPORTED_VERSIONS)}")))
            self.conn.flush()
            raise ProtocolError(f"unsupported protocol version {msg.version}")
        self.conn.send(messages.Hello(messages.WIRE_MAGIC, messages.PROTOCOL_VERSION, f"boxbox {__version__}"))
        self.conn.flush()

    def run(self) -> bool:
        """Serve until Finished (True) or a clean close by the client (False)."""
        self.hello()
        conn = self.conn
        batch = 0
        while True:
            msg = conn.read_message()
            if msg is None:
                return False
            self.requests += 1
            if isinstance(msg, messages.Finished):
                self._sync()
                self._finish()
                conn.send(messages.Finished())
                conn.flush()
                return True
            self.dispatch(msg)
            batch += 1
            if batch >= MAX_BATCH or not (conn.has_buffered_frame() or self._more_soon()):
                self._sync()
                conn.flush()
                batch = 0

    def _more_soon(self) -> bool:
        """True if the session has changes to sync and the client's next request arrives within
        COMMIT_DELAY, so that one sync (and one flush) covers both."""
        unsaved = getattr(self.session, "unsaved", None)
        if unsaved is None or not unsaved():
            return False
        sock = self.conn.sock
        pending = getattr(sock, "pending", None)  # TLS bytes already decrypted but not yet read
        if pending is not None and pending():
            return True
        return bool(select.select([sock], [], [], COMMIT_DELAY)[0])

    def _sync(self) -> None:
        """Let the session make queued changes durable before their replies leave.

        If that fails, the queued replies may claim success for lost changes, so the
        connection is dropped instead: the client sees every unanswered request fail.
        """
        self._session_call("sync", "save changes", "saving changes")

    def _finish(self) -> None:
        """Let the session release what it holds (the account's writer lock) before Finished is answered,
        so a client may log in again as soon as it has the reply."""
        self._session_call("finish", "close the session cleanly", "closing the session")

    def _session_call(self, name: str, doing: str, what: str) -> None:
        """Call the session's optional `name`; a failure drops the connection (ProtocolError)."""
        call = getattr(self.session, name, None)
        if call is None:
            return
        try:
            call()
        except OSError as e:
            raise ProtocolError(f"could not {doing}, dropping the connection: {storage_error(e, what)}") from None
        except BoxboxError as e:
            raise ProtocolError(f"could not {doing}, dropping the connection: {e}") from None

    def dispatch(self, msg: Any) -> None:
        cmd = self.commands.get(type(msg))
        if cmd is None:
            raise ProtocolError(f"{type(msg).__name__} is not a request this server serves")
        stream = self.conn.stream_reader() if cmd.stream_in else None
        try:
            if self.session.access < cmd.access:
                raise PermissionDenied(
                    f"{type(msg).__name__} needs {cmd.access.name.lower()} access, session has "
                    f"{self.session.access.name.lower()}" + (" (log in first)" if self.session.access == NONE else ""))
            result = cmd.handler(self.session, msg, stream)
        except BoxboxError as e:
            self._fail(e, stream)
            return
        except OSError as e:  # the store's discs (socket errors arrive as BoxboxErrors)
            log.warning("%s failed: %s", type(msg).__name__, e)
            self._fail(storage_error(e, f"handling {type(msg).__name__}"), stream)
            return
        except Exception:
            log.exception("handler for %s failed", type(msg).__name__)
            self._fail(ProgrammingError("server internal error (see the server log)"), stream)
            return
        if stream is not None and not stream.done:
            stream.drain()  # handler ignored part of its input; keep the framing in step
        if isinstance(result, StreamReply):
            self._sync()  # the stream flushes the replies queued before it
            self.conn.send(result.message)
            try:
                self.conn.send_stream(result.source)
            except BoxboxError as e:  # stream already aborted; say why
                log.warning("%s: stream failed: %s", type(msg).__name__, e)
                self.conn.send(messages.error_reply(e))
            except Exception:
                log.exception("stream for %s failed", type(msg).__name__)
                self.conn.send(messages.error_reply(ProgrammingError("server internal error (see the server log)")))
            finally:
                _close(result.source)
        else:
            self.conn.send(result)

    def _fail(self, error: BoxboxError, stream: InStream | None) -> None:
        if stream is not None and not stream.done:
            try:
                stream.drain()  # the connection stays usable after a refused upload
            except ProtocolError:
                if not stream.aborted:
                    raise
        self.conn.send(messages.error_reply(error))
