"""The server's HTTP endpoint for monitoring: `GET /metrics` (Prometheus text format) and `GET /health`.

Off by default (`[server] metrics`); it listens on its own address (`metrics_listen`,
default 127.0.0.1:9201) so the backup port never speaks HTTP. Stdlib `http.server` in one
thread per request. What is counted while the server runs lives in `store/metrics.py`;
what describes the store (account usage, last backup, disc presence, RAID events) is read
here at scrape time, from the account info files, so every server process of a shared
store reports the same numbers.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from boxbox.errors import BoxboxError, ConfigError
from boxbox.raidfile import stats as raid_stats
from boxbox.store import health, metrics
from boxbox.store.account import Store
from boxbox.store.info import BLOCK_SIZE, AccountInfo

log = logging.getLogger(__name__)

#: How long account usage read from the info files is reused: a scrape every 15 s of 1,000
#: accounts then costs at most one read of each info file per scrape, usually none.
USAGE_TTL = 10.0


def parse_address(text: str, where: str) -> tuple[str, int]:
    """'127.0.0.1:9201' or '[::1]:9201' -> (host, port); ConfigError naming `where` otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: expected ADDRESS:PORT such as 127.0.0.1:9201 or [::1]:9201, got {text!r}")
    return host, int(port)


class AccountUsage:
    """Per-account families from the info files, cached for USAGE_TTL seconds."""

    def __init__(self, store: Store, ttl: float = USAGE_TTL) -> None:
        self.store = store
        self.ttl = ttl
        self._lock = threading.Lock()
        self._read_at = -ttl
        self._infos: list[AccountInfo] = []
        self._unreadable = 0

    def _refresh(self) -> None:
        self.store.database.refresh()
        infos, unreadable = [], 0
        for account in sorted(self.store.database.accounts()):
            try:
                infos.append(self.store.read_info(account))
            except (BoxboxError, OSError) as e:
                log.debug("metrics: account %08x: %s", account, e)
                unreadable += 1
        self._infos, self._unreadable = infos, unreadable
        self._read_at = time.monotonic()

    def __call__(self) -> list[metrics.Family]:
        with self._lock:  # concurrent scrapes share one read of the info files
            if time.monotonic() - self._read_at >= self.ttl:
                try:
                    self._refresh()
                except BoxboxError as e:
                    log.warning("metrics: cannot read the account database: %s", e)
            infos, unreadable = self._infos, self._unreadable
        labels = ("account", "name")
        used = metrics.Gauge("boxbox_account_used_bytes", "space the account uses, all kinds", labels)
        usage = metrics.Gauge("boxbox_account_usage_bytes", "space by kind (current, old, deleted, directories)",
                              (*labels, "kind"))
        objects = metrics.Gauge("boxbox_account_objects", "files by kind (current, old, deleted) and directories",
                                (*labels, "kind"))
        soft = metrics.Gauge("boxbox_account_soft_limit_bytes", "soft limit: housekeeping's target", labels)
        hard = metrics.Gauge("boxbox_account_hard_limit_bytes", "hard limit: uploads beyond it are refused", labels)
        enabled = metrics.Gauge("boxbox_account_enabled", "1 if the account may log in", labels)
        last = metrics.Gauge("boxbox_account_last_backup_timestamp_seconds",
                             "when the last writing session ended cleanly (Finished); 0 = never", labels)
        count = metrics.Gauge("boxbox_accounts", "accounts in the account database")
        bad = metrics.Gauge("boxbox_accounts_unreadable", "accounts whose info file could not be read")
        count.set(len(infos) + unreadable)
        bad.set(unreadable)
        for i in infos:
            who = {"account": f"{i.account:08x}", "name": i.name}
            used.set(i.blocks_used * BLOCK_SIZE, **who)
            for kind in ("current", "old", "deleted", "directories"):
                usage.set(getattr(i, f"blocks_{kind}") * BLOCK_SIZE, kind=kind, **who)
                objects.set(getattr(i, f"count_{kind}"), kind=kind, **who)
            soft.set(i.soft_limit * BLOCK_SIZE, **who)
            hard.set(i.hard_limit * BLOCK_SIZE, **who)
            enabled.set(int(i.enabled), **who)
            last.set(i.last_backup, **who)
        return [count, bad, used, usage, objects, soft, hard, enabled, last]


def store_families(store: Store, sessions_open: Callable[[], int]) -> list[metrics.Family]:
    """Disc presence, health, RAID events since start, and open sessions."""
    present = metrics.Gauge("boxbox_discset_directory_present",
                            "1 if the disc set directory is there and writable (directory = its position)",
                            ("discset", "directory"))
    for d in health.directories(store):
        present.set(0 if d.problem else 1, discset=d.discset, directory=str(d.index))
    healthy = metrics.Gauge("boxbox_store_healthy", "1 when /health answers 200")
    healthy.set(0 if health.problem(store) else 1)
    counts = raid_stats.snapshot()
    degraded = metrics.Counter("boxbox_raid_degraded_reads_total",
                               "files read from two stripes because one was missing or damaged")
    degraded.inc(counts["degraded_reads"])
    repairs = metrics.Counter("boxbox_raid_repairs_total", "files whose missing or damaged stripes were rebuilt")
    repairs.inc(counts["repairs"])
    sessions = metrics.Gauge("boxbox_sessions_open", "client connections open now")
    sessions.set(sessions_open())
    return [present, healthy, degraded, repairs, sessions]


class Exporter:
    """The HTTP listener (bound at construction, before the daemon detaches) and its thread."""

    def __init__(self, store: Store, address: str, where: str, sessions_open: Callable[[], int],
                 registry: metrics.Registry = metrics.REGISTRY) -> None:
        host, port = parse_address(address, where)
        self.store = store
        self.registry = registry
        usage = AccountUsage(store)
        self._collectors = [usage, lambda: store_families(store, sessions_open)]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("HTTPServer", (ThreadingHTTPServer,), {"address_family": family,
                                                                     "daemon_threads": True})
        try:
            self.httpd = server_class((host, port), _handler(self))
        except OSError as e:
            raise ConfigError(f"{where}: cannot listen on {address}: {e.strerror or e}") from None
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None
        log.info("metrics and health on %s port %d", host, self.port)

    def start(self) -> None:
        for c in self._collectors:
            self.registry.add_collector(c)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="metrics")
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()
        for c in self._collectors:
            self.registry.remove_collector(c)

    def answer(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for one GET."""
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, metrics.CONTENT_TYPE, self.registry.render()
        if path == "/health":
            why = health.problem(self.store)
            return (503, "text/plain; charset=utf-8", why + "\n") if why else (200, "text/plain; charset=utf-8",
                                                                               "ok\n")
        return 404, "text/plain; charset=utf-8", "not found: try /metrics or /health\n"


def _handler(exporter: Exporter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "boxbox"
        sys_version = ""
        timeout = 10.0  # a scraper that connects and says nothing does not keep its thread

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                status, ctype, body = exporter.answer(self.path)
            except Exception:
                log.exception("metrics: %s failed", self.path)
                status, ctype, body = 500, "text/plain; charset=utf-8", "internal error\n"
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics: %s %s", self.address_string(), format % args)

    return Handler
