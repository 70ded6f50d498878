"""Signed HTTP requests to one S3 endpoint: a keep-alive pool, timeouts, retries with backoff.

Many server threads share one transport, each request takes its own connection from a
small pool, so nothing here is shared mid-request. Bodies are bytes in memory (at most one
multipart part), which is what makes re-sending after a failure safe. The connections are
`http11.Connection`s rather than `http.client`'s (a GET's Python time halved).
"""

from __future__ import annotations

import datetime
import http.client
import logging
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import NamedTuple

from boxbox.errors import ConfigError, StorageError
from boxbox.s3 import sigv4
from boxbox.s3.http11 import Connection

log = logging.getLogger(__name__)

#: idle keep-alive connections kept per transport; more requests in flight just open more. Sized to
#: the S3 store's concurrency (32 writer threads, 16 read-ahead threads, the sessions' own requests),
#: so that a burst of PUTs sent behind does not close and reopen connections.
POOL_SIZE = 64
#: an idle connection older than this is closed rather than reused: servers drop idle
#: keep-alives (AWS after about 20 s), and reusing a dropped one costs a failed send
MAX_IDLE = 15.0
#: error bodies are read only this far (an error is a few hundred bytes of XML)
MAX_ERROR_BODY = 64 * 1024
#: statuses that mean "try again": 500 InternalError, 502/504 from a proxy, 503 SlowDown
RETRY_STATUSES = frozenset({500, 502, 503, 504})

#: what a lost connection, timeout or cut-short body looks like (http11 raises http.client's exceptions;
#: IncompleteRead: Content-Length not reached or a chunked body cut off; OSError covers
#: resets, refusals, timeouts and TLS errors other than an untrusted certificate)
TRANSIENT_ERRORS = (http.client.HTTPException, OSError)
#: what a keep-alive connection the server has already closed looks like
STALE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Response(NamedTuple):
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    #: how many times the request was sent, a stale keep-alive connection included
    #: (>1 means an earlier attempt may have reached S3 and only its answer was lost)
    attempts: int


class Endpoint(NamedTuple):
    scheme: str
    host: str
    port: int


def parse_endpoint(endpoint: str, allow_http: bool) -> Endpoint:
    """Check an endpoint URL once, so a typo is a ConfigError naming it, not a failed request later."""
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"S3 endpoint {endpoint!r}: expected https://host[:port]")
    if url.scheme == "http" and not allow_http:
        raise ConfigError(f"S3 endpoint {endpoint!r} is plain http; use https "
                          "(plain http is only for loopback tests)")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise ConfigError(f"S3 endpoint {endpoint!r}: expected only scheme, host and port")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError as e:
        raise ConfigError(f"S3 endpoint {endpoint!r}: {e}") from None
    return Endpoint(url.scheme, url.hostname, port)


class Transport:
    """Send signed requests to one endpoint; thread-safe."""

    def __init__(self, endpoint: Endpoint, *, region: str, access_key: str, secret_key: str,
                 timeout: float, retries: int, backoff: float, ca_file: str | None) -> None:
        self.endpoint = endpoint
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        #: TLS settings of every connection (None: plain http)
        self.context: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            self.context = ssl.create_default_context()
            if ca_file:
                try:
                    self.context.load_verify_locations(cafile=ca_file)
                except (OSError, ssl.SSLError) as e:
                    raise ConfigError(f"S3 CA file {ca_file}: {e}") from None
        self._lock = threading.Lock()
        #: host -> [(connection, when it went idle)], most recent last
        self._idle: dict[str, list[tuple[Connection, float]]] = {}
        self._closed = False
        self.requests = 0

    def _connect(self, host: str) -> Connection:
        return Connection(host, self.endpoint.port, self._timeout, self.context)

    def count(self) -> None:
        """One request sent by other means (the read-ahead's fetcher)."""
        with self._lock:
            self.requests += 1

    def _take(self, host: str) -> tuple[Connection, bool]:
        expired: list[tuple[Connection, float]] = []
        conn = None
        with self._lock:
            self.requests += 1
            idle = self._idle.get(host, [])
            cutoff = time.monotonic() - MAX_IDLE
            while idle and conn is None:
                candidate = idle.pop()
                if candidate[1] >= cutoff:
                    conn = candidate[0]
                else:
                    expired.append(candidate)
        for old, _ in expired:
            old.close()
        return (conn, True) if conn is not None else (self._connect(host), False)

    def _give_back(self, host: str, conn: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(host, [])
            if not self._closed and len(idle) < POOL_SIZE:
                idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _drop_idle(self, host: str) -> None:
        """A reused connection failed: the server probably closed its idle ones, so drop them all."""
        with self._lock:
            idle = self._idle.pop(host, [])
        for conn, _ in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn, _ in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def request(self, method: str, host: str, path: str, query: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None, body: bytes | bytearray | memoryview = b"", *,
                payload_hash: str | None = None, what: str,
                retry_if: Callable[[Response], bool] | None = None) -> Response:
        """Send one request, re-sending on 5xx and on transient network failures.

        `path` is the unencoded path (`/bucket/key`); it is encoded here the same way it is
        signed. `what` names the target in error messages. A 4xx is returned, never retried;
        `retry_if` marks other answers as transient (S3 can put an error in a 200 body).
        """
        payload = bytes(body) if not isinstance(body, bytes) else body
        if payload_hash is None:
            payload_hash = sigv4.sha256_hex(payload)
        head_only = method == "HEAD"
        attempts = 0
        stale_replaced = False
        while True:
            attempts += 1
            head = self.signed_head(method, host, path, query, headers, payload_hash, len(payload), what)
            conn, reused = self._take(host)
            try:
                answer = conn.request(head, payload, head_only, MAX_ERROR_BODY)
                result = Response(answer.status, answer.reason, answer.headers, answer.body, attempts)
            except ssl.SSLCertVerificationError as e:
                conn.close()
                raise StorageError(f"S3 {method} {what}: TLS certificate of {host} not trusted: "
                                   f"{e.verify_message}") from None
            except TRANSIENT_ERRORS as e:
                conn.close()
                if reused and not stale_replaced and isinstance(e, STALE_ERRORS):
                    # the server closed this idle keep-alive connection: once, try at once on a
                    # fresh one without counting an attempt (it costs one request)
                    stale_replaced = True
                    self._drop_idle(host)
                    continue
                log.debug("%s %s: attempt %d failed: %s", method, what, attempts, type(e).__name__)
                if attempts - stale_replaced > self._retries:
                    raise StorageError(f"S3 {method} {what}: {_describe(e)} "
                                       f"(gave up after {attempts} attempts)") from None
                self._sleep(attempts - stale_replaced)
                continue
            if answer.keep_alive:
                self._give_back(host, conn)
            else:
                conn.close()
            log.debug("%s %s -> %d (%d bytes, attempt %d)", method, what, result.status, len(result.body), attempts)
            if (result.status in RETRY_STATUSES or (retry_if is not None and retry_if(result))) \
                    and attempts - stale_replaced <= self._retries:
                self._sleep(attempts - stale_replaced)
                continue
            return result

    def signed_head(self, method: str, host: str, path: str, query: Mapping[str, str] | None,
                    headers: Mapping[str, str] | None, payload_hash: str, length: int, what: str) -> bytes:
        """The request line and headers, signed now (so a retry after a long backoff is not stale)."""
        query = dict(query or {})
        target = sigv4.canonical_uri(path)
        if query:
            target += "?" + sigv4.canonical_query(query)
        host_header = self._host_header(host)
        fixed = f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n"
        if length or method in ("PUT", "POST"):
            fixed += f"Content-Length: {length}\r\n"
        signed = sigv4.sign(method, path, query, {"host": host_header, **(headers or {})},
                            payload_hash, access_key=self._access_key, secret_key=self._secret_key,
                            region=self._region, now=datetime.datetime.now(datetime.timezone.utc))
        signed.pop("host")
        lines = "".join(f"{name}: {value}\r\n" for name, value in signed.items())
        if lines.count("\n") != len(signed) or lines.count("\r") != len(signed):  # (an ETag comes from the store)
            raise StorageError(f"S3 {method} {what}: a header value holds a line break")
        return (fixed + lines + "\r\n").encode("latin-1")

    def _host_header(self, host: str) -> str:
        default = 443 if self.endpoint.scheme == "https" else 80
        host = f"[{host}]" if ":" in host else host
        return host if self.endpoint.port == default else f"{host}:{self.endpoint.port}"

    def _sleep(self, attempts: int) -> None:
        """Exponential backoff with full jitter, so many threads retrying do not move in step."""
        time.sleep(random.uniform(0, min(10.0, self._backoff * 2 ** (attempts - 1))))


def _describe(e: BaseException) -> str:
    if isinstance(e, http.client.IncompleteRead):
        return f"response cut short ({len(e.partial)} bytes, {e.expected} more expected)"
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
