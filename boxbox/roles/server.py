"""`boxbox server`: the store daemon (bbstored).

One thread per connection (see docs/PROTOCOL.md "Concurrency" for the measurement behind
that choice). The TLS handshake runs in the connection's thread, so a client that connects
and sends nothing ties up only its own thread until the read timeout. SIGHUP re-reads the
account database and the CRL; SIGTERM stops accepting, shuts every connection's socket so
in-flight uploads abort (nothing partial is committed), and waits for the threads.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from boxbox import config, logs
from boxbox.daemon import running
from boxbox.errors import BoxboxError, ConfigError, PermissionDenied
from boxbox.store import metrics
from boxbox.wire import tls
from boxbox.wire.commands import Dispatcher
from boxbox.wire.transport import Connection, set_nodelay

if TYPE_CHECKING:
    from boxbox.store.exporter import Exporter

log = logging.getLogger(__name__)

#: How long a connection may take to finish the TLS handshake.
HANDSHAKE_TIMEOUT = 30.0
#: How long SIGTERM waits for sessions to end after their sockets were shut.
SHUTDOWN_GRACE = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/boxbox/server.conf", help="server config file")
    parser.add_argument("--foreground", action="store_true", help="do not detach; log to stderr")
    parser.add_argument("--log-level", choices=sorted(logs.LEVELS), default=None, help="override [server] log_level")
    parser.add_argument("--allow-root", action="store_true",
                        help="run even as root (containers and tests); the server normally refuses")


class Server:
    """Listening sockets, the TLS context, the store, and the live connections."""

    def __init__(self, cfg: config.Config) -> None:
        from boxbox.store.account import Store
        from boxbox.store import session as store_session

        self.cfg = cfg
        self.settings = cfg["server"]
        self.store = Store.from_config(cfg)
        self._session_module = store_session
        self.context = self._make_context()
        self.listeners: list[socket.socket] = []
        self.exporter: Exporter | None = None
        self._connections: dict[int, socket.socket] = {}
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reload = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def _make_context(self) -> ssl.SSLContext:
        s = self.settings
        return tls.server_context(s["certificate"], s["private_key"], s["ca_certificate"], s["crl"])

    def listen(self) -> None:
        port = self.settings["port"]
        for address in self.settings["listen"]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as e:
                sock.close()
                raise ConfigError(f"{self.cfg.path}:server.listen: cannot listen on {address} port {port}: "
                                  f"{e.strerror or e}") from None
            sock.listen(128)
            sock.setblocking(False)
            self.listeners.append(sock)
            log.info("listening on %s port %d", address, sock.getsockname()[1])
        if self.settings["metrics"]:
            from boxbox.store.exporter import Exporter

            self.exporter = Exporter(self.store, self.settings["metrics_listen"],
                                     f"{self.cfg.path}:server.metrics_listen", lambda: len(self._connections))

    # ------------------------------------------------------------ signals
    def request_stop(self, *_: Any) -> None:
        self._stopping.set()
        self._wake()

    def request_reload(self, *_: Any) -> None:
        self._reload.set()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def reload(self) -> None:
        """SIGHUP: new TLS context (CRL) and account database for new connections."""
        self._reload.clear()
        try:
            self.context = self._make_context()
            self.store.database.reload()
            log.info("reloaded the CRL and the account database (%d accounts)", len(self.store.database.accounts()))
        except BoxboxError as e:
            log.error("reload failed, keeping the previous settings: %s", e)

    # ------------------------------------------------------------ main loop
    # ------------------------------------------------------------ housekeeping
    def _maintenance(self) -> None:
        """Background thread: housekeep every account each `housekeeping_interval`, scrub each `scrub_interval`.

        An account a client is writing to is skipped until the next pass; a client that logs
        in while its account is being housekept makes the pass stop (Store.yield_requested).
        """
        from boxbox.store.check import scrub_account
        from boxbox.store.housekeep import housekeep

        interval = self.settings["housekeeping_interval"]
        scrub_every = self.settings["scrub_interval"]
        if interval <= 0 and scrub_every <= 0:
            return  # both off: `boxbox accounts housekeep` / `check --all` by hand
        tick = min(t for t in (interval, scrub_every) if t > 0)
        next_scrub = time.monotonic() + scrub_every if scrub_every > 0 else None
        while not self._stopping.wait(tick):
            try:
                self.store.database.refresh()
                accounts = sorted(self.store.database.accounts())
            except BoxboxError as e:
                log.error("housekeeping: cannot read the account database: %s", e)
                continue
            round_started = time.time()
            for account in accounts if interval > 0 else []:
                if self._stopping.is_set():
                    return
                started = time.monotonic()
                try:
                    result = housekeep(self.store, account, stop=self._stopping)
                except BoxboxError as e:
                    log.error("housekeeping account %08x failed: %s", account, e)
                    metrics.record_housekeeping(False, False, time.monotonic() - started, 0)
                    continue
                metrics.record_housekeeping(True, bool(result.skipped), time.monotonic() - started,
                                            result.blocks_freed)
                if not result.skipped or result.yielded:
                    log.info("housekeeping %s", result.summary())
                else:
                    log.debug("housekeeping %s", result.summary())
            if interval > 0:
                metrics.record_round("housekeeping", round_started)
            if next_scrub is not None and time.monotonic() >= next_scrub:
                next_scrub = time.monotonic() + scrub_every
                round_started, unrecoverable = time.time(), 0
                for account in accounts:
                    if self._stopping.is_set():
                        return
                    try:
                        keys, repaired, failed = scrub_account(self.store, account)
                    except BoxboxError as e:
                        log.error("scrub of account %08x failed: %s", account, e)
                        metrics.SCRUB_FAILED.inc()
                        continue
                    metrics.SCRUB_OBJECTS.inc(keys)
                    metrics.SCRUB_REPAIRED.inc(repaired)
                    unrecoverable += len(failed)
                    log.info("scrub of account %08x: %d objects, %d rebuilt, %d unrecoverable", account, keys,
                             repaired, len(failed))
                    for detail in failed:
                        log.error("scrub of account %08x: %s", account, detail)
                metrics.record_round("scrub", round_started, unrecoverable)

    def serve_forever(self) -> None:
        maintenance = threading.Thread(target=self._maintenance, daemon=True, name="housekeeping")
        maintenance.start()
        if self.exporter is not None:
            self.exporter.start()
        sel = selectors.DefaultSelector()
        for sock in self.listeners:
            sel.register(sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        while not self._stopping.is_set():
            for key, _ in sel.select(timeout=60):
                if key.fileobj == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                self._accept(key.fileobj)  # type: ignore[arg-type]
            if self._reload.is_set():
                self.reload()
        sel.close()
        self.shutdown()
        if self.exporter is not None:
            self.exporter.close()
        maintenance.join(SHUTDOWN_GRACE)

    def _accept(self, listener: socket.socket) -> None:
        try:
            raw, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("accept failed: %s", e)
            return
        with self._lock:
            busy = len(self._connections) >= self.settings["max_connections"]
        if busy:
            log.warning("refused %s: %d connections already (max_connections)", peer[0], len(self._connections))
            metrics.SESSIONS.inc(result="refused")
            raw.close()
            return
        raw.setblocking(True)
        set_nodelay(raw)
        thread = threading.Thread(target=self._run_connection, args=(raw, peer), daemon=True)
        with self._lock:
            self._connections[raw.fileno()] = raw
            self._threads.add(thread)
        thread.start()

    def _run_connection(self, raw: socket.socket, peer: tuple[Any, ...]) -> None:
        fileno = raw.fileno()
        started = time.monotonic()
        account: int | None = None
        conn: Connection | None = None
        session = None
        result = outcome = "dropped"
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            sock = self.context.wrap_socket(raw, server_side=True)
            with self._lock:  # wrap_socket detached `raw`: shutdown() must now go to `sock`
                self._connections[fileno] = sock
            account = tls.peer_account(sock)
            conn = Connection(sock, idle_timeout=self.settings["idle_timeout"],
                              read_timeout=self.settings["read_timeout"])
            session = self._session_module.Session(self.store, account)
            finished = Dispatcher(conn, session).run()
            result = "finished" if finished else "client closed the connection"
            outcome = "finished" if finished else "closed"
        except (ssl.SSLError, OSError) as e:
            result, outcome = f"TLS handshake failed: {getattr(e, 'reason', None) or e}", "network_error"
        except BoxboxError as e:
            result, outcome = f"error: {e}", "error"
        except Exception:
            log.exception("session with %s crashed", peer[0])
            result, outcome = "internal error", "internal_error"
        finally:
            if session is not None:
                try:
                    session.close()
                except BoxboxError as e:
                    result, outcome = result + f"; closing failed: {e}", "error"
            (conn.close() if conn is not None else raw.close())
            with self._lock:
                self._connections.pop(fileno, None)
                self._threads.discard(threading.current_thread())
            metrics.record_session(outcome, conn.bytes_in if conn else 0, conn.bytes_out if conn else 0)
            who = f"account {account:08x}" if account is not None else "no account"
            log.info("session %s from %s: %.1f s, %d bytes in, %d bytes out, %s", who, peer[0],
                     time.monotonic() - started, conn.bytes_in if conn else 0, conn.bytes_out if conn else 0,
                     result)

    def shutdown(self) -> None:
        """Stop listening; shut every connection so uploads abort cleanly; wait for the threads."""
        for sock in self.listeners:
            sock.close()
        with self._lock:
            conns = list(self._connections.values())
            threads = list(self._threads)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for name, parts in self.store.s3.items():
            log.info("s3 store %s: %d requests since start", name, parts.backend.client.requests)
        log.info("stopped")


def main(args: argparse.Namespace) -> int:
    if os.geteuid() == 0 and not args.allow_root:
        raise PermissionDenied("refusing to run the server as root", hint="run it as an ordinary user "
                               "(e.g. `boxbox`), or pass --allow-root inside a container")
    cfg = config.load(args.config, "server")
    settings = cfg["server"]
    logs.configure(args.log_level or args.global_log_level or settings["log_level"],
                   "stderr" if args.foreground else settings["log"])
    server = Server(cfg)
    server.listen()
    with running(args.foreground, settings["pid_file"]):
        signal.signal(signal.SIGTERM, server.request_stop)
        signal.signal(signal.SIGINT, server.request_stop)
        signal.signal(signal.SIGHUP, server.request_reload)
        server.serve_forever()
    return 0

